//! What crossed a link, read from a tcpdump capture: the TCP byte streams
//! in it, and whether each one is TLS records from its first byte to its
//! last. That is the evidence that meshed traffic is encrypted on the wire
//! as a whole, not just that some marker string is missing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};

use crate::{Mesh, Pod};

/// tcpdump writing every TCP packet on one interface to a file.
#[derive(Debug)]
pub struct Capture {
    pid: u32,
    pub path: PathBuf,
}

impl Capture {
    /// Starts tcpdump on `interface` in `netns` (a node, as a [`Pod`]) and
    /// waits until it listens.
    pub async fn start(mesh: &Mesh, netns: &Pod, interface: &str) -> anyhow::Result<Capture> {
        let label = format!("tcpdump-{interface}");
        let path = mesh.dir.join(format!("{}-{interface}.pcap", netns.name));
        let pid = mesh.spawn(
            netns,
            &label,
            Path::new("/usr/bin/tcpdump"),
            &[
                "-Z",
                "root",
                // Each packet as it comes: without it, packets wait in the
                // kernel's ring for a block to fill, and SIGTERM loses them.
                "--immediate-mode",
                "-i",
                interface,
                "-U",
                "-s",
                "0",
                "-w",
                &path.to_string_lossy(),
                "tcp",
            ],
            &[],
        )?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !mesh.log_of(netns, &label).contains("listening on") {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "tcpdump did not start: {}",
                mesh.log_of(netns, &label)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Capture { pid, path })
    }

    /// Stops tcpdump (it flushes on SIGTERM) and reads what it captured.
    pub async fn finish(&self, mesh: &Mesh) -> anyhow::Result<Vec<Stream>> {
        mesh.terminate(self.pid)?;
        mesh.wait_exit(self.pid, Duration::from_secs(10)).await?;
        tcp_streams(&self.path)
    }
}

/// One direction of a TCP connection, as captured.
#[derive(Debug, Clone)]
pub struct Stream {
    pub from: SocketAddr,
    pub to: SocketAddr,
    /// The payload in sequence order, retransmissions removed.
    pub bytes: Vec<u8>,
    /// Whether the capture saw the connection open (a SYN), so `bytes`
    /// starts at its first byte.
    pub from_start: bool,
    /// Whether a segment was missing from the capture; `bytes` stops there.
    pub gap: bool,
}

#[derive(Debug)]
struct Flow {
    stream: Stream,
    next_seq: Option<u32>,
}

/// The TCP streams of an Ethernet capture (`tcpdump -w` on a veth or
/// bridge), in the order they first appear.
pub fn tcp_streams(pcap: &Path) -> anyhow::Result<Vec<Stream>> {
    let file = std::fs::File::open(pcap).with_context(|| format!("open {}", pcap.display()))?;
    let mut reader = pcap_file::pcap::PcapReader::new(file)
        .with_context(|| format!("{} is not a pcap file", pcap.display()))?;
    let mut order = Vec::new();
    let mut flows: HashMap<(SocketAddr, SocketAddr), Flow> = HashMap::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet?;
        let Ok(sliced) = SlicedPacket::from_ethernet(&packet.data) else {
            continue;
        };
        let (src, dst): (IpAddr, IpAddr) = match &sliced.net {
            Some(NetSlice::Ipv4(ip)) => (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            ),
            Some(NetSlice::Ipv6(ip)) => (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            ),
            _ => continue,
        };
        let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else {
            continue;
        };
        let key = (
            SocketAddr::new(src, tcp.source_port()),
            SocketAddr::new(dst, tcp.destination_port()),
        );
        let flow = flows.entry(key).or_insert_with(|| {
            order.push(key);
            Flow {
                stream: Stream {
                    from: key.0,
                    to: key.1,
                    bytes: Vec::new(),
                    from_start: tcp.syn(),
                    gap: false,
                },
                next_seq: None,
            }
        });
        let seq = tcp.sequence_number();
        if tcp.syn() {
            flow.next_seq = Some(seq.wrapping_add(1));
            continue;
        }
        let payload = tcp.payload();
        if payload.is_empty() || flow.stream.gap {
            continue;
        }
        let next = *flow.next_seq.get_or_insert(seq);
        // Offset of this segment past what we have (wrapping arithmetic).
        let ahead = seq.wrapping_sub(next) as i32;
        if ahead > 0 {
            flow.stream.gap = true;
            continue;
        }
        let skip = ahead.unsigned_abs() as usize;
        if skip < payload.len() {
            flow.stream.bytes.extend_from_slice(&payload[skip..]);
            flow.next_seq = Some(seq.wrapping_add(payload.len() as u32));
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|key| flows.remove(&key).map(|f| f.stream))
        .collect())
}

/// Walks `bytes` as TLS records (type, version 3.x, length, body) and
/// returns how many it found; the last may be cut off by the end of the
/// capture. Fails at the first bytes that are not a record header.
pub fn tls_records(bytes: &[u8]) -> Result<usize, String> {
    let mut at = 0;
    let mut records = 0;
    while at < bytes.len() {
        let header = &bytes[at..bytes.len().min(at + 5)];
        let content_type = header[0];
        if !(20..=23).contains(&content_type) {
            return Err(format!(
                "byte {at} is {content_type:#04x}, not a TLS record type"
            ));
        }
        if header.len() < 5 {
            return Ok(records + 1);
        }
        if header[1] != 3 {
            return Err(format!(
                "record at byte {at} has version {:?}",
                &header[1..3]
            ));
        }
        let length = u16::from_be_bytes([header[3], header[4]]) as usize;
        // RFC 8446: ciphertext is at most 2^14 + 256 bytes.
        if length > (1 << 14) + 256 {
            return Err(format!("record at byte {at} claims {length} bytes"));
        }
        at += 5 + length;
        records += 1;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A capture of `segments`: `(from, to, seq, syn, payload)`.
    fn capture(segments: &[(u16, u16, u32, bool, &[u8])]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let header = pcap_file::pcap::PcapHeader {
            datalink: pcap_file::DataLink::ETHERNET,
            ..Default::default()
        };
        let mut writer =
            pcap_file::pcap::PcapWriter::with_header(file.reopen().unwrap(), header).unwrap();
        for (from, to, seq, syn, payload) in segments {
            let builder = etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
                .ipv4([10, 42, 1, 3], [10, 42, 0, 2], 64)
                .tcp(*from, *to, *seq, 1000);
            let builder = if *syn { builder.syn() } else { builder };
            let mut frame = Vec::new();
            builder.write(&mut frame, payload).unwrap();
            writer
                .write_packet(&pcap_file::pcap::PcapPacket::new(
                    Duration::ZERO,
                    frame.len() as u32,
                    &frame,
                ))
                .unwrap();
        }
        file
    }

    #[test]
    fn streams_are_reassembled_without_retransmissions_and_stop_at_gaps() {
        let file = capture(&[
            (40000, 6143, 99, true, b""),
            (40000, 6143, 100, false, b"abc"),
            (40000, 6143, 100, false, b"abc"),
            (40000, 6143, 101, false, b"bcdef"),
            (40001, 80, 500, false, b"late"),
            (40001, 80, 510, false, b"after a gap"),
        ]);
        let streams = tcp_streams(file.path()).unwrap();
        assert_eq!(streams.len(), 2);
        assert_eq!(streams[0].bytes, b"abcdef");
        assert!(streams[0].from_start && !streams[0].gap);
        assert_eq!(streams[0].to, "10.42.0.2:6143".parse().unwrap());
        assert_eq!(streams[1].bytes, b"late");
        assert!(!streams[1].from_start && streams[1].gap);
    }

    #[test]
    fn tls_records_are_counted_and_plaintext_is_refused() {
        let mut bytes = vec![22, 3, 1, 0, 2, 1, 2];
        bytes.extend([23, 3, 3, 0, 3, 9, 9, 9]);
        assert_eq!(tls_records(&bytes), Ok(2));
        // Cut off mid-record by the end of a capture.
        assert_eq!(tls_records(&bytes[..9]), Ok(2));
        assert!(tls_records(b"GET / HTTP/1.1\r\n").is_err());
        assert!(tls_records(&[22, 2, 0, 0, 0]).is_err());
        assert!(tls_records(&[23, 3, 3, 0xff, 0xff]).is_err());
    }
}
