//! `weft-demo load`: a steady HTTP (or, with `--grpc`, gRPC) load for the
//! demo and the cluster tests. It sends requests at a fixed rate over
//! kept-alive connections and prints, each second and at the end, one JSON
//! line counting answers by backend (the demo servers answer "hello from
//! <name>" and name themselves in gRPC replies) and failures by reason.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, Clone, PartialEq)]
pub struct LoadArgs {
    pub target: String,
    pub path: String,
    pub rate: u32,
    pub duration: Duration,
    pub timeout: Duration,
    /// Unary `Echo/Say` calls instead of HTTP GETs.
    pub grpc: bool,
}

impl LoadArgs {
    /// `<host:port> [--path P] [--rate PER_SECOND] [--duration D] [--timeout D] [--grpc]`;
    /// durations like `500ms` or `10s`. With `--grpc`, the path (without
    /// its leading `/`) is the message sent.
    pub fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut it = args.iter();
        let target = it.next().context("load needs <host:port>")?.clone();
        let mut parsed = LoadArgs {
            target,
            path: "/".into(),
            rate: 50,
            duration: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            grpc: false,
        };
        while let Some(flag) = it.next() {
            if flag == "--grpc" {
                parsed.grpc = true;
                continue;
            }
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--path" => parsed.path = value.clone(),
                "--rate" => parsed.rate = value.parse().context("--rate")?,
                "--duration" => parsed.duration = duration(value)?,
                "--timeout" => parsed.timeout = duration(value)?,
                other => bail!("unknown argument {other:?}"),
            }
        }
        if parsed.rate == 0 {
            bail!("--rate must be at least 1");
        }
        Ok(parsed)
    }
}

pub(crate) fn duration(v: &str) -> anyhow::Result<Duration> {
    let parsed = if let Some(ms) = v.strip_suffix("ms") {
        ms.parse().map(Duration::from_millis)
    } else if let Some(s) = v.strip_suffix('s') {
        s.parse().map(Duration::from_secs)
    } else {
        v.parse().map(Duration::from_secs)
    };
    parsed.with_context(|| format!("{v:?} is not a duration like 500ms or 10s"))
}

#[derive(Default)]
struct Counts {
    ok: BTreeMap<String, u64>,
    failed: BTreeMap<String, u64>,
}

impl Counts {
    fn line(&self, second: Option<u64>) -> String {
        let map = |m: &BTreeMap<String, u64>| {
            let items: Vec<String> = m.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
            format!("{{{}}}", items.join(","))
        };
        let total = |m: &BTreeMap<String, u64>| m.values().sum::<u64>();
        let at = second.map_or("\"summary\":true".to_string(), |s| {
            format!("\"second\":{s}")
        });
        format!(
            "{{{at},\"ok\":{},\"failed\":{},\"by_backend\":{},\"failures\":{}}}",
            total(&self.ok),
            total(&self.failed),
            map(&self.ok),
            map(&self.failed)
        )
    }
}

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http();
    let uri: http::Uri = format!("http://{}{}", args.target, args.path)
        .parse()
        .context("target")?;
    let grpc = if args.grpc {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", args.target))
            .context("target")?
            .connect_lazy();
        Some(crate::proto::echo_client::EchoClient::new(channel))
    } else {
        None
    };
    let window = Arc::new(Mutex::new(Counts::default()));
    let total = Arc::new(Mutex::new(Counts::default()));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / args.rate);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut second = 0;
    let mut tasks = tokio::task::JoinSet::new();
    while started.elapsed() < args.duration {
        ticker.tick().await;
        let (client, uri, task_window, task_total) =
            (client.clone(), uri.clone(), window.clone(), total.clone());
        let grpc = grpc.clone();
        let timeout = args.timeout;
        tasks.spawn(async move {
            let result = tokio::time::timeout(timeout, async {
                if let Some(mut grpc) = grpc {
                    let message = match uri.path().trim_start_matches('/') {
                        "" => "load".to_string(),
                        path => path.to_string(),
                    };
                    let reply = grpc
                        .say(crate::proto::EchoRequest { message, count: 0 })
                        .await
                        .map_err(|status| format!("grpc {:?}", status.code()))?;
                    return Ok(reply.into_inner().served_by);
                }
                let resp = client.get(uri).await.map_err(|e| format!("request: {e}"))?;
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("body: {e}"))?
                    .to_bytes();
                let text = String::from_utf8_lossy(&body);
                let backend = text.split_whitespace().last().unwrap_or("").to_string();
                if status.is_success() {
                    Ok(backend)
                } else {
                    Err(format!("status {}", status.as_u16()))
                }
            })
            .await
            .unwrap_or_else(|_| Err("timeout".into()));
            for counts in [&task_window, &task_total] {
                let mut c = counts.lock().unwrap();
                match &result {
                    Ok(backend) => *c.ok.entry(backend.clone()).or_default() += 1,
                    Err(reason) => *c.failed.entry(reason.clone()).or_default() += 1,
                }
            }
        });
        while tasks.try_join_next().is_some() {}
        if started.elapsed() >= Duration::from_secs(second + 1) {
            let counts = std::mem::take(&mut *window.lock().unwrap());
            println!("{}", counts.line(Some(second)));
            second += 1;
        }
    }
    while tasks.join_next().await.is_some() {}
    println!("{}", window.lock().unwrap().line(Some(second)));
    println!("{}", total.lock().unwrap().line(None));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let args: Vec<String> = ["10.0.0.1:80", "--rate", "20", "--duration", "1500ms"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let parsed = LoadArgs::parse(&args).unwrap();
        assert_eq!(parsed.rate, 20);
        assert_eq!(parsed.duration, Duration::from_millis(1500));
        assert!(LoadArgs::parse(&[]).is_err());
        assert!(LoadArgs::parse(&["x:1".into(), "--rate".into(), "0".into()]).is_err());
        assert!(LoadArgs::parse(&["x:1".into(), "--frob".into(), "1".into()]).is_err());
        assert!(
            LoadArgs::parse(&["x:1".into(), "--grpc".into()])
                .unwrap()
                .grpc
        );
    }

    #[test]
    fn lines_are_json_shaped() {
        let mut c = Counts::default();
        c.ok.insert("web-v1".into(), 3);
        c.failed.insert("timeout".into(), 1);
        assert_eq!(
            c.line(Some(2)),
            r#"{"second":2,"ok":3,"failed":1,"by_backend":{"web-v1":3},"failures":{"timeout":1}}"#
        );
        assert!(c.line(None).starts_with(r#"{"summary":true,"#));
    }
}
