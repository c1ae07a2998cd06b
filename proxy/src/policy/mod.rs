//! NetworkPolicy, enforced in the proxy with the peer's mTLS identity.
//!
//! The controller resolves the pod's policies ([`rules`] compiles them);
//! the proxy checks each connection once, when it knows the peer and the
//! app's port: inbound after the mesh handshake (or, for plaintext, from
//! the source address), outbound before connecting to an endpoint. A
//! refused connection is closed, as a CNI would drop it. A decision is
//! made per connection, so a changed policy applies to new connections
//! and established ones run on (as with conntrack in most CNIs).
//!
//! Fail closed: a proxy that enforces policy refuses everything until
//! the pod's first policy arrives, and keeps the last one it got while
//! the controller is away.

pub(crate) mod rules;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use weft_api::identity::SpiffeId;

use crate::metrics::policy::{DenialLabels, Enforcement};
use crate::metrics::{Direction, Metrics};
pub(crate) use rules::Way;
use rules::{Decision, Denial, Rules};

/// How often one kind of denial is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum State {
    /// No policy applies: the proxy has no pod name or no controller.
    Off,
    /// Enforcing, but the pod's policy has not arrived: refuse all.
    Pending,
    Known(Rules),
}

/// A kind of denial, for rate-limiting its log lines.
type DenialKind = (Way, rules::Reason, Arc<str>);

/// The pod's policy, shared by every connection.
#[derive(Debug)]
pub struct Policy {
    state: ArcSwap<State>,
    ready: tokio::sync::watch::Sender<bool>,
    /// The pod's node, always allowed both ways (the API's rule: kubelet
    /// probes must reach an isolated pod).
    host: Option<std::net::IpAddr>,
    metrics: Arc<Metrics>,
    /// When each kind of denial was last logged, and how many since.
    logged: Mutex<HashMap<DenialKind, (Instant, u64)>>,
}

impl Policy {
    /// No policy: everything passes.
    pub fn off(metrics: Arc<Metrics>) -> Arc<Self> {
        metrics.policy.known.set(1);
        Self::with(State::Off, true, None, metrics)
    }

    /// Follows pod `namespace/pod`'s policy from the controller.
    pub fn follow(
        channel: tonic::transport::Channel,
        namespace: String,
        pod: String,
        host: Option<std::net::IpAddr>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let policy = Self::with(State::Pending, false, host, metrics);
        tokio::spawn(watch::follow(
            channel,
            namespace,
            pod,
            Arc::downgrade(&policy),
        ));
        policy
    }

    fn with(
        state: State,
        ready: bool,
        host: Option<std::net::IpAddr>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Policy {
            state: ArcSwap::from_pointee(state),
            ready: tokio::sync::watch::Sender::new(ready),
            host,
            metrics,
            logged: Mutex::default(),
        })
    }

    /// Whether the pod's policy is known (or none applies): `/ready`
    /// waits for it.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    fn set(&self, rules: Rules) {
        self.state.store(Arc::new(State::Known(rules)));
        self.metrics.policy.known.set(1);
        self.metrics.policy.updates.inc();
        self.ready.send_replace(true);
    }

    /// Whether a connection may go ahead; a refusal is counted and logged.
    /// `peer` is the client (ingress) or the destination (egress), `port`
    /// this pod's app port (ingress) or the destination's (egress).
    pub(crate) fn allows(
        &self,
        way: Way,
        peer: SocketAddr,
        identity: Option<&SpiffeId>,
        port: u16,
    ) -> bool {
        if self.host == Some(peer.ip()) {
            return true;
        }
        let state = self.state.load();
        let (denial, audit) = match &**state {
            State::Off => return true,
            State::Pending => (
                Denial {
                    reason: rules::Reason::Unknown,
                    policies: Arc::from(""),
                    nearest: None,
                    expected: None,
                },
                false,
            ),
            State::Known(rules) => match rules.decide(way, peer.ip(), identity, port) {
                Decision::Allow => return true,
                Decision::Deny(denial) => (denial, rules.audit),
            },
        };
        self.refused(way, peer, identity, port, &denial, audit);
        audit
    }

    /// Egress when a connection is accepted, before any endpoint is
    /// picked: it goes ahead when policy allows one of `candidates` (the
    /// endpoints it may reach); otherwise it is refused as a whole, like
    /// every packet of it would be by a CNI. Each endpoint connection is
    /// checked again with [`Policy::allows`].
    pub(crate) fn allows_any(&self, way: Way, candidates: &[SocketAddr]) -> bool {
        let Some(first) = candidates.first() else {
            return true;
        };
        match &**self.state.load() {
            State::Off => return true,
            State::Pending => {}
            State::Known(rules) => {
                let allowed = candidates
                    .iter()
                    .any(|c| rules.decide(way, c.ip(), None, c.port()) == Decision::Allow);
                if allowed {
                    return true;
                }
            }
        }
        self.allows(way, *first, None, first.port())
    }

    fn refused(
        &self,
        way: Way,
        peer: SocketAddr,
        identity: Option<&SpiffeId>,
        port: u16,
        denial: &Denial,
        audit: bool,
    ) {
        let mode = match audit {
            true => Enforcement::Audit,
            false => Enforcement::Enforce,
        };
        let direction = match way {
            Way::Ingress => Direction::Inbound,
            Way::Egress => Direction::Outbound,
        };
        self.metrics
            .policy
            .denied
            .get_or_create(&DenialLabels {
                direction,
                policy: denial.policies.clone(),
                reason: denial.reason.as_str(),
                mode,
            })
            .inc();
        let suppressed = {
            let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
            let key = (way, denial.reason, denial.policies.clone());
            let now = Instant::now();
            match logged.get_mut(&key) {
                Some((at, count)) if now.duration_since(*at) < LOG_EVERY => {
                    *count += 1;
                    return;
                }
                Some((at, count)) => {
                    *at = now;
                    std::mem::take(count)
                }
                None => {
                    logged.insert(key, (now, 0));
                    0
                }
            }
        };
        let identity = identity.map(|i| i.to_string());
        let what = match audit {
            true => "NetworkPolicy would refuse this connection (audit mode: let through)",
            false => "NetworkPolicy refused a connection",
        };
        tracing::warn!(
            direction = ?way,
            %peer,
            identity = identity.as_deref().unwrap_or("none (plaintext)"),
            port,
            reason = denial.reason.as_str(),
            policies = %denial.policies,
            nearest_rule = denial.nearest.as_deref().unwrap_or("none"),
            expected_identity = denial.expected.as_deref().unwrap_or(""),
            suppressed_since_last_log = suppressed,
            "{what}"
        );
    }
}

#[cfg(test)]
mod tests;
