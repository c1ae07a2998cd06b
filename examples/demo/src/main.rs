//! `weft-demo <http|grpc|banner> <listen-addr> [name]`: runs one demo
//! workload until killed.

use anyhow::{Context, bail};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (kind, addr) = match (args.first(), args.get(1)) {
        (Some(k), Some(a)) => (k.as_str(), a.as_str()),
        _ => bail!("usage: weft-demo <http|grpc|banner> <listen-addr> [name]"),
    };
    let name = args.get(2).cloned().unwrap_or_else(|| kind.to_string());
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    eprintln!("weft-demo {kind} {name} listening on {addr}");
    match kind {
        "http" => weft_demo::http::serve(listener, name).await,
        "grpc" => weft_demo::grpc::serve(listener, name).await,
        "banner" => weft_demo::banner::serve(listener, name).await,
        other => bail!("unknown workload {other:?}; expected http, grpc or banner"),
    }
}
