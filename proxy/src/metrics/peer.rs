//! Who is at the other end of a hop, as labels shared by the connection
//! and request families.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};

/// The destination of an outbound hop, as discovery described its
/// endpoint: `dst_namespace`, `dst_service`, `dst_workload`, `dst_pod`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DstLabels {
    pub namespace: Arc<String>,
    pub service: Arc<String>,
    pub workload: Arc<String>,
    pub pod: Arc<String>,
}

/// Absent for hops discovery said nothing about (inbound, unknown
/// destinations), so those series carry no `dst_*` labels at all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Dst(pub Option<Arc<DstLabels>>);

impl EncodeLabelSet for Dst {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let Some(dst) = &self.0 else {
            return Ok(());
        };
        [
            ("dst_namespace", dst.namespace.as_str()),
            ("dst_service", dst.service.as_str()),
            ("dst_workload", dst.workload.as_str()),
            ("dst_pod", dst.pod.as_str()),
        ]
        .encode(encoder)
    }
}

/// Whether the hop is mesh mTLS (`tls`), the other proxy's identity (the
/// client's on inbound connections, the server's on outbound ones), and on
/// outbound hops what discovery said the endpoint is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PeerLabels {
    pub tls: bool,
    pub client_id: Option<Arc<String>>,
    pub server_id: Option<Arc<String>>,
    #[prometheus(flatten)]
    pub dst: Dst,
}

impl PeerLabels {
    pub fn plain() -> Self {
        PeerLabels::default()
    }

    pub fn client(id: Arc<String>) -> Self {
        PeerLabels {
            tls: true,
            client_id: Some(id),
            ..Default::default()
        }
    }

    pub fn server(id: Arc<String>) -> Self {
        PeerLabels {
            tls: true,
            server_id: Some(id),
            ..Default::default()
        }
    }

    pub fn with_dst(mut self, dst: Dst) -> Self {
        self.dst = dst;
        self
    }
}
