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
