//! The identity service's metrics: certificates issued and refused, and
//! the issuer in use.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

weft_api::label_values! {
    /// How reloading the anchors and issuer after their files changed went.
    pub enum Reload {
        Success => "success",
        Failure => "failure",
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct IssuerLabels {
    /// [`weft_api::identity::fingerprint`] of the issuer certificate.
    pub issuer: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AnchorLabels {
    /// [`weft_api::identity::fingerprint`] of the anchor certificate.
    pub anchor: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: Reload,
}

/// Refusals the identity service makes before the token and CSR checks.
pub const REQUEST_REFUSAL_REASONS: [&str; 2] = ["malformed_identity", "identity_mismatch"];

#[derive(Debug, Default)]
pub struct IdentityMetrics {
    pub issued: Counter,
    refused: Family<ReasonLabels, Counter>,
    issuer_expiry: Gauge,
    issuer: Family<IssuerLabels, Gauge>,
    anchor_expiry: Gauge,
    bundle: Family<AnchorLabels, Gauge>,
    issuer_reloads: Family<ReloadLabels, Counter>,
}

impl IdentityMetrics {
    /// Registers the families under `identity_`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = IdentityMetrics::default();
        let registry = registry.sub_registry_with_prefix("identity");
        registry.register(
            "certificates_issued",
            "Workload certificates signed",
            m.issued.clone(),
        );
        registry.register(
            "certificates_refused",
            "Certificate requests refused, by reason",
            m.refused.clone(),
        );
        registry.register(
            "issuer_expiration_timestamp_seconds",
            "When the issuer certificate in use expires (Unix time)",
            m.issuer_expiry.clone(),
        );
        registry.register(
            "issuer_info",
            "1 for the issuer (its fingerprint) signing now",
            m.issuer.clone(),
        );
        registry.register(
            "trust_anchor_expiration_timestamp_seconds",
            "When the first of the trust anchors expires (Unix time)",
            m.anchor_expiry.clone(),
        );
        registry.register(
            "trust_anchor_bundle_info",
            "1 for each trust anchor (its fingerprint) in the bundle sent with certificates",
            m.bundle.clone(),
        );
        registry.register(
            "issuer_reloads",
            "Reloads of the trust anchors and issuer after their files changed, by result",
            m.issuer_reloads.clone(),
        );
        // Known label values start at zero, so dashboards show "none yet"
        // rather than "no data".
        m.known_refusals(&REQUEST_REFUSAL_REASONS);
        for &result in Reload::ALL {
            let _ = m.issuer_reloads.get_or_create(&ReloadLabels { result });
        }
        Arc::new(m)
    }

    /// Starts the refusal reasons another part knows at zero (the CA's and
    /// the token checker's), so that dashboards show "none yet".
    pub fn known_refusals(&self, reasons: &[&'static str]) {
        for &reason in reasons {
            let _ = self.refused.get_or_create(&ReasonLabels { reason });
        }
    }

    pub fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn issuer_reload(&self, result: Reload) {
        self.issuer_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// The bundle in use, by anchor certificate.
    pub fn set_bundle(&self, anchors: &[rustls::pki_types::CertificateDer<'_>]) {
        self.bundle.clear();
        for anchor in anchors {
            let anchor = weft_api::identity::fingerprint(anchor);
            self.bundle.get_or_create(&AnchorLabels { anchor }).set(1);
        }
    }

    pub fn set_anchor_expiry(&self, t: SystemTime) {
        let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        self.anchor_expiry.set(secs as i64);
    }

    /// The issuer now signing: its expiry and fingerprint.
    pub fn set_issuer(&self, cert_der: &[u8], not_after: SystemTime) {
        let secs = not_after
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.issuer_expiry.set(secs as i64);
        self.issuer.clear();
        let issuer = weft_api::identity::fingerprint(cert_der);
        self.issuer.get_or_create(&IssuerLabels { issuer }).set(1);
    }
}
