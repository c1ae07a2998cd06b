//! Connection metrics: `tcp_*`, one guard per connection.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::{Direction, Metrics, PeerLabels, label_values};

label_values! {
    /// Which side of the proxy a connection is on.
    pub enum Side {
        /// The accepted connection.
        Src => "src",
        /// The connection the proxy opened.
        Dst => "dst",
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: Direction,
    pub peer: Side,
    #[prometheus(flatten)]
    pub remote: PeerLabels,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TcpCloseLabels {
    #[prometheus(flatten)]
    pub connection: TcpLabels,
    /// Empty for a clean close, else the OS error name (`ECONNRESET`, ...).
    pub errno: String,
}

#[derive(Debug)]
pub struct TcpMetrics {
    pub open: Family<TcpLabels, Counter>,
    pub open_connections: Family<TcpLabels, Gauge>,
    pub close: Family<TcpCloseLabels, Counter>,
    pub read_bytes: Family<TcpLabels, Counter>,
    pub write_bytes: Family<TcpLabels, Counter>,
    pub duration_ms: Family<TcpLabels, Histogram>,
}

/// Connection lifetimes, 1 ms to about 3 hours.
fn duration_buckets() -> impl Iterator<Item = f64> {
    [
        1.0,
        10.0,
        100.0,
        1000.0,
        10_000.0,
        100_000.0,
        1_000_000.0,
        10_000_000.0,
    ]
    .into_iter()
}

impl TcpMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = TcpMetrics {
            open: Family::default(),
            open_connections: Family::default(),
            close: Family::default(),
            read_bytes: Family::default(),
            write_bytes: Family::default(),
            duration_ms: Family::new_with_constructor(|| Histogram::new(duration_buckets())),
        };
        // prometheus-client appends `_total` to counters.
        registry.register("tcp_open", "TCP connections opened", m.open.clone());
        registry.register(
            "tcp_open_connections",
            "TCP connections currently open",
            m.open_connections.clone(),
        );
        registry.register("tcp_close", "TCP connections closed", m.close.clone());
        registry.register(
            "tcp_read_bytes",
            "Bytes read from peers",
            m.read_bytes.clone(),
        );
        registry.register(
            "tcp_write_bytes",
            "Bytes written to peers",
            m.write_bytes.clone(),
        );
        registry.register(
            "tcp_connection_duration_ms",
            "Lifetime of closed TCP connections",
            m.duration_ms.clone(),
        );
        m
    }
}

/// Tracks one TCP connection's open/close metrics; counts the close when dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    metrics: Arc<Metrics>,
    labels: TcpLabels,
    opened: Instant,
    errno: String,
}

impl ConnectionGuard {
    pub fn open(
        metrics: &Arc<Metrics>,
        direction: Direction,
        peer: Side,
        remote: PeerLabels,
    ) -> Self {
        let labels = TcpLabels {
            direction,
            peer,
            remote,
        };
        metrics.tcp.open.get_or_create(&labels).inc();
        metrics.tcp.open_connections.get_or_create(&labels).inc();
        ConnectionGuard {
            metrics: metrics.clone(),
            labels,
            opened: Instant::now(),
            errno: String::new(),
        }
    }

    pub fn labels(&self) -> &TcpLabels {
        &self.labels
    }

    /// Records why the connection failed, for `tcp_close_total{errno}`.
    pub fn set_error(&mut self, error: &std::io::Error) {
        self.errno = error
            .raw_os_error()
            .map(|code| format!("{:?}", nix::errno::Errno::from_raw(code)))
            .unwrap_or_default();
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let tcp = &self.metrics.tcp;
        tcp.open_connections.get_or_create(&self.labels).dec();
        tcp.close
            .get_or_create(&TcpCloseLabels {
                connection: self.labels.clone(),
                errno: std::mem::take(&mut self.errno),
            })
            .inc();
        tcp.duration_ms
            .get_or_create(&self.labels)
            .observe(self.opened.elapsed().as_secs_f64() * 1000.0);
    }
}
