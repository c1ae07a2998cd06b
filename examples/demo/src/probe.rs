//! `weft-demo probe <host:port>... [--timeout D]`: tries one HTTP GET on a
//! fresh connection to each target at once and prints a line per target,
//! `<host:port> ok` when the app answered 200, else `<host:port> fail
//! <why>`. The cluster's NetworkPolicy truth table runs it once per source
//! pod, so one `kubectl exec` probes every destination.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeArgs {
    pub targets: Vec<String>,
    pub timeout: Duration,
}

impl ProbeArgs {
    pub fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut parsed = ProbeArgs {
            targets: Vec::new(),
            timeout: Duration::from_secs(3),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if arg == "--timeout" {
                let value = it.next().context("--timeout needs a value")?;
                parsed.timeout = crate::load::duration(value)?;
            } else if arg.starts_with("--") {
                bail!("unknown argument {arg:?}");
            } else {
                parsed.targets.push(arg.clone());
            }
        }
        if parsed.targets.is_empty() {
            bail!("probe needs at least one <host:port>");
        }
        Ok(parsed)
    }
}

/// What one target answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed(String),
}

pub async fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let probes = args.targets.iter().map(|target| {
        let target = target.clone();
        async move {
            let outcome = probe(&target, args.timeout).await;
            (target, outcome)
        }
    });
    for (target, outcome) in futures_util::future::join_all(probes).await {
        match outcome {
            Outcome::Ok => println!("{target} ok"),
            Outcome::Failed(why) => println!("{target} fail {why}"),
        }
    }
    Ok(())
}

/// One GET on a connection of its own, so that what decides is the
/// connection's policy, not one an earlier probe opened.
pub async fn probe(target: &str, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, get(target)).await {
        Err(_) => Outcome::Failed("timeout".into()),
        Ok(Err(e)) => Outcome::Failed(format!("{e:#}").replace('\n', " ")),
        Ok(Ok(200)) => Outcome::Ok,
        Ok(Ok(status)) => Outcome::Failed(format!("status {status}")),
    }
}

async fn get(target: &str) -> anyhow::Result<u16> {
    let stream = tokio::net::TcpStream::connect(target)
        .await
        .context("connect")?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header(http::header::HOST, target)
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await.context("request")?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.context("body")?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets_and_timeout() {
        let args: Vec<String> = ["10.0.0.1:8080", "--timeout", "500ms", "10.0.0.2:8081"]
            .map(String::from)
            .into();
        let parsed = ProbeArgs::parse(&args).unwrap();
        assert_eq!(parsed.targets, ["10.0.0.1:8080", "10.0.0.2:8081"]);
        assert_eq!(parsed.timeout, Duration::from_millis(500));
        assert!(ProbeArgs::parse(&[]).is_err());
        assert!(ProbeArgs::parse(&["--rate".into(), "1".into()]).is_err());
    }

    #[tokio::test]
    async fn tells_an_answer_from_a_refusal() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().to_string();
        tokio::spawn(crate::http::serve(listener, "probe".into()));
        assert_eq!(probe(&open, Duration::from_secs(2)).await, Outcome::Ok);
        // A port nobody listens on: the bound-then-dropped listener's.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        assert!(matches!(
            probe(&closed_addr, Duration::from_secs(2)).await,
            Outcome::Failed(_)
        ));
    }
}
