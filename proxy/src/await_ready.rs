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

impl AwaitArgs {
    pub fn parse(args: &[String], admin_addr: Option<&str>) -> Result<Self, String> {
        let port = match admin_addr {
            Some(v) => v
                .trim()
                .parse::<SocketAddr>()
                .map_err(|_| {
                    format!(
                        "{}={v:?} is not host:port",
                        weft_api::proxy_env::ADMIN_ADDR.name
                    )
                })?
                .port(),
            None => weft_api::ports::ADMIN,
        };
        let mut parsed = AwaitArgs {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            timeout: Duration::from_secs(120),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--timeout" => parsed.timeout = crate::config::parse_duration(value)?,
                "--addr" => {
                    parsed.addr = value
                        .parse()
                        .map_err(|_| format!("--addr {value:?} is not host:port"))?
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(parsed)
    }
}

/// Polls `/ready` every 100 ms until it answers 200 or `timeout` passes.
pub async fn await_ready(args: &AwaitArgs) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last = String::from("no answer yet");
    while started.elapsed() < args.timeout {
        match probe(args.addr).await {
            Ok(status) if status == http::StatusCode::OK => return Ok(started.elapsed()),
            Ok(status) => last = format!("/ready answered {status}"),
            Err(error) => last = error,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "proxy at {} not ready after {:?}: {last}",
        args.addr, args.timeout
    ))
}

async fn probe(addr: SocketAddr) -> Result<http::StatusCode, String> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get("/ready")
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        Ok(resp.status())
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .unwrap_or_else(|_| Err("no answer within 1s".into()))
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
        .unwrap_err();
        assert!(error.contains("not ready after"), "{error}");
        assert!(error.contains("cannot connect"), "{error}");
    }
}
