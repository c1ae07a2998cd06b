//! A reader that hands out the fuzzer's bytes in the pieces it chose, as
//! a client whose segments arrive one by one, then end of stream.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

pub struct Chunks(VecDeque<Vec<u8>>);

impl Chunks {
    /// `bytes` cut at the offsets `cuts` names (each taken modulo the
    /// length, in order).
    pub fn new(bytes: &[u8], cuts: &[u8]) -> Self {
        let mut offsets: Vec<usize> = cuts
            .iter()
            .map(|c| usize::from(*c) % (bytes.len() + 1))
            .collect();
        offsets.push(bytes.len());
        offsets.sort_unstable();
        let mut pieces = VecDeque::new();
        let mut start = 0;
        for end in offsets {
            if end > start {
                pieces.push_back(bytes[start..end].to_vec());
                start = end;
            }
        }
        Chunks(pieces)
    }

    /// The offsets at which pieces end.
    #[allow(dead_code, reason = "each target compiles this module; not all ask")]
    pub fn boundaries(&self) -> Vec<usize> {
        let mut end = 0;
        self.0
            .iter()
            .map(|p| {
                end += p.len();
                end
            })
            .collect()
    }
}

impl AsyncRead for Chunks {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(mut piece) = self.0.pop_front() {
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
            if n < piece.len() {
                self.0.push_front(piece.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}
