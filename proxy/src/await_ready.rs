//! `weft-proxy await-ready`: waits until the proxy in the same pod answers
//! `/ready`. The injector's classic sidecar mode runs it as the proxy
//! container's `postStart` hook: kubelet starts the app's containers only
//! after the hook returns, so an app never starts before its proxy.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Arguments: `[--timeout DURATION] [--addr HOST:PORT]`. The address
/// defaults to loopback on `WEFT_ADMIN_ADDR`'s port.
#[derive(Debug, PartialEq, Eq)]
pub struct AwaitArgs {
    pub addr: SocketAddr,
    pub timeout: Duration,
}

/// Why `await-ready` could not run, or gave up.
#[derive(Debug, thiserror::Error)]
pub enum AwaitError {
    #[error("{var}={0:?} is not host:port", var = weft_api::proxy_env::ADMIN_ADDR.name)]
    AdminAddr(String),
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("--addr {0:?} is not host:port")]
    Addr(String),
    #[error("--timeout {value:?}: {reason}")]
    Timeout {
        value: String,
        reason: crate::config::Invalid,
    },
    #[error("unknown argument {0:?}")]
    UnknownArgument(String),
    #[error("proxy at {addr} not ready after {timeout:?}: {last}")]
    NotReady {
        addr: SocketAddr,
        timeout: Duration,
        last: String,
    },
}

/// Why one `/ready` probe got no 200.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("no answer within 1s")]
    NoAnswer,
}

impl AwaitArgs {
    pub fn parse(args: &[String], admin_addr: Option<&str>) -> Result<Self, AwaitError> {
        let port = match admin_addr {
            Some(v) => v
                .trim()
                .parse::<SocketAddr>()
                .map_err(|_| AwaitError::AdminAddr(v.to_string()))?
                .port(),
            None => weft_api::ports::ADMIN,
        };
        let mut parsed = AwaitArgs {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            timeout: Duration::from_secs(120),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| AwaitError::MissingValue(flag.clone()))?;
            match flag.as_str() {
                "--timeout" => {
                    parsed.timeout = crate::config::parse_duration(value).map_err(|reason| {
                        AwaitError::Timeout {
                            value: value.clone(),
                            reason,
                        }
                    })?
                }
                "--addr" => {
                    parsed.addr = value.parse().map_err(|_| AwaitError::Addr(value.clone()))?
                }
                other => return Err(AwaitError::UnknownArgument(other.to_string())),
            }
        }
        Ok(parsed)
    }
}

/// Polls `/ready` every 100 ms until it answers 200 or `timeout` passes.
pub async fn await_ready(args: &AwaitArgs) -> Result<Duration, AwaitError> {
    let started = Instant::now();
    let mut last = String::from("no answer yet");
    while started.elapsed() < args.timeout {
        match probe(args.addr).await {
            Ok(status) if status == http::StatusCode::OK => return Ok(started.elapsed()),
            Ok(status) => last = format!("/ready answered {status}"),
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(AwaitError::NotReady {
        addr: args.addr,
        timeout: args.timeout,
        last,
    })
}

async fn probe(addr: SocketAddr) -> Result<http::StatusCode, ProbeError> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(ProbeError::Connect)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = http::Request::new(Empty::<Bytes>::new());
        *req.uri_mut() = http::Uri::from_static("/ready");
        if let Ok(host) = http::HeaderValue::from_str(&addr.to_string()) {
            req.headers_mut().insert(http::header::HOST, host);
        }
        let resp = sender.send_request(req).await?;
        Ok(resp.status())
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .unwrap_or(Err(ProbeError::NoAnswer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_flags_and_admin_port() {
        let a = AwaitArgs::parse(&args(&[]), Some("0.0.0.0:7000")).unwrap();
        assert_eq!(a.addr, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(a.timeout, Duration::from_secs(120));
        let a =
            AwaitArgs::parse(&args(&["--timeout", "5s", "--addr", "10.0.0.1:1"]), None).unwrap();
        assert_eq!(a.addr, "10.0.0.1:1".parse().unwrap());
        assert_eq!(a.timeout, Duration::from_secs(5));
        assert!(AwaitArgs::parse(&args(&["--timeout"]), None).is_err());
        assert!(AwaitArgs::parse(&args(&["--wait", "1s"]), None).is_err());
        assert!(AwaitArgs::parse(&args(&[]), Some("nope")).is_err());
    }

    #[tokio::test]
    async fn times_out_when_nothing_answers() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let error = await_ready(&AwaitArgs {
            addr,
            timeout: Duration::from_millis(300),
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(error.contains("not ready after"), "{error}");
        assert!(error.contains("cannot connect"), "{error}");
    }
}
