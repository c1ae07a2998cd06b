//! CSRs as proxies (or anyone holding a token) send them to the CA.
//! Invariants: no panic; a certificate is issued only for a CSR whose
//! signature proves its key, carries that key, exactly the asked-for
//! SPIFFE ID as its one SAN, is no CA, and ends before the issuer does.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use weft_api::identity::SpiffeId;
use weft_controller::ca::{Ca, CaSettings};
use weft_controller::pki::{self, IssuerPaths};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

struct Fixture {
    ca: Ca,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let day = Duration::from_secs(86_400);
        pki::bootstrap(dir.path(), "cluster.local", 365 * day, 30 * day, false).expect("pki");
        let mut registry = prometheus_client::registry::Registry::default();
        let ca = Ca::load(
            IssuerPaths::in_dir(dir.path()),
            CaSettings {
                trust_domain: "cluster.local".into(),
                leaf_lifetime: day,
                clock_skew: Duration::from_secs(60),
            },
            weft_controller::ca::metrics::IdentityMetrics::register(&mut registry),
        )
        .expect("the CA loads");
        Fixture { ca, _dir: dir }
    })
}

fuzz_target!(|der: &[u8]| {
    let id = SpiffeId::new("cluster.local", "fuzz", "default").expect("an ID");
    let issued = match fixture().ca.certify(&id, der) {
        Ok(issued) => issued,
        Err(refusal) => {
            assert!(!refusal.reason().is_empty());
            return;
        }
    };
    let (_, csr) = X509CertificationRequest::from_der(der).expect("an issued CSR parses");
    csr.verify_signature()
        .expect("a certificate was issued for a CSR whose signature fails");
    let (_, leaf) = X509Certificate::from_der(&issued.leaf).expect("the leaf parses");
    assert_eq!(
        leaf.public_key().raw,
        csr.certification_request_info.subject_pki.raw,
        "the leaf carries another key"
    );
    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .expect("one SAN extension")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::URI(uri) => uri.to_string(),
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(sans, [id.to_string()]);
    assert!(!leaf.is_ca());
    let (_, issuer) = X509Certificate::from_der(&issued.intermediates[0]).expect("the issuer");
    assert!(leaf.validity().not_after <= issuer.validity().not_after);
});
