//! Route policy from a Service's annotations. A bad value is reported
//! (log and metric, by the store) and that annotation alone is ignored, so
//! one typo never takes a service out of discovery.

use std::collections::BTreeMap;

use weft_api::policy as names;
use weft_api::proto::destination::RoutePolicy;

use super::model::Invalid;

/// Most retries per request a service may ask for: more only multiplies
/// load on a struggling backend (the retry budget caps it anyway).
pub const MAX_RETRY_LIMIT: u32 = 10;

/// Reads the policy annotations; returns the policy and what was ignored.
pub fn from_annotations(annotations: &BTreeMap<String, String>) -> (RoutePolicy, Vec<Invalid>) {
    let mut policy = RoutePolicy {
        failure_accrual_consecutive: names::DEFAULT_FAILURE_ACCRUAL,
        max_in_flight: names::DEFAULT_MAX_IN_FLIGHT,
        ..Default::default()
    };
    let mut invalid = Vec::new();
    let mut bad = |name: &str, value: &str, reason: &str, why: String| {
        invalid.push(Invalid {
            kind: "annotation",
            reason: reason.to_string(),
            detail: format!("{name}={value:?}: {why}"),
        })
    };
    if let Some(v) = annotations.get(names::RETRY_HTTP) {
        match parse_retry_on(v) {
            Ok(conditions) => {
                policy.retry_on = conditions;
                policy.retry_limit = names::DEFAULT_RETRY_LIMIT;
            }
            Err(why) => bad(names::RETRY_HTTP, v, "bad_retry_conditions", why),
        }
    }
    if let Some(v) = annotations.get(names::RETRY_LIMIT) {
        match v.trim().parse::<u32>() {
            Ok(n) if n <= MAX_RETRY_LIMIT => policy.retry_limit = n,
            Ok(n) => bad(
                names::RETRY_LIMIT,
                v,
                "bad_retry_limit",
                format!("{n} is above the maximum of {MAX_RETRY_LIMIT}"),
            ),
            Err(e) => bad(names::RETRY_LIMIT, v, "bad_retry_limit", e.to_string()),
        }
    }
    if let Some(v) = annotations.get(names::TIMEOUT_REQUEST) {
        match weft_api::duration::parse(v) {
            Ok(d) if !d.is_zero() && d.as_secs() <= 3600 => {
                policy.timeout_ms = d.as_millis().max(1) as u64
            }
            Ok(_) => bad(
                names::TIMEOUT_REQUEST,
                v,
                "bad_timeout",
                "must be above zero and at most 1h".into(),
            ),
            Err(why) => bad(names::TIMEOUT_REQUEST, v, "bad_timeout", why.to_string()),
        }
    }
    if let Some(v) = annotations.get(names::FAILURE_ACCRUAL) {
        match parse_failure_accrual(v) {
            Ok(n) => policy.failure_accrual_consecutive = n,
            Err(why) => bad(names::FAILURE_ACCRUAL, v, "bad_failure_accrual", why),
        }
    }
    if let Some(v) = annotations.get(names::MAX_IN_FLIGHT) {
        match parse_max_in_flight(v) {
            Ok(n) => policy.max_in_flight = n,
            Err(why) => bad(names::MAX_IN_FLIGHT, v, "bad_max_in_flight", why),
        }
    }
    (policy, invalid)
}

fn parse_max_in_flight(v: &str) -> Result<u32, String> {
    let v = v.trim();
    if v == "off" {
        return Ok(u32::MAX);
    }
    match v.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{v:?} is not a positive number or off")),
    }
}

fn parse_retry_on(v: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for token in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let ok = matches!(token, "5xx" | "gateway-error" | "connect-failure")
            || (token.len() == 3 && token.parse::<u16>().is_ok_and(|c| (400..600).contains(&c)));
        if !ok {
            return Err(format!(
                "unknown condition {token:?}; use 5xx, gateway-error, connect-failure or a 4xx/5xx status code"
            ));
        }
        if !out.iter().any(|t| t == token) {
            out.push(token.to_string());
        }
    }
    if out.is_empty() {
        return Err("no conditions".into());
    }
    Ok(out)
}

fn parse_failure_accrual(v: &str) -> Result<u32, String> {
    let v = v.trim();
    if v == "off" || v == "none" {
        return Ok(0);
    }
    let n = v
        .strip_prefix("consecutive:")
        .ok_or_else(|| "expected consecutive:N or off".to_string())?;
    match n.trim().parse::<u32>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(format!("{n:?} is not a number from 1 to 1000")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(pairs: &[(&str, &str)]) -> (RoutePolicy, Vec<Invalid>) {
        from_annotations(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_without_annotations() {
        let (p, invalid) = policy(&[]);
        assert!(invalid.is_empty());
        assert!(p.retry_on.is_empty());
        assert_eq!(p.retry_limit, 0);
        assert_eq!(p.timeout_ms, 0);
        assert_eq!(
            p.failure_accrual_consecutive,
            names::DEFAULT_FAILURE_ACCRUAL
        );
        assert_eq!(p.max_in_flight, names::DEFAULT_MAX_IN_FLIGHT);
    }

    #[test]
    fn reads_every_annotation() {
        let (p, invalid) = policy(&[
            (names::RETRY_HTTP, "5xx, connect-failure,429"),
            (names::RETRY_LIMIT, "3"),
            (names::TIMEOUT_REQUEST, "750ms"),
            (names::FAILURE_ACCRUAL, "consecutive:4"),
            (names::MAX_IN_FLIGHT, "64"),
        ]);
        assert!(invalid.is_empty(), "{invalid:?}");
        assert_eq!(p.retry_on, vec!["5xx", "connect-failure", "429"]);
        assert_eq!(p.retry_limit, 3);
        assert_eq!(p.timeout_ms, 750);
        assert_eq!(p.failure_accrual_consecutive, 4);
        assert_eq!(p.max_in_flight, 64);
        let (p, _) = policy(&[
            (names::FAILURE_ACCRUAL, "off"),
            (names::MAX_IN_FLIGHT, "off"),
        ]);
        assert_eq!(p.failure_accrual_consecutive, 0);
        assert_eq!(p.max_in_flight, u32::MAX);
    }

    #[test]
    fn ignores_and_reports_bad_values_one_by_one() {
        let (p, invalid) = policy(&[
            (names::RETRY_HTTP, "5xx,sometimes"),
            (names::RETRY_LIMIT, "many"),
            (names::TIMEOUT_REQUEST, "0s"),
            (names::FAILURE_ACCRUAL, "consecutive:0"),
            (names::MAX_IN_FLIGHT, "0"),
        ]);
        let reasons: Vec<_> = invalid.iter().map(|i| i.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "bad_retry_conditions",
                "bad_retry_limit",
                "bad_timeout",
                "bad_failure_accrual",
                "bad_max_in_flight"
            ]
        );
        assert!(invalid[0].detail.contains("sometimes"), "{invalid:?}");
        // Every bad annotation falls back to the default.
        assert_eq!(p, policy(&[]).0);
        // A good one next to a bad one still applies.
        let (p, invalid) = policy(&[(names::TIMEOUT_REQUEST, "2s"), (names::RETRY_LIMIT, "99")]);
        assert_eq!(p.timeout_ms, 2000);
        assert_eq!(invalid.len(), 1);
    }
}
