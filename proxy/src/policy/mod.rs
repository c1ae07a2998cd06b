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
//! Mesh authorization ([`authz`]) comes after NetworkPolicy, inbound
//! only: per request on HTTP (a refusal is a 403, or `PERMISSION_DENIED`
//! for gRPC), per connection otherwise.
//!
//! Fail closed: a proxy that enforces policy refuses everything until
//! the pod's first policy arrives, and keeps the last one it got while
//! the controller is away.

pub(crate) mod authz;
pub(crate) mod rules;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use weft_api::identity::SpiffeId;

use crate::metrics::policy::{AuthorizationLabels, DenialLabels, Enforcement};
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

/// A kind of denial (way, reason, policies), for rate-limiting its log
/// lines.
type DenialKind = (Way, &'static str, Arc<str>);

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

    /// Whether [`Self::authorizes`] would let this through, deciding ahead
    /// without counting or logging anything.
    pub(crate) fn would_authorize(
        &self,
        peer: SocketAddr,
        identity: Option<&SpiffeId>,
        port: u16,
        subject: authz::Subject<'_>,
    ) -> bool {
        if self.host == Some(peer.ip()) {
            return true;
        }
        match &**self.state.load() {
            State::Off => true,
            State::Pending => false,
            State::Known(rules) => {
                let client = authz::Client {
                    ip: peer.ip(),
                    identity,
                };
                rules.audit
                    || rules.authorization.is_open()
                    || matches!(
                        rules.authorization.decide(client, port, subject),
                        authz::Verdict::Allow
                    )
            }
        }
    }

    /// Whether mesh authorization lets `subject` through from `peer`
    /// (with `identity` over mesh mTLS) to this pod's app port `port`; a
    /// refusal is counted and logged. The pod's node always passes, as
    /// with NetworkPolicy (kubelet probes).
    pub(crate) fn authorizes(
        &self,
        peer: SocketAddr,
        identity: Option<&SpiffeId>,
        port: u16,
        subject: authz::Subject<'_>,
    ) -> Result<(), authz::Refused> {
        if self.host == Some(peer.ip()) {
            return Ok(());
        }
        let state = self.state.load();
        let (reason, policy, audit) = match &**state {
            State::Off => return Ok(()),
            // NetworkPolicy has refused it already.
            State::Pending => {
                return Err(authz::Refused {
                    reason: authz::AuthzReason::Default,
                    policy: "policy_unknown".into(),
                });
            }
            State::Known(rules) => {
                if rules.authorization.is_open() {
                    return Ok(());
                }
                let client = authz::Client {
                    ip: peer.ip(),
                    identity,
                };
                match rules.authorization.decide(client, port, subject) {
                    authz::Verdict::Allow => return Ok(()),
                    authz::Verdict::Deny { reason, policy } => (reason, policy, rules.audit),
                }
            }
        };
        let refused = || match audit {
            true => Ok(()),
            false => Err(authz::Refused {
                reason,
                policy: policy.clone(),
            }),
        };
        let mode = match audit {
            true => Enforcement::Audit,
            false => Enforcement::Enforce,
        };
        self.metrics
            .policy
            .authorization_denied
            .get_or_create(&AuthorizationLabels {
                policy: policy.clone(),
                reason: reason.as_str(),
                tls: identity.is_some(),
                mode,
            })
            .inc();
        let Some(suppressed) = self.may_log((Way::Ingress, reason.as_str(), policy.clone())) else {
            return refused();
        };
        let what = match subject {
            authz::Subject::Connection => "a connection",
            authz::Subject::Request { .. } => "a request",
        };
        let (method, path) = match subject {
            authz::Subject::Request { method, path } => (method.as_str(), path),
            authz::Subject::Connection => ("", ""),
        };
        let identity = identity.map(|i| i.to_string());
        tracing::warn!(
            %peer,
            identity = identity.as_deref().unwrap_or("none (plaintext)"),
            port,
            method,
            path,
            reason = reason.as_str(),
            policy = %policy,
            suppressed_since_last_log = suppressed,
            "authorization {} {what}",
            if audit { "would refuse (audit mode: let through)" } else { "refused" },
        );
        refused()
    }

    /// Whether a denial of this kind may be logged now (at most once per
    /// [`LOG_EVERY`]), and how many were not since the last line.
    fn may_log(&self, key: DenialKind) -> Option<u64> {
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match logged.get_mut(&key) {
            Some((at, count)) if now.duration_since(*at) < LOG_EVERY => {
                *count += 1;
                None
            }
            Some((at, count)) => {
                *at = now;
                Some(std::mem::take(count))
            }
            None => {
                logged.insert(key, (now, 0));
                Some(0)
            }
        }
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
        let Some(suppressed) = self.may_log((way, denial.reason.as_str(), denial.policies.clone()))
        else {
            return;
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
