//! Workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

/// Trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Audience a service-account token must be minted for to be accepted by
/// the identity service; a token for the API server (or anything else)
/// is refused.
pub const TOKEN_AUDIENCE: &str = "identity.weft.io";

/// A workload's SPIFFE ID, derived from its namespace and service account.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string is not a Weft workload identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("identity {0:?} does not start with spiffe://")]
    Scheme(String),
    #[error(
        "identity {0:?} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    Shape(String),
    #[error("trust domain {0:?} must be lowercase letters, digits, '.', '-' or '_'")]
    TrustDomain(String),
    #[error("{what} {value:?} is not a valid Kubernetes name")]
    Name { what: &'static str, value: String },
}

impl SpiffeId {
    /// Builds an identity, checking every part.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        let valid_td = !trust_domain.is_empty()
            && trust_domain.len() <= 255
            && trust_domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if !valid_td {
            return Err(SpiffeIdError::TrustDomain(trust_domain.into()));
        }
        // Namespaces are DNS labels; service accounts DNS subdomains.
        if !is_dns_label(namespace) {
            return Err(SpiffeIdError::Name {
                what: "namespace",
                value: namespace.into(),
            });
        }
        if !(service_account.len() <= 253 && service_account.split('.').all(is_dns_label)) {
            return Err(SpiffeIdError::Name {
                what: "service account",
                value: service_account.into(),
            });
        }
        Ok(SpiffeId {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The DNS-style name a client sends as TLS SNI when it expects this
    /// identity, and that a verifier derives from a certificate's URI SAN
    /// to compare. A namespace is a single DNS label, so the mapping is
    /// one-to-one. Kubernetes allows names whose readable form breaks DNS's
    /// limits (a 253-character service account, a trust domain with a long
    /// label); such an identity is named by the SHA-256 of its ID instead,
    /// which both ends derive alike, so it is still meshed and checked
    /// exactly rather than left without a TLS name.
    pub fn tls_server_name(&self) -> String {
        let readable = format!(
            "{}.{}.serviceaccount.identity.weft.{}",
            self.service_account, self.namespace, self.trust_domain
        );
        if is_dns_name(&readable) {
            return readable;
        }
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.to_string().as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("{}.{}.sha256.identity.weft", &hex[..32], &hex[32..])
    }
}

/// A name TLS accepts as SNI: at most 253 bytes, labels of 1 to 63
/// letters, digits, `-` or `_`, none starting or ending with `-`, and a
/// last label that is not all digits (it would read as an address).
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && !name
            .rsplit('.')
            .next()
            .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b))
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme(s.into()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => SpiffeId::new(td, ns, sa),
            _ => Err(SpiffeIdError::Shape(s.into())),
        }
    }
}

/// The Kubernetes user name of a service account, as TokenReview reports it.
pub fn service_account_username(namespace: &str, service_account: &str) -> String {
    format!("system:serviceaccount:{namespace}:{service_account}")
}

/// Splits `system:serviceaccount:<ns>:<sa>` into its namespace and name.
pub fn parse_service_account_username(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, sa) = rest.split_once(':')?;
    (!ns.is_empty() && !sa.is_empty() && !sa.contains(':')).then_some((ns, sa))
}

/// A certificate's short fingerprint, the first 16 hex digits of the
/// SHA-256 of its DER: how metrics name an issuer, so that an alert can
/// tell a proxy's issuer from the controller's.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id: SpiffeId = "spiffe://cluster.local/ns/demo/sa/web".parse().unwrap();
        assert_eq!(id.namespace(), "demo");
        assert_eq!(id.service_account(), "web");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/demo/sa/web");
        assert_eq!(
            id.tls_server_name(),
            "web.demo.serviceaccount.identity.weft.cluster.local"
        );
    }

    /// Found by the `spiffe_id` fuzz target: a trust domain of one
    /// 250-character label had no TLS name, and the proxy then treated
    /// such a peer as unmeshed. So did any 253-character service account,
    /// and (the second run) a trust domain ending in a numeric label.
    #[test]
    fn identities_too_long_for_dns_get_a_hashed_server_name() {
        let fuzzed = format!(
            "spiffe://gaxe{}yyp{}8{}yyyag/ns/t--hhhhhhrea-hm--hhhhhhrea-hh/sa/dbreb.rehhr",
            "1".repeat(63),
            "1".repeat(17),
            "8".repeat(120)
        );
        let long_sa = format!(
            "spiffe://cluster.local/ns/demo/sa/{}",
            [vec!["a".repeat(63); 3].join("."), "b".repeat(61)].join(".")
        );
        let numeric_tld =
            "spiffe://cluster.55555555luster.555555555555555555555555/ns/team-a/sa/db7.read8mmmmmmmm"
                .to_string();
        let mut names = std::collections::BTreeSet::new();
        for text in [fuzzed, long_sa, numeric_tld] {
            let id: SpiffeId = text.parse().unwrap();
            let name = id.tls_server_name();
            assert!(is_dns_name(&name), "{name}");
            assert!(name.ends_with(".sha256.identity.weft"), "{name}");
            assert_eq!(name, id.clone().tls_server_name(), "stable");
            names.insert(name);
        }
        assert_eq!(names.len(), 3, "distinct identities, distinct names");
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "https://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://Cluster.Local/ns/a/sa/b",
            "spiffe://cluster.local/ns/A/sa/b",
            "spiffe://cluster.local/ns/a.b/sa/c",
            "spiffe://cluster.local/ns/a/sa/",
            "spiffe:///ns/a/sa/b",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn service_account_usernames() {
        assert_eq!(
            parse_service_account_username("system:serviceaccount:demo:web"),
            Some(("demo", "web"))
        );
        assert_eq!(parse_service_account_username("system:node:n1"), None);
        assert_eq!(
            parse_service_account_username("system:serviceaccount:demo:"),
            None
        );
        assert_eq!(
            service_account_username("a", "b"),
            "system:serviceaccount:a:b"
        );
    }
}
