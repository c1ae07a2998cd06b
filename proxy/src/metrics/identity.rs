//! Mesh identity metrics: the workload certificate, and connections the
//! mTLS layer refused.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Direction, label_values};

label_values! {
    /// Why the mesh TLS layer refused a connection.
    pub enum Refusal {
        /// Plaintext on an inbound listener in strict mode.
        Plaintext => "plaintext",
        TlsHandshake => "tls_handshake",
        Alpn => "alpn",
        NoIdentity => "no_identity",
        MeshHeader => "mesh_header",
        /// Our own certificate had not arrived yet.
        NoCertificate => "no_certificate",
    }
}

label_values! {
    /// How a request to the control plane went.
    pub enum Outcome {
        Success => "success",
        Failure => "failure",
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusedLabels {
    pub direction: Direction,
    pub reason: Refusal,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub result: Outcome,
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

#[derive(Debug)]
pub struct IdentityMetrics {
    pub expiry: Gauge,
    /// 1 for each trust anchor the proxy trusts now.
    pub anchors: Family<AnchorLabels, Gauge>,
    /// 1 for the issuer of the certificate in use; one series at a time.
    pub issuer: Family<IssuerLabels, Gauge>,
    pub refresh: Family<OutcomeLabels, Counter>,
    pub mtls_refused: Family<RefusedLabels, Counter>,
}

impl IdentityMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = IdentityMetrics {
            expiry: Gauge::default(),
            anchors: Family::default(),
            issuer: Family::default(),
            refresh: Family::default(),
            mtls_refused: Family::default(),
        };
        registry.register(
            "mtls_refused",
            "Connections refused by the mesh TLS layer, by reason",
            m.mtls_refused.clone(),
        );
        registry.register(
            "identity_cert_expiration_timestamp_seconds",
            "When the proxy's workload certificate expires (Unix time)",
            m.expiry.clone(),
        );
        registry.register(
            "identity_cert_issuer_info",
            "1 for the issuer (its fingerprint) of the workload certificate in use",
            m.issuer.clone(),
        );
        registry.register(
            "identity_trust_anchor_info",
            "1 for each trust anchor (its fingerprint) the proxy trusts now",
            m.anchors.clone(),
        );
        registry.register(
            "identity_cert_refresh",
            "Workload certificate requests, by result",
            m.refresh.clone(),
        );
        for &direction in Direction::ALL {
            for &reason in Refusal::ALL {
                let _ = m
                    .mtls_refused
                    .get_or_create(&RefusedLabels { direction, reason });
            }
        }
        for &result in Outcome::ALL {
            let _ = m.refresh.get_or_create(&OutcomeLabels { result });
        }
        m
    }

    /// A certificate was installed: when it expires, and the fingerprint
    /// of its issuer, if the controller sent it.
    pub fn refreshed(&self, not_after: SystemTime, issuer: Option<String>) {
        let secs = not_after.duration_since(UNIX_EPOCH).unwrap_or_default();
        self.expiry.set(secs.as_secs() as i64);
        self.issuer.clear();
        if let Some(issuer) = issuer {
            self.issuer.get_or_create(&IssuerLabels { issuer }).set(1);
        }
        self.refresh
            .get_or_create(&OutcomeLabels {
                result: Outcome::Success,
            })
            .inc();
    }

    /// The bundle in use, by fingerprint.
    pub fn anchors_in_use(&self, fingerprints: &[String]) {
        self.anchors.clear();
        for anchor in fingerprints {
            self.anchors
                .get_or_create(&AnchorLabels {
                    anchor: anchor.clone(),
                })
                .set(1);
        }
    }

    pub fn refresh_failed(&self) {
        self.refresh
            .get_or_create(&OutcomeLabels {
                result: Outcome::Failure,
            })
            .inc();
    }

    pub fn refused(&self, direction: Direction, reason: Refusal) {
        self.mtls_refused
            .get_or_create(&RefusedLabels { direction, reason })
            .inc();
    }
}
