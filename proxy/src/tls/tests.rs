use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// A trust anchor that can sign workload leaves directly.
struct TestCa {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new() -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap().der().clone();
        TestCa {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    fn roots(&self) -> Arc<TrustAnchors> {
        TrustAnchors::new(AnchorSet::from_der(vec![self.cert.clone()]).unwrap())
    }

    fn store_for(&self, id: &str) -> Arc<CertStore> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let leaf = params.signed_by(&key, &self.issuer).unwrap().der().clone();
        let signing = provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                key.serialize_der(),
            )))
            .unwrap();
        let store = Arc::new(CertStore::default());
        store.set(CertifiedKey::new(vec![leaf], signing));
        store
    }
}

const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";
const API: &str = "spiffe://cluster.local/ns/demo/sa/api";

/// Runs one handshake; returns the client identity the server saw, or the
/// client's error.
async fn handshake(
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
    expect: &str,
) -> Result<Option<SpiffeId>, String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let expect: SpiffeId = expect.parse().unwrap();
    let server_task = tokio::spawn(async move {
        let mut tls = tokio_rustls::TlsAcceptor::from(server)
            .accept(b)
            .await
            .ok()?;
        let id = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(spiffe_id_of);
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.ok()?;
        tls.write_all(&buf).await.ok()?;
        tls.flush().await.ok()?;
        id
    });
    let result = async {
        let mut tls = tokio_rustls::TlsConnector::from(client)
            .connect(server_name_for(&expect).unwrap(), a)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"ping");
        Ok::<_, String>(())
    }
    .await;
    let seen = server_task.await.unwrap();
    result.map(|()| seen)
}

#[tokio::test]
async fn mutual_tls_proves_both_identities() {
    let ca = TestCa::new();
    let client = mesh_client_config(ca.roots(), ca.store_for(WEB)).unwrap();
    let server = mesh_server_config(ca.roots(), ca.store_for(API)).unwrap();
    let seen = handshake(client, server, API).await.unwrap();
    assert_eq!(seen.unwrap().to_string(), WEB);
}

#[tokio::test]
async fn a_server_with_another_identity_is_refused() {
    let ca = TestCa::new();
    let client = mesh_client_config(ca.roots(), ca.store_for(WEB)).unwrap();
    let server = mesh_server_config(ca.roots(), ca.store_for(WEB)).unwrap();
    let error = handshake(client, server, API).await.unwrap_err();
    assert!(error.contains("NotValidForName"), "{error}");
}

#[tokio::test]
async fn peers_under_another_anchor_are_refused() {
    let ours = TestCa::new();
    let theirs = TestCa::new();
    // Their server, our client.
    let client = mesh_client_config(ours.roots(), ours.store_for(WEB)).unwrap();
    let server = mesh_server_config(theirs.roots(), theirs.store_for(API)).unwrap();
    let error = handshake(client, server, API).await.unwrap_err();
    assert!(error.contains("invalid peer certificate"), "{error}");
    // Their client, our server: the server refuses the client certificate.
    let client = mesh_client_config(ours.roots(), theirs.store_for(WEB)).unwrap();
    let server = mesh_server_config(ours.roots(), ours.store_for(API)).unwrap();
    assert!(handshake(client, server, API).await.is_err());
}

#[tokio::test]
async fn replaced_anchors_decide_the_next_handshake() {
    let old = TestCa::new();
    let new = TestCa::new();
    let both = || AnchorSet::from_der(vec![old.cert.clone(), new.cert.clone()]).unwrap();
    // Both sides share one live bundle, as a proxy's client and server do.
    let anchors = old.roots();
    let client = mesh_client_config(anchors.clone(), new.store_for(WEB)).unwrap();
    let server = mesh_server_config(anchors.clone(), new.store_for(API)).unwrap();
    let error = handshake(client.clone(), server.clone(), API)
        .await
        .unwrap_err();
    assert!(error.contains("invalid peer certificate"), "{error}");

    assert!(anchors.replace(both()));
    assert!(!anchors.replace(both()), "the same bundle is no change");
    assert_eq!(anchors.current().count(), 2);
    let seen = handshake(client.clone(), server.clone(), API)
        .await
        .unwrap();
    assert_eq!(seen.unwrap().to_string(), WEB);

    // The server alone dropping the new anchor refuses the client's
    // certificate, on the server's side of the handshake.
    let server_only_old = old.roots();
    let server = mesh_server_config(server_only_old, new.store_for(API)).unwrap();
    assert!(handshake(client, server, API).await.is_err());
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let ca = TestCa::new();
    let client = mesh_client_config(ca.roots(), Arc::new(CertStore::default())).unwrap();
    let server = mesh_server_config(ca.roots(), ca.store_for(API)).unwrap();
    assert!(handshake(client, server, API).await.is_err());
}

#[tokio::test]
async fn post_quantum_key_exchange_is_preferred() {
    let ca = TestCa::new();
    let client = mesh_client_config(ca.roots(), ca.store_for(WEB)).unwrap();
    let server = mesh_server_config(ca.roots(), ca.store_for(API)).unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let accept = tokio::spawn(async move {
        let tls = tokio_rustls::TlsAcceptor::from(server)
            .accept(b)
            .await
            .unwrap();
        tls.get_ref()
            .1
            .negotiated_key_exchange_group()
            .map(|g| g.name())
    });
    let api: SpiffeId = API.parse().unwrap();
    let _tls = tokio_rustls::TlsConnector::from(client)
        .connect(server_name_for(&api).unwrap(), a)
        .await
        .unwrap();
    assert_eq!(
        accept.await.unwrap(),
        Some(rustls::NamedGroup::X25519MLKEM768)
    );
}

#[test]
fn identity_comes_from_the_single_uri_san() {
    let ca = TestCa::new();
    let store = ca.store_for(WEB);
    let key = store.current.load_full().unwrap();
    assert_eq!(spiffe_id_of(&key.cert[0]).unwrap().to_string(), WEB);
    assert!(spiffe_id_of(&ca.cert).is_none());
    assert!(spiffe_id_of(&CertificateDer::from(vec![1, 2, 3])).is_none());
}

#[test]
fn anchors_must_be_pem_certificates() {
    assert!(load_anchors(b"").is_err());
    assert!(
        load_anchors(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err()
    );
}

/// At an app port, the mesh header must name that port: a client let in
/// on one port (say by a NetworkPolicy) cannot ask for another.
#[tokio::test]
async fn a_header_for_another_port_is_refused_at_an_app_port() {
    use crate::mesh::{AcceptError, Arrival, accept};
    use weft_api::mesh::{Header, Protocol};

    async fn offer(arrival: Arrival, port: u16) -> Result<Header, AcceptError> {
        let ca = TestCa::new();
        let client = mesh_client_config(ca.roots(), ca.store_for(WEB)).unwrap();
        let server = mesh_server_config(ca.roots(), ca.store_for(API)).unwrap();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let connector = tokio_rustls::TlsConnector::from(client);
            let name = server_name_for(&API.parse().unwrap()).unwrap();
            let mut tls = connector.connect(name, client_io).await.unwrap();
            let header = Header {
                port,
                protocol: Protocol::Http1,
            };
            tls.write_all(&header.encode()).await.unwrap();
            let _ = tls.read(&mut [0u8; 1]).await;
        });
        let io = crate::io::CountingIo::new(server_io, Default::default(), Default::default());
        let timeout = std::time::Duration::from_secs(5);
        accept(server, io, arrival, timeout)
            .await
            .map(|(_, _, header)| header)
    }
    assert_eq!(
        offer(Arrival::AppPort(8080), 8080).await.unwrap().port,
        8080
    );
    assert_eq!(offer(Arrival::InboundPort, 9090).await.unwrap().port, 9090);
    let refused = offer(Arrival::AppPort(8080), 9090).await.unwrap_err();
    assert!(
        matches!(&refused, AcceptError::Header(m) if m.contains("9090")),
        "{refused}"
    );
}
