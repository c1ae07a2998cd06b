use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};
use weft_api::identity::SpiffeId;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use super::*;
use crate::metrics::Metrics;
use crate::pki;

/// A one-day anchor and a one-hour issuer in `dir`.
fn bootstrap(dir: &std::path::Path) -> anyhow::Result<()> {
    pki::bootstrap(
        dir,
        "cluster.local",
        Duration::from_secs(86_400),
        Duration::from_secs(3600),
        false,
    )
}

fn setup(lifetime: Duration) -> (tempfile::TempDir, Ca) {
    let (dir, ca, _) = setup_with_metrics(lifetime);
    (dir, ca)
}

/// Also returns the registry the CA's metrics are exported from.
fn setup_with_metrics(lifetime: Duration) -> (tempfile::TempDir, Ca, Arc<Metrics>) {
    let metrics = Metrics::new();
    let dir = tempfile::tempdir().unwrap();
    bootstrap(dir.path()).unwrap();
    let ca = Ca::load(
        pki::IssuerPaths::in_dir(dir.path()),
        CaSettings {
            trust_domain: "cluster.local".into(),
            leaf_lifetime: lifetime,
            clock_skew: Duration::from_secs(60),
        },
        metrics.identity.clone(),
    )
    .unwrap();
    (dir, ca, metrics)
}

fn web() -> SpiffeId {
    "spiffe://cluster.local/ns/demo/sa/web".parse().unwrap()
}

fn csr_for(key: &KeyPair, sans: &[&str]) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans
        .iter()
        .map(|s| SanType::URI((*s).try_into().unwrap()))
        .collect();
    params.serialize_request(key).unwrap().der().to_vec()
}

fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

#[test]
fn issues_a_spiffe_leaf_under_the_issuer() {
    let (_dir, ca) = setup(Duration::from_secs(3600));
    let key = p256();
    let issued = ca
        .certify(&web(), &csr_for(&key, &[&web().to_string()]))
        .unwrap();
    let (_, leaf) = X509Certificate::from_der(&issued.leaf).unwrap();
    let (_, issuer) = X509Certificate::from_der(&issued.intermediates[0]).unwrap();
    leaf.verify_signature(Some(issuer.public_key())).unwrap();
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    assert!(!leaf.is_ca());
    let uris: Vec<String> = leaf
        .extensions()
        .iter()
        .filter_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => Some(san),
            _ => None,
        })
        .flat_map(|san| san.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, vec![web().to_string()]);
    // Lifetime as configured, valid from a minute ago for lagging clocks.
    let v = leaf.validity();
    let life = v.not_after.timestamp() - v.not_before.timestamp();
    assert!((3659..=3661).contains(&life), "lifetime {life}");
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(v.not_before.timestamp() <= now - 59);
}

#[test]
fn leaves_never_outlive_the_issuer() {
    let (_dir, ca) = setup(Duration::from_secs(30 * 86_400));
    let issued = ca
        .certify(&web(), &csr_for(&p256(), &[&web().to_string()]))
        .unwrap();
    let left = issued.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(left <= Duration::from_secs(3600), "{left:?}");
}

#[test]
fn refuses_bad_csrs() {
    let (_dir, ca) = setup(Duration::from_secs(3600));
    let id = web().to_string();
    let refusal = |csr: &[u8]| ca.certify(&web(), csr).unwrap_err().reason();
    assert_eq!(refusal(b"garbage"), "malformed_csr");
    assert_eq!(refusal(&[]), "malformed_csr");
    // A valid CSR with one byte of its signature changed.
    let mut tampered = csr_for(&p256(), &[&id]);
    let last = tampered.len() - 3;
    tampered[last] ^= 0x55;
    assert_eq!(refusal(&tampered), "malformed_csr");
    // Asks for someone else, for nobody, or for more than one name.
    assert_eq!(
        refusal(&csr_for(
            &p256(),
            &["spiffe://cluster.local/ns/demo/sa/admin"]
        )),
        "csr_san_mismatch"
    );
    assert_eq!(refusal(&csr_for(&p256(), &[])), "csr_san_mismatch");
    assert_eq!(
        refusal(&csr_for(
            &p256(),
            &[&id, "spiffe://cluster.local/ns/demo/sa/admin"]
        )),
        "csr_san_mismatch"
    );
    // Keys other than P-256.
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    assert_eq!(refusal(&csr_for(&p384, &[&id])), "unsupported_key");
    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    assert_eq!(refusal(&csr_for(&ed, &[&id])), "unsupported_key");
    // Another trust domain.
    let other: SpiffeId = "spiffe://example.org/ns/demo/sa/web".parse().unwrap();
    assert_eq!(
        ca.certify(&other, &csr_for(&p256(), &[&other.to_string()]))
            .unwrap_err()
            .reason(),
        "trust_domain"
    );
}

#[test]
fn reloads_a_rotated_issuer_and_ignores_a_broken_one() {
    let (dir, ca, metrics) = setup_with_metrics(Duration::from_secs(3600));
    let first = ca.issuer_cert();
    assert!(!ca.reload_if_changed(), "nothing changed");

    pki::rotate_issuer(dir.path(), "cluster.local", Duration::from_secs(3600)).unwrap();
    assert!(ca.reload_if_changed());
    let second = ca.issuer_cert();
    assert_ne!(first, second);
    let issued = ca
        .certify(&web(), &csr_for(&p256(), &[&web().to_string()]))
        .unwrap();
    assert_eq!(issued.intermediates, vec![second.clone()]);

    // Half a rotation: a new key next to the old certificate.
    let stray = p256();
    std::fs::write(dir.path().join(pki::ISSUER_KEY), stray.serialize_pem()).unwrap();
    assert!(!ca.reload_if_changed());
    assert_eq!(ca.issuer_cert(), second, "kept the working issuer");
    ca.certify(&web(), &csr_for(&p256(), &[&web().to_string()]))
        .unwrap();

    // An issuer from a different anchor is refused.
    let foreign = tempfile::tempdir().unwrap();
    bootstrap(foreign.path()).unwrap();
    for name in [pki::ISSUER_CERT, pki::ISSUER_KEY] {
        std::fs::copy(foreign.path().join(name), dir.path().join(name)).unwrap();
    }
    assert!(!ca.reload_if_changed());
    assert_eq!(ca.issuer_cert(), second);
    let metrics = metrics.encode();
    assert!(
        metrics.contains("identity_issuer_reloads_total{result=\"success\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("identity_issuer_reloads_total{result=\"failure\"} 2"),
        "{metrics}"
    );
}

#[test]
fn an_anchor_rotation_moves_the_bundle_and_the_issuer_in_three_steps() {
    let (dir, ca) = setup(Duration::from_secs(3600));
    let old_anchor = ca.anchors()[0].clone();
    let old_issuer = ca.issuer_cert();
    let step = |step| {
        pki::rotate_anchor(
            dir.path(),
            step,
            "cluster.local",
            Duration::from_secs(86_400),
            Duration::from_secs(3600),
        )
    };
    let issue = || {
        ca.certify(&web(), &csr_for(&p256(), &[&web().to_string()]))
            .unwrap()
    };

    // 1. Both anchors, the old issuer: certificates carry both.
    step(pki::AnchorStep::Add).unwrap();
    let second = step(pki::AnchorStep::Add).unwrap_err().to_string();
    assert!(second.contains("already under way"), "{second}");
    assert!(!ca.reload_if_changed(), "the issuer did not change");
    let issued = issue();
    assert_eq!(issued.anchors.len(), 2);
    assert_eq!(issued.anchors[0], old_anchor);
    assert_eq!(issued.intermediates, vec![old_issuer.clone()]);
    let new_anchor = issued.anchors[1].clone();
    assert!(
        step(pki::AnchorStep::Retire).is_err(),
        "retire before issuer"
    );

    // 2. A new issuer under the new anchor.
    step(pki::AnchorStep::Issuer).unwrap();
    assert!(ca.reload_if_changed());
    let issued = issue();
    assert_eq!(issued.anchors.len(), 2);
    let (_, issuer) = X509Certificate::from_der(&issued.intermediates[0]).unwrap();
    let (_, anchor) = X509Certificate::from_der(&new_anchor).unwrap();
    assert_eq!(issuer.issuer(), anchor.subject());
    issuer.verify_signature(Some(anchor.public_key())).unwrap();
    // A later issuer rotation stays under the new anchor.
    pki::rotate_issuer(dir.path(), "cluster.local", Duration::from_secs(3600)).unwrap();
    assert!(ca.reload_if_changed());

    // 3. Only the new anchor.
    step(pki::AnchorStep::Retire).unwrap();
    assert!(!ca.reload_if_changed(), "the issuer did not change");
    let issued = issue();
    assert_eq!(&issued.anchors[..], &[new_anchor]);
    assert!(dir.path().join(pki::RETIRED_ANCHOR_KEY).exists());
}

#[test]
fn a_bundle_without_the_issuers_anchor_is_refused() {
    let (dir, ca, metrics) = setup_with_metrics(Duration::from_secs(3600));
    let anchors = ca.anchors();
    let foreign = tempfile::tempdir().unwrap();
    bootstrap(foreign.path()).unwrap();
    std::fs::copy(
        foreign.path().join(pki::ANCHOR_CERT),
        dir.path().join(pki::ANCHOR_CERT),
    )
    .unwrap();
    assert!(!ca.reload_if_changed());
    assert_eq!(ca.anchors(), anchors, "kept the working anchors");
    assert!(
        metrics
            .encode()
            .contains("identity_issuer_reloads_total{result=\"failure\"} 1")
    );
}

#[test]
fn refuses_to_start_with_mismatched_files() {
    let dir = tempfile::tempdir().unwrap();
    bootstrap(dir.path()).unwrap();
    std::fs::write(dir.path().join(pki::ISSUER_KEY), p256().serialize_pem()).unwrap();
    let err = Ca::load(
        pki::IssuerPaths::in_dir(dir.path()),
        CaSettings {
            trust_domain: "cluster.local".into(),
            leaf_lifetime: Duration::from_secs(60),
            clock_skew: Duration::from_secs(60),
        },
        Arc::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("do not belong together"), "{err}");
    // And bootstrap will not silently replace an anchor.
    assert!(bootstrap(dir.path()).is_err());
}

#[test]
fn every_refusal_reason_is_listed() {
    for refusal in [
        CsrRefusal::Malformed(String::new()),
        CsrRefusal::UnsupportedKey,
        CsrRefusal::SanMismatch {
            expected: String::new(),
            found: String::new(),
        },
        CsrRefusal::TrustDomain(String::new()),
    ] {
        assert!(CsrRefusal::REASONS.contains(&refusal.reason()));
    }
}
