use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::*;

/// The bytes a real rustls client sends first, offering `alpn`.
fn hello_offering(alpn: &[&[u8]]) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    // No server is ever reached; the anchors only have to exist.
    let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
    roots.add(ca.cert.der().clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = "server.example".try_into().unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).unwrap();
    }
    out
}

#[test]
fn a_weft_hello_is_mesh_whatever_else_it_offers() {
    assert_eq!(
        client_hello(&hello_offering(&[ALPN])),
        Hello::Complete { mesh: true }
    );
    assert_eq!(
        client_hello(&hello_offering(&[b"h2", ALPN])),
        Hello::Complete { mesh: true }
    );
}

#[test]
fn app_tls_is_not_mesh() {
    for alpn in [
        &[][..],
        &[&b"h2"[..], b"http/1.1"][..],
        &[&b"weft/2"[..]][..],
    ] {
        assert_eq!(
            client_hello(&hello_offering(alpn)),
            Hello::Complete { mesh: false }
        );
    }
}

#[test]
fn every_prefix_of_a_hello_waits_for_more() {
    let hello = hello_offering(&[ALPN]);
    for len in 1..hello.len() {
        assert_eq!(client_hello(&hello[..len]), Hello::Partial, "prefix {len}");
    }
}

#[test]
fn garbage_is_not_a_hello() {
    assert_eq!(client_hello(b"GET / HTTP/1.1\r\n\r\n"), Hello::Invalid);
    // A handshake record that carries a ServerHello.
    assert_eq!(
        client_hello(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00]),
        Hello::Invalid
    );
    assert_eq!(
        client_hello(&[0x17, 0x03, 0x03, 0x00, 0x01, 0x00]),
        Hello::Invalid
    );
}

#[tokio::test]
async fn a_hello_split_in_small_writes_is_read_whole_and_kept() {
    let hello = hello_offering(&[ALPN]);
    let (mut client, mut server) = tokio::io::duplex(64);
    let sent = hello.clone();
    tokio::spawn(async move {
        for chunk in sent.chunks(7) {
            client.write_all(chunk).await.unwrap();
            tokio::task::yield_now().await;
        }
        // Held open: the reader must decide without an end of stream.
        std::future::pending::<()>().await;
    });
    let mut buf = BytesMut::new();
    let first = read_first(&mut server, &mut buf, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(first, First::Mesh);
    assert_eq!(&buf[..], &hello[..], "the bytes stay for the handshake");
}

#[tokio::test]
async fn plaintext_and_app_tls_go_to_detection() {
    let (mut client, mut server) = tokio::io::duplex(4096);
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let mut buf = BytesMut::new();
    let first = read_first(&mut server, &mut buf, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(first, First::App(Detection::Found(Protocol::Http1)));

    let (mut client, mut server) = tokio::io::duplex(4096);
    let hello = hello_offering(&[b"h2"]);
    client.write_all(&hello).await.unwrap();
    let mut buf = BytesMut::new();
    let first = read_first(&mut server, &mut buf, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(first, First::App(Detection::Found(Protocol::Tls)));
    assert_eq!(&buf[..], &hello[..]);
}

#[tokio::test(start_paused = true)]
async fn a_hello_cut_short_goes_to_the_app_at_the_timeout() {
    let hello = hello_offering(&[ALPN]);
    let (mut client, mut server) = tokio::io::duplex(4096);
    client.write_all(&hello[..40]).await.unwrap();
    let mut buf = BytesMut::new();
    let first = read_first(&mut server, &mut buf, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(first, First::App(Detection::Found(Protocol::Tls)));
    assert_eq!(buf.len(), 40);
}
