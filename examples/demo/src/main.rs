//! `weft-demo <http|grpc|banner|sink> <listen-addr> [name]`: runs one demo
//! workload until SIGTERM or SIGINT. `weft-demo get <host:port> <path>` is
//! a tiny HTTP client that prints the status and body (for tests that need
//! a client running as a particular user); `weft-demo load <host:port> ...`
//! a steady load that reports what answered (see `load.rs`); `weft-demo
//! talk <host:port> <line>` a client of the banner service: it waits for the
//! greeting, sends the line and prints both lines it got; `weft-demo probe
//! <host:port>...` one GET to each target at once (see `probe.rs`).

use anyhow::{Context, bail};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (kind, addr) = match (args.first(), args.get(1)) {
        (Some(k), Some(a)) => (k.as_str(), a.as_str()),
        _ => bail!(
            "usage: weft-demo <http|grpc|banner|sink> <listen-addr> [name] | weft-demo get <host:port> <path> | weft-demo talk <host:port> <line> | weft-demo load <host:port> [--rate N] [--duration 10s] | weft-demo probe <host:port>... [--timeout 3s]"
        ),
    };
    if kind == "get" {
        return get(addr, args.get(2).map_or("/", String::as_str)).await;
    }
    if kind == "talk" {
        return talk(addr, args.get(2).map_or("hello", String::as_str)).await;
    }
    if kind == "probe" {
        return weft_demo::probe::run(weft_demo::probe::ProbeArgs::parse(&args[1..])?).await;
    }
    if kind == "load" {
        return weft_demo::load::run(weft_demo::load::LoadArgs::parse(&args[1..])?).await;
    }
    let name = args.get(2).cloned().unwrap_or_else(|| kind.to_string());
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    eprintln!("weft-demo {kind} {name} listening on {addr}");
    let serve = async {
        match kind {
            "http" => weft_demo::http::serve(listener, name).await,
            "grpc" => weft_demo::grpc::serve(listener, name).await,
            "banner" => weft_demo::banner::serve(listener, name).await,
            "sink" => weft_demo::banner::sink(listener).await,
            other => bail!("unknown workload {other:?}; expected http, grpc, banner or sink"),
        }
    };
    // As a container's main process it is PID 1, which gets no default
    // signal handling: without this it would wait out the grace period.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = serve => result,
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// A server-speaks-first exchange: greeting, one line, its echo, `QUIT`.
async fn talk(addr: &str, line: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let greeting = lines.next_line().await?.context("no greeting")?;
    write.write_all(format!("{line}\r\n").as_bytes()).await?;
    let echo = lines.next_line().await?.context("no echo")?;
    write.write_all(b"QUIT\r\n").await?;
    println!("{}\n{}", greeting.trim_end(), echo.trim_end());
    Ok(())
}

async fn get(addr: &str, path: &str) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, addr)
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    println!(
        "{} {}",
        status.as_u16(),
        String::from_utf8_lossy(&body).trim_end()
    );
    Ok(())
}
