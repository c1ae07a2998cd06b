//! The watchdog over the CA's own certificates, the issuer and the trust
//! anchors: an expired one stops every renewal in the mesh, so its end
//! must be seen well before. Each expiry is a gauge, with alert rules in
//! `examples/prometheus/alerts.yml`, and a certificate near its end is
//! logged, at most hourly, naming what to rotate.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Warn this long before a certificate expires, or over the last fifth of
/// its lifetime when that is shorter (short-lived issuers).
pub const WARN_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often the same warning is logged again.
const WARN_EVERY: Duration = Duration::from_secs(3600);

/// One certificate the CA depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validity {
    /// What it is: "the issuer" or "trust anchor <subject>".
    pub what: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From when its end is warned of.
    pub fn warning_from(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_after - WARN_BEFORE.min(lifetime / 5)
    }
}

/// When the last warning was logged.
#[derive(Debug, Default)]
pub struct ExpiryWatch {
    last_warned: Mutex<Option<Instant>>,
}

impl ExpiryWatch {
    /// The certificates near their end at `now`; logs them unless it did
    /// within the hour. Returns whether it logged.
    pub fn check(&self, certs: &[Validity], now: SystemTime) -> bool {
        let expiring: Vec<&Validity> = certs.iter().filter(|c| now >= c.warning_from()).collect();
        if expiring.is_empty() {
            return false;
        }
        let mut last = self.last_warned.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        for cert in expiring {
            let left = cert.not_after.duration_since(now).unwrap_or_default();
            tracing::warn!(
                certificate = %cert.what,
                not_after = %super::humantime(cert.not_after),
                hours_left = left.as_secs() / 3600,
                "{} expires soon: rotate it (README: Rotating the trust anchor and the issuer) \
                 before proxies can no longer renew",
                cert.what,
            );
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn cert(lifetime: Duration) -> Validity {
        let not_before = SystemTime::UNIX_EPOCH + 1000 * DAY;
        Validity {
            what: "the issuer".into(),
            not_before,
            not_after: not_before + lifetime,
        }
    }

    #[test]
    fn warns_a_month_ahead_or_over_the_last_fifth() {
        let year = cert(365 * DAY);
        assert_eq!(year.warning_from(), year.not_after - 30 * DAY);
        let two_days = cert(2 * DAY);
        assert_eq!(two_days.warning_from(), two_days.not_after - 2 * DAY / 5);
    }

    #[test]
    fn logs_expiring_certificates_at_most_hourly() {
        let watch = ExpiryWatch::default();
        let year = cert(365 * DAY);
        assert!(!watch.check(std::slice::from_ref(&year), year.not_before + 300 * DAY));
        assert!(watch.check(std::slice::from_ref(&year), year.not_after - DAY));
        assert!(!watch.check(std::slice::from_ref(&year), year.not_after - DAY));
    }
}
