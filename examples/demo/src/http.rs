//! The demo HTTP server (HTTP/1.1 and prior-knowledge HTTP/2 on one port).
//!
//! Routes:
//! - `GET /` answers `hello from <name>`;
//! - `POST /upload` (or `PUT`) reads the body as a stream and answers with its size
//!   (`received <n> bytes`), so a 100 MB upload never sits in memory;
//! - `GET /reason` answers `200 Fine Indeed`, a reason phrase of its own;
//! - `/refuse` answers 413 at once, without reading the body;
//! - `GET /download?bytes=N` streams N bytes back;
//! - `GET /ws` is a WebSocket that echoes every message;
//! - `GET /delay?ms=N` answers after N ms;
//! - `GET /status/NNN` answers with that status code;
//! - `CONNECT` answers 200 and then echoes the tunnel's bytes back;
//! - anything else answers 200, `hello from <name>: <method> <path>`.
//!
//! Every response names the server in `x-served-by`, and says what it
//! received: the path and query in `x-seen-path`, the `Host` in
//! `x-seen-host`, and each `x-` request header as `x-seen-<name>` (so a
//! test can see what a route's filters changed).
//!
//! Two variables make a misbehaving server for resilience tests:
//! `DEMO_DELAY_MS` delays every response, and `DEMO_FAIL_STATUS` answers
//! every request with that status.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|e| match e {}).boxed()
}

/// What the server echoes of a request, as response headers.
fn seen_headers(req: &Request<Incoming>) -> Vec<(header::HeaderName, header::HeaderValue)> {
    let mut out = Vec::new();
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Ok(v) = header::HeaderValue::from_str(path) {
        out.push((header::HeaderName::from_static("x-seen-path"), v));
    }
    let host = req
        .headers()
        .get(header::HOST)
        .cloned()
        .or_else(|| req.uri().authority().and_then(|a| a.as_str().parse().ok()));
    if let Some(host) = host {
        out.push((header::HeaderName::from_static("x-seen-host"), host));
    }
    for (name, value) in req.headers() {
        if name.as_str().starts_with("x-") && !name.as_str().starts_with("x-seen-") {
            let echoed = format!("x-seen-{}", name.as_str());
            if let Ok(echoed) = header::HeaderName::from_bytes(echoed.as_bytes()) {
                out.push((echoed, value.clone()));
            }
        }
    }
    out
}

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn handle(name: String, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let seen = seen_headers(&req);
    let mut resp = match (req.method().as_str(), path.as_str()) {
        ("GET", "/") => Response::new(full(format!("hello from {name}\n"))),
        ("GET", "/reason") => {
            let mut resp = Response::new(full("a reason of its own\n"));
            resp.extensions_mut()
                .insert(hyper::ext::ReasonPhrase::from_static(b"Fine Indeed"));
            resp
        }
        // Refuses any upload at once, without reading it (so hyper sends no
        // `100 Continue`).
        (_, "/refuse") => Response::builder()
            .status(StatusCode::PAYLOAD_TOO_LARGE)
            .body(full("upload refused\n"))
            .unwrap_or_default(),
        ("POST" | "PUT", "/upload") => {
            let mut body = req.into_body();
            let mut total: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => total += frame.data_ref().map_or(0, |d| d.len() as u64),
                    Err(error) => {
                        eprintln!("demo http {name}: upload aborted after {total} bytes: {error}");
                        return Ok(Response::builder()
                            .status(400)
                            .body(full("upload aborted\n"))
                            .unwrap_or_default());
                    }
                }
            }
            Response::new(full(format!("received {total} bytes\n")))
        }
        ("GET", "/download") => {
            let mut left = query_u64(&req, "bytes").unwrap_or(1024);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::poll_fn(move |_| {
                if left == 0 {
                    return std::task::Poll::Ready(None);
                }
                let n = left.min(chunk.len() as u64) as usize;
                left -= n as u64;
                std::task::Poll::Ready(Some(Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    Frame::data(chunk.slice(..n)),
                )))
            });
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
        ("GET", "/ws") => websocket(&name, &mut req),
        // A chunked body that ends with trailers, declared in `Trailer`
        // (hyper's HTTP/1 writer sends only declared fields, and only to a
        // request that said `TE: trailers`).
        ("GET", "/trailers") => {
            let mut trailers = header::HeaderMap::new();
            trailers.insert("x-checksum", header::HeaderValue::from_static("abc123"));
            let frames = futures_util::stream::iter([
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from_static(
                    b"body before trailers\n",
                ))),
                Ok(Frame::trailers(trailers)),
            ]);
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(frames)));
            resp.headers_mut().insert(
                header::TRAILER,
                header::HeaderValue::from_static("x-checksum"),
            );
            resp
        }
        // Echoes the size of each request header, and sends back an
        // `x-fill` header of `fill` bytes: for header-limit tests.
        ("GET", "/headers") => {
            let sizes: Vec<String> = req
                .headers()
                .iter()
                .map(|(name, value)| format!("{name} {}", value.len()))
                .collect();
            let mut resp = Response::new(full(sizes.join("\n") + "\n"));
            if let Some(fill) = query_u64(&req, "fill")
                && let Ok(value) = header::HeaderValue::from_str(&"f".repeat(fill as usize))
            {
                resp.headers_mut().insert("x-fill", value);
            }
            resp
        }
        ("CONNECT", _) => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                }
            });
            Response::new(full(""))
        }
        ("GET", "/delay") => {
            tokio::time::sleep(Duration::from_millis(query_u64(&req, "ms").unwrap_or(100))).await;
            Response::new(full(format!("delayed hello from {name}\n")))
        }
        ("GET", p) if p.starts_with("/status/") => {
            let code = p
                .trim_start_matches("/status/")
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok());
            match code {
                Some(code) => Response::builder()
                    .status(code)
                    .body(full(format!("{code}\n")))
                    .unwrap_or_default(),
                None => Response::builder()
                    .status(400)
                    .body(full("bad status\n"))
                    .unwrap_or_default(),
            }
        }
        // Any other path is answered too, as an echo server would, so that
        // route tests can send anywhere.
        (method, other) => Response::new(full(format!("hello from {name}: {method} {other}\n"))),
    };
    if let Ok(v) = header::HeaderValue::from_str(&name) {
        resp.headers_mut().insert("x-served-by", v);
    }
    for (name, value) in seen {
        resp.headers_mut().append(name, value);
    }
    Ok(resp)
}

fn websocket(name: &str, req: &mut Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return Response::builder()
            .status(400)
            .body(full("not a websocket request\n"))
            .unwrap_or_default();
    };
    let upgrade = hyper::upgrade::on(req);
    let name = name.to_string();
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        let (mut tx, mut rx) = ws.split();
        while let Some(Ok(msg)) = rx.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
                break;
            }
        }
        eprintln!("demo http {name}: websocket closed");
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        )
        .body(full(""))
        .unwrap_or_default()
}

/// How the server misbehaves, from the environment.
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    delay: Option<Duration>,
    status: Option<StatusCode>,
}

impl Faults {
    fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Ok(Faults {
            delay: match var("DEMO_DELAY_MS") {
                Some(v) => Some(Duration::from_millis(
                    v.parse()
                        .map_err(|e| anyhow::anyhow!("DEMO_DELAY_MS={v:?}: {e}"))?,
                )),
                None => None,
            },
            status: match var("DEMO_FAIL_STATUS") {
                Some(v) => Some(
                    v.parse::<u16>()
                        .ok()
                        .and_then(|c| StatusCode::from_u16(c).ok())
                        .ok_or_else(|| anyhow::anyhow!("DEMO_FAIL_STATUS={v:?}: not a status"))?,
                ),
                None => None,
            },
        })
    }
}

async fn handle_with_faults(
    name: String,
    faults: Faults,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if let Some(delay) = faults.delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(status) = faults.status {
        let mut resp = Response::builder()
            .status(status)
            .body(full(format!("{status} from {name}\n")))
            .unwrap_or_default();
        if let Ok(v) = header::HeaderValue::from_str(&name) {
            resp.headers_mut().insert("x-served-by", v);
        }
        return Ok(resp);
    }
    handle(name, req).await
}

pub async fn serve(listener: TcpListener, name: String) -> anyhow::Result<()> {
    let faults = Faults::from_env()?;
    if faults.delay.is_some() || faults.status.is_some() {
        eprintln!("demo http {name}: faults {faults:?}");
    }
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                handle_with_faults(name.clone(), faults, req)
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}
