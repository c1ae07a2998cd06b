//! A line-based TCP service where the server speaks first: on connect it
//! sends a greeting, then answers each line with `echo: <line>`; `QUIT`
//! closes. A client that waits for the greeting before writing is exactly
//! the case that breaks naive protocol detection.

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// Greeting sent on connect.
pub fn greeting(name: &str) -> String {
    format!("220 {name} ready\r\n")
}

pub async fn serve(listener: TcpListener, name: String) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            if write.write_all(greeting(&name).as_bytes()).await.is_err() {
                return;
            }
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim() == "QUIT" {
                    let _ = write.write_all(b"221 bye\r\n").await;
                    break;
                }
                if write
                    .write_all(format!("echo: {line}\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
}

/// A TCP sink: reads until the client half-closes, then answers
/// `got <n> bytes` and closes. It only works if every hop passes the
/// half-close through.
pub async fn sink(listener: TcpListener) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    loop {
        let (mut stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0usize;
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => total += n,
                    Err(_) => return,
                }
            }
            let _ = stream
                .write_all(format!("got {total} bytes\n").as_bytes())
                .await;
            let _ = stream.shutdown().await;
        });
    }
}
