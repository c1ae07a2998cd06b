//! `weft-controller install-secrets`: everything secret or generated that
//! an install needs, as one manifest: the identity issuer Secret, the
//! trust-anchor ConfigMap, the injector's serving certificate, and the
//! MutatingWebhookConfiguration with that certificate's CA bundle.
//!
//! The CA material lives in a folder the operator keeps (the trust
//! anchor's key belongs there, never in the cluster). Running it again
//! reuses the anchor, issuer and webhook CA, and only renews the webhook's
//! serving certificate, so re-applying never breaks running proxies.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    PKCS_ECDSA_P256_SHA256, SanType,
};
use serde_json::{Value, json};

use crate::pki;

/// The webhook configuration, with an empty `caBundle` the command fills.
pub const WEBHOOK_TEMPLATE: &str = include_str!("../../examples/install/templates/webhook.yaml");

pub const WEBHOOK_CA_CERT: &str = "webhook-ca.crt";
pub const WEBHOOK_CA_KEY: &str = "webhook-ca.key";
/// Names the install manifests mount.
pub const ISSUER_SECRET: &str = "weft-identity-issuer";
pub const TRUST_ANCHORS_CONFIGMAP: &str = "weft-trust-anchors";
pub const INJECTOR_TLS_SECRET: &str = "weft-injector-tls";
pub const INJECTOR_SERVICE: &str = "weft-injector";

#[derive(Clone, Debug)]
pub struct InstallSecrets {
    pub trust_domain: String,
    pub namespace: String,
    /// `Fail` or `Ignore`, for the labelled-namespace webhook.
    pub failure_policy: String,
    pub webhook_cert_lifetime: Duration,
}

/// Makes or reuses the CA material in `pki_dir` and returns the manifest
/// (a YAML stream).
pub fn render(pki_dir: &Path, settings: &InstallSecrets) -> anyhow::Result<String> {
    if !matches!(settings.failure_policy.as_str(), "Fail" | "Ignore") {
        anyhow::bail!(
            "failure policy {:?}: use Fail or Ignore",
            settings.failure_policy
        );
    }
    if !pki_dir.join(pki::ANCHOR_CERT).exists() {
        pki::bootstrap(
            pki_dir,
            &settings.trust_domain,
            Duration::from_secs(3650 * 86400),
            Duration::from_secs(365 * 86400),
            false,
        )?;
    }
    let read = |name: &str| {
        std::fs::read_to_string(pki_dir.join(name))
            .with_context(|| format!("cannot read {}", pki_dir.join(name).display()))
    };
    let anchors = read(pki::ANCHOR_CERT)?;
    let issuer_cert = read(pki::ISSUER_CERT)?;
    let issuer_key = read(pki::ISSUER_KEY)?;

    let (webhook_ca_pem, webhook_ca) = webhook_ca(pki_dir)?;
    let service = format!("{INJECTOR_SERVICE}.{}", settings.namespace);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{service}.svc"));
    params.distinguished_name = dn;
    params.subject_alt_names = [
        service.clone(),
        format!("{service}.svc"),
        format!("{service}.svc.cluster.local"),
    ]
    .into_iter()
    .map(|n| Ok(SanType::DnsName(n.try_into()?)))
    .collect::<anyhow::Result<_>>()?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + settings.webhook_cert_lifetime;
    params.serial_number = Some(pki::random_serial());
    params.use_authority_key_identifier_extension = true;
    let serving = params.signed_by(&key, &webhook_ca)?;

    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let labels = json!({"app.kubernetes.io/part-of": "weft"});
    let mut docs = vec![
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": ISSUER_SECRET, "namespace": settings.namespace, "labels": labels},
            "data": {"ca.crt": b64(&anchors), "tls.crt": b64(&issuer_cert), "tls.key": b64(&issuer_key)},
        }),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": TRUST_ANCHORS_CONFIGMAP, "namespace": settings.namespace, "labels": labels},
            "data": {"ca.crt": anchors},
        }),
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": INJECTOR_TLS_SECRET, "namespace": settings.namespace, "labels": labels},
            "data": {"tls.crt": b64(&serving.pem()), "tls.key": b64(&key.serialize_pem())},
        }),
    ];
    let mut webhook: Value =
        serde_yaml_ng::from_str(WEBHOOK_TEMPLATE).context("the webhook template")?;
    for hook in webhook["webhooks"]
        .as_array_mut()
        .context("the webhook template has no webhooks")?
    {
        hook["clientConfig"]["caBundle"] = json!(b64(&webhook_ca_pem));
        hook["clientConfig"]["service"]["namespace"] = json!(settings.namespace);
        // The opt-in-by-annotation webhook always fails open: it sees
        // every namespace, and an injector outage must not stop them.
        if hook["name"] == "namespace.inject.weft.io" {
            hook["failurePolicy"] = json!(settings.failure_policy);
        }
    }
    docs.push(webhook);

    let mut out = String::from(
        "# Generated by `weft-controller install-secrets`: contains the mesh's\n\
         # issuer key. Apply it, do not commit it.\n",
    );
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&doc)?);
    }
    Ok(out)
}

/// The webhook's own CA (PEM and signer), made on first use.
fn webhook_ca(pki_dir: &Path) -> anyhow::Result<(String, Issuer<'static, KeyPair>)> {
    let (cert_path, key_path) = (pki_dir.join(WEBHOOK_CA_CERT), pki_dir.join(WEBHOOK_CA_KEY));
    if !cert_path.exists() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let params = pki::ca_params(
            "weft-injector-ca",
            Duration::from_secs(3650 * 86400),
            Some(0),
        );
        let cert = params.self_signed(&key)?;
        pki::write_atomic(&key_path, key.serialize_pem().as_bytes(), true)?;
        pki::write_atomic(&cert_path, cert.pem().as_bytes(), false)?;
    }
    let cert_pem = std::fs::read_to_string(&cert_path)
        .with_context(|| format!("cannot read {}", cert_path.display()))?;
    let key_pem = std::fs::read_to_string(&key_path)
        .with_context(|| format!("cannot read {}", key_path.display()))?;
    let key = KeyPair::from_pem(&key_pem).context("webhook CA key")?;
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).context("webhook CA certificate")?;
    Ok((cert_pem, issuer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> InstallSecrets {
        InstallSecrets {
            trust_domain: "cluster.local".into(),
            namespace: "weft-system".into(),
            failure_policy: "Fail".into(),
            webhook_cert_lifetime: Duration::from_secs(365 * 86400),
        }
    }

    fn docs(text: &str) -> Vec<Value> {
        serde_yaml_ng::Deserializer::from_str(text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect()
    }

    #[test]
    fn one_manifest_with_everything_and_reruns_keep_the_cas() {
        let dir = tempfile::tempdir().unwrap();
        let first = docs(&render(dir.path(), &settings()).unwrap());
        let kinds: Vec<&str> = first.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "Secret",
                "ConfigMap",
                "Secret",
                "MutatingWebhookConfiguration"
            ]
        );
        let webhook = &first[3];
        let bundle = webhook["webhooks"][0]["clientConfig"]["caBundle"]
            .as_str()
            .unwrap();
        assert!(!bundle.is_empty());
        assert_eq!(webhook["webhooks"][1]["clientConfig"]["caBundle"], bundle);
        assert_eq!(webhook["webhooks"][0]["failurePolicy"], "Fail");
        assert_eq!(webhook["webhooks"][1]["failurePolicy"], "Ignore");

        // The anchor key stays out of the cluster.
        let issuer = first[0]["data"].as_object().unwrap();
        assert_eq!(
            issuer.keys().collect::<Vec<_>>(),
            ["ca.crt", "tls.crt", "tls.key"]
        );

        let second = docs(
            &render(
                dir.path(),
                &InstallSecrets {
                    failure_policy: "Ignore".into(),
                    ..settings()
                },
            )
            .unwrap(),
        );
        assert_eq!(second[0], first[0], "the issuer is reused");
        assert_eq!(second[1], first[1], "the anchors are reused");
        assert_eq!(
            second[3]["webhooks"][0]["clientConfig"]["caBundle"], bundle,
            "the webhook CA is reused"
        );
        assert_ne!(
            second[2]["data"]["tls.crt"], first[2]["data"]["tls.crt"],
            "the serving certificate is renewed"
        );
        assert_eq!(second[3]["webhooks"][0]["failurePolicy"], "Ignore");
    }

    #[test]
    fn a_bad_failure_policy_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = render(
            dir.path(),
            &InstallSecrets {
                failure_policy: "Sometimes".into(),
                ..settings()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("Fail or Ignore"), "{e}");
        assert!(
            !dir.path().join(pki::ANCHOR_CERT).exists(),
            "nothing written"
        );
    }
}
