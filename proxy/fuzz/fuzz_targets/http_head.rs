//! An app's HTTP/1 request head through the proxy's handling: hyper's
//! HTTP/1 server parses the bytes; the outbound proxy strips hop-by-hop
//! fields and turns the request into mesh HTTP/2; a real hyper HTTP/2
//! client and server with the mesh's settings carry it; the inbound proxy
//! turns it back into HTTP/1.1. Invariants: no panic; a head hyper accepts
//! crosses the HTTP/2 hop (or carries a Host that is no authority, which
//! the proxy cannot place in an HTTP/2 request); what arrives has the
//! same method, path and Host, and exactly the end-to-end fields sent,
//! by a model of RFC 9110's hop-by-hop rules written here.
#![no_main]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use weft_proxy::fuzzing::{from_mesh_h2, h2_client, h2_server, to_mesh_h2};
use weft_proxy::http::pool::BoxBody;

const MAX_HEADER_BYTES: usize = 64 * 1024;

fn empty() -> BoxBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// The fields a proxy must not forward, by RFC 9110 §7.6.1 and the
/// well-known hop-by-hop names (`TE` survives only as `trailers`).
fn end_to_end(headers: &HeaderMap) -> BTreeSet<(String, Vec<u8>)> {
    let named: BTreeSet<String> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    headers
        .iter()
        .filter(|(name, value)| {
            let name = name.as_str();
            !named.contains(name)
                && ![
                    "connection",
                    "keep-alive",
                    "proxy-connection",
                    "transfer-encoding",
                    "upgrade",
                    "host",
                ]
                .contains(&name)
                && (name != "te" || value.as_bytes().eq_ignore_ascii_case(b"trailers"))
        })
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// What the app's server would get, after both proxies.
async fn across_the_mesh(req: Request<BoxBody>) -> Result<Request<()>, String> {
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let arrived: Arc<Mutex<Option<Request<()>>>> = Arc::default();
    let seen = arrived.clone();
    let mut server = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2_server(&mut server, MAX_HEADER_BYTES);
    tokio::spawn(server.serve_connection(
        TokioIo::new(server_io),
        service_fn(move |req: Request<Incoming>| {
            let seen = seen.clone();
            async move {
                let mut req = req.map(|_| empty());
                from_mesh_h2(&mut req);
                *seen.lock().unwrap() = Some(req.map(|_| ()));
                Ok::<_, std::convert::Infallible>(Response::new(empty()))
            }
        }),
    ));
    let mut client = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    h2_client(&mut client, MAX_HEADER_BYTES);
    let (mut sender, conn) = client
        .handshake(TokioIo::new(client_io))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("the mesh hop refused it: {e:?}"))?;
    let arrived = arrived.lock().unwrap().take();
    arrived.ok_or_else(|| "answered without arriving".to_string())
}

async fn run(bytes: Vec<u8>) {
    let (mut client, server_io) = tokio::io::duplex(1 << 20);
    let service = service_fn(move |req: Request<Incoming>| async move {
        let method = req.method().clone();
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                req.headers()
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            });
        let expected = end_to_end(req.headers());
        let mut req = req.map(|_| empty());
        weft_proxy::http::strip_hop_by_hop(req.headers_mut(), false);
        to_mesh_h2(&mut req, SocketAddr::from(([10, 0, 0, 1], 8080)));
        let valid_authority = req.uri().authority().is_some();
        match across_the_mesh(req).await {
            Ok(arrived) => {
                assert_eq!(arrived.method(), method);
                assert_eq!(arrived.uri().to_string(), path);
                let host = arrived.headers().get("host").map(|h| h.as_bytes().to_vec());
                let want = authority.map_or_else(|| b"10.0.0.1:8080".to_vec(), String::into_bytes);
                assert_eq!(host, Some(want), "Host changed");
                assert_eq!(end_to_end(arrived.headers()), expected, "fields changed");
                assert!(
                    !arrived
                        .headers()
                        .contains_key(weft_proxy::http::ORIG_PROTO_HEADER)
                );
            }
            Err(why) => assert!(!valid_authority, "{method} {path}: {why}"),
        }
        Ok::<_, std::convert::Infallible>(Response::new(empty()))
    });
    let server = tokio::spawn(async move {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.max_buf_size(MAX_HEADER_BYTES);
        // Errors are hyper refusing the bytes, which is its job.
        let _ = builder
            .serve_connection(TokioIo::new(server_io), service)
            .await;
    });
    let _ = client.write_all(&bytes).await;
    let _ = client.shutdown().await;
    // Hyper answers what it refuses (400, 431) and closes; drain it.
    let mut sink = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
    if let Err(panic) = server.await {
        std::panic::resume_unwind(panic.into_panic());
    }
}

fuzz_target!(|bytes: Vec<u8>| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(bytes));
});
