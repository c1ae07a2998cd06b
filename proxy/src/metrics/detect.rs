//! Protocol detection metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::{Direction, DirectionLabels, label_values};
use crate::detect::Protocol;

label_values! {
    /// How a connection's protocol was decided.
    pub enum Detected {
        Http1 => "http1",
        Http2 => "http2",
        Tls => "tls",
        /// Nothing recognisable (or nothing within the timeout).
        Opaque => "opaque",
        /// Not looked at: the port is opaque by configuration.
        OpaquePort => "opaque_port",
    }
}

impl From<Protocol> for Detected {
    fn from(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Http1 => Detected::Http1,
            Protocol::Http2 => Detected::Http2,
            Protocol::Tls => Detected::Tls,
            Protocol::Opaque => Detected::Opaque,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DetectLabels {
    pub direction: Direction,
    pub protocol: Detected,
}

/// The port names what to mark opaque.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TimeoutLabels {
    pub direction: Direction,
    pub port: u16,
}

#[derive(Debug)]
pub struct DetectMetrics {
    pub outcomes: Family<DetectLabels, Counter>,
    pub timeouts: Family<DirectionLabels, Counter>,
    pub timeouts_by_port: Family<TimeoutLabels, Counter>,
    pub late: Family<DirectionLabels, Counter>,
}

impl DetectMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = DetectMetrics {
            outcomes: Family::default(),
            timeouts: Family::default(),
            timeouts_by_port: Family::default(),
            late: Family::default(),
        };
        registry.register(
            "protocol_detect",
            "Connections by detected protocol",
            m.outcomes.clone(),
        );
        registry.register(
            "protocol_detect_timeout",
            "Connections whose client sent nothing recognisable within the detection timeout \
             and whose server then spoke first, or that stalled inside an HTTP prefix",
            m.timeouts.clone(),
        );
        // Beside the total, which starts at zero for dashboards: the ports
        // are not known in advance.
        registry.register(
            "protocol_detect_timeout_by_port",
            "Detection timeouts by destination port",
            m.timeouts_by_port.clone(),
        );
        registry.register(
            "protocol_detect_late_client",
            "Connections whose client sent nothing within the detection timeout and then \
             spoke before the server; detected from those bytes",
            m.late.clone(),
        );
        for &direction in Direction::ALL {
            let _ = m.timeouts.get_or_create(&DirectionLabels { direction });
            let _ = m.late.get_or_create(&DirectionLabels { direction });
            for &protocol in Detected::ALL {
                let _ = m.outcomes.get_or_create(&DetectLabels {
                    direction,
                    protocol,
                });
            }
        }
        m
    }

    pub fn detected(&self, direction: Direction, protocol: Detected) {
        self.outcomes
            .get_or_create(&DetectLabels {
                direction,
                protocol,
            })
            .inc();
    }

    /// Counts a client that outlasted the timeout and then spoke first.
    pub fn spoke_late(&self, direction: Direction) {
        self.late
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }

    /// Counts a timeout on `port`; returns whether it is the port's first.
    pub fn timed_out(&self, direction: Direction, port: u16) -> bool {
        self.timeouts
            .get_or_create(&DirectionLabels { direction })
            .inc();
        self.timeouts_by_port
            .get_or_create(&TimeoutLabels { direction, port })
            .inc()
            == 0
    }
}
