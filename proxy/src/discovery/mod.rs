//! Discovery client: what the controller says about each destination the
//! app dials.
//!
//! The first connection to a destination subscribes to it; the controller
//! then pushes every change for as long as the destination is in use. A
//! lookup waits a bounded time for the first answer, then forwards as if
//! the destination were unknown (to the original address, as before). When
//! the controller goes away, each subscription keeps its last state and
//! reconnects with backoff, so traffic goes on as it was.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weft_api::identity::SpiffeId;
use weft_api::proto::destination::destination_client::DestinationClient;
use weft_api::proto::destination::{DestinationUpdate, GetDestination};

use crate::balance::{BreakerEvent, EndpointState, Pick, RetryBudget};
use crate::mesh::MeshPeer;
use crate::metrics::discovery::Lookup;
use crate::metrics::routes::{BreakerState, RouteLabels};
use crate::metrics::{Dst, DstLabels, Metrics};
use crate::outbound::route::RouteTable;
use crate::transport::Target;

mod policy;

pub(crate) use policy::RetryRules;
pub use policy::{NoEndpoint, Policy, RetryOn};

/// Backoff between attempts to reach the controller.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A destination no connection used for this long is unsubscribed.
const IDLE_EVICTION: Duration = Duration::from_secs(600);

/// One backend service and its endpoints.
#[derive(Debug)]
pub struct BackendSet {
    pub service: Arc<String>,
    pub weight: u64,
    pub endpoints: Vec<Arc<EndpointState>>,
    /// A route's backend reference that does not resolve, and why: its
    /// share of requests is answered 500.
    pub unresolved: Option<Arc<str>>,
}

/// Everything needed to route to a destination, as of one update; or,
/// for a Gateway API rule, to that rule's backends.
#[derive(Debug, Default)]
pub struct Routes {
    /// `name.namespace`, or empty for a pod address.
    pub service: Arc<String>,
    /// `name.namespace.svc.<cluster-domain>:port`, the `authority` label
    /// of requests to it; `None` for a pod address.
    pub authority: Option<Arc<String>>,
    /// Labels of the route's own metrics (retries, breaker).
    pub route_labels: RouteLabels,
    pub policy: Policy,
    /// The retry settings and counters, shared by the requests' policies.
    pub(crate) retry: Arc<RetryRules>,
    /// Breaker transitions, and requests shed at the in-flight limit.
    pub ejected: Counter,
    pub readmitted: Counter,
    pub shed: Counter,
    pub backends: Vec<BackendSet>,
    /// The protocol the port declares (opaque-ports annotations, or the
    /// Service port's `appProtocol`): no detection needed.
    pub protocol: Option<crate::detect::Protocol>,
    /// The Gateway API routes of the destination, when it has any: HTTP
    /// requests take a rule's routes in place of these.
    pub(crate) http: Option<Arc<RouteTable>>,
    /// Set on a rule's routes (its name): weights are then kept as the
    /// route gives them, so a share with nowhere to go is refused rather
    /// than handed to another backend.
    pub(crate) rule: Option<Arc<str>>,
}

impl Routes {
    /// The mesh identity of the endpoint at `ip`, when it is meshed.
    pub fn mesh_peer_at(&self, ip: std::net::IpAddr) -> Option<&Arc<MeshPeer>> {
        self.backends
            .iter()
            .flat_map(|b| &b.endpoints)
            .find(|e| e.target.addr.ip() == ip)
            .and_then(|e| e.target.mesh.as_ref())
    }

    /// A backend by weight, among those with endpoints: a backend whose
    /// service is unknown or has no ready pods hands its share to the rest.
    /// A route's backend that does not resolve keeps its share (which is
    /// then refused), as the Gateway API asks.
    pub fn pick_backend(&self) -> Result<&BackendSet, NoEndpoint> {
        self.pick_backend_avoiding(None)
    }

    /// As [`Routes::pick_backend`], leaving out a backend whose only
    /// endpoint is `avoid` while another backend can take the request: a
    /// retry then goes elsewhere even when each backend has one pod.
    fn pick_backend_avoiding(
        &self,
        avoid: Option<&EndpointState>,
    ) -> Result<&BackendSet, NoEndpoint> {
        let only_avoided = |b: &BackendSet| {
            avoid.is_some_and(|a| b.endpoints.len() == 1 && std::ptr::eq(&*b.endpoints[0], a))
        };
        if avoid.is_some() && self.backends.len() > 1 {
            let weights = self.backends.iter().map(|b| {
                let usable = !b.endpoints.is_empty() && b.unresolved.is_none() && !only_avoided(b);
                if usable { b.weight } else { 0 }
            });
            if let Some(i) = crate::balance::weighted_index(weights) {
                return Ok(&self.backends[i]);
            }
        }
        let usable = |b: &&BackendSet| !b.endpoints.is_empty() || b.unresolved.is_some();
        let index = crate::balance::weighted_index(
            self.backends
                .iter()
                .map(|b| if usable(&b) { b.weight } else { 0 }),
        );
        let backend = match index {
            Some(i) => &self.backends[i],
            // A rule whose every weight is zero sends nowhere.
            None if self.rule.is_some() => return Err(NoEndpoint::NoBackend),
            // Every split weight with endpoints is zero: use any backend
            // that has endpoints rather than fail.
            None => self.backends.iter().find(usable).ok_or(NoEndpoint::None)?,
        };
        match &backend.unresolved {
            Some(why) => Err(NoEndpoint::Unresolved(why.clone())),
            None => Ok(backend),
        }
    }

    /// For a request: a backend by weight, then one of its endpoints below
    /// the in-flight limit by two choices, skipping `avoid` while there is
    /// another.
    pub fn pick_endpoint(
        &self,
        avoid: Option<&EndpointState>,
    ) -> Result<Arc<EndpointState>, NoEndpoint> {
        self.pick_with_limit(avoid, self.policy.max_in_flight)
    }

    /// For an opaque connection, which may last for hours: the request
    /// limit does not apply.
    pub fn pick_for_connection(
        &self,
        avoid: Option<&EndpointState>,
    ) -> Result<Arc<EndpointState>, NoEndpoint> {
        self.pick_with_limit(avoid, usize::MAX)
    }

    fn pick_with_limit(
        &self,
        avoid: Option<&EndpointState>,
        limit: usize,
    ) -> Result<Arc<EndpointState>, NoEndpoint> {
        let backend = self.pick_backend_avoiding(avoid)?;
        match crate::balance::pick(&backend.endpoints, avoid, limit) {
            Pick::Endpoint(endpoint) => Ok(endpoint.clone()),
            Pick::Overloaded => Err(NoEndpoint::Overloaded),
            Pick::Empty => Err(NoEndpoint::None),
        }
    }

    /// Feeds an outcome into the endpoint's breaker with this route's
    /// failure accrual, and reports ejections and recoveries.
    pub fn record_outcome(&self, endpoint: &EndpointState, failed: bool) {
        let event = if failed {
            endpoint.failure(self.policy.failure_accrual)
        } else {
            endpoint.success()
        };
        match event {
            BreakerEvent::Ejected(backoff) => {
                tracing::info!(service = %self.service, endpoint = %endpoint.target.addr, ?backoff, "endpoint ejected after consecutive failures");
                self.ejected.inc();
            }
            BreakerEvent::Recovered => {
                tracing::info!(service = %self.service, endpoint = %endpoint.target.addr, "endpoint back in the balancer");
                self.readmitted.inc();
            }
            BreakerEvent::None => {}
        }
    }
}

/// A destination the proxy is subscribed to.
#[derive(Debug)]
pub struct Destination {
    pub addr: SocketAddr,
    /// `None` while discovery does not know it.
    routes: ArcSwapOption<Routes>,
    answered: watch::Sender<bool>,
    pub budget: Arc<RetryBudget>,
    /// Seconds since the resolver started, at the last lookup.
    last_used: AtomicU64,
    cancel: CancellationToken,
}

impl Destination {
    pub fn routes(&self) -> Option<Arc<Routes>> {
        self.routes.load_full()
    }

    /// Whether discovery has answered for it at all (known or not).
    pub fn answered(&self) -> bool {
        *self.answered.borrow()
    }
}

/// Subscribes to destinations and caches them.
#[derive(Debug)]
pub struct Resolver {
    client: DestinationClient<tonic::transport::Channel>,
    namespace: String,
    /// How long a first lookup waits for the controller.
    wait: Duration,
    cache: Mutex<HashMap<SocketAddr, Arc<Destination>>>,
    metrics: Arc<Metrics>,
    epoch: Instant,
}

impl Resolver {
    pub fn new(
        channel: tonic::transport::Channel,
        namespace: String,
        wait: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let resolver = Arc::new(Resolver {
            client: DestinationClient::new(channel),
            namespace,
            wait,
            cache: Mutex::default(),
            metrics,
            epoch: Instant::now(),
        });
        tokio::spawn(evict_idle(Arc::downgrade(&resolver)));
        resolver
    }

    /// The destination behind `addr`, once discovery has answered (or the
    /// wait ran out). A destination discovery does not know (yet) has no
    /// routes, and its requests go to the original address; each request
    /// checks again, so a service created later is picked up even on a
    /// connection opened before.
    pub async fn resolve(&self, addr: SocketAddr) -> Arc<Destination> {
        let dest = {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .entry(addr)
                .or_insert_with(|| self.subscribe(addr))
                .clone()
        };
        dest.last_used
            .store(self.epoch.elapsed().as_secs(), Ordering::Relaxed);
        let mut answered = dest.answered.subscribe();
        if !*answered.borrow_and_update() {
            let waited = tokio::time::timeout(self.wait, answered.wait_for(|a| *a)).await;
            if waited.is_err() {
                self.metrics.discovery.looked_up(Lookup::Timeout);
                tracing::info!(%addr, wait = ?self.wait, "no answer from discovery yet; forwarding to the original address");
                return dest;
            }
        }
        self.metrics.discovery.looked_up(match dest.routes() {
            Some(_) => Lookup::Known,
            None => Lookup::Unknown,
        });
        dest
    }

    fn subscribe(&self, addr: SocketAddr) -> Arc<Destination> {
        let dest = Arc::new(Destination {
            addr,
            routes: ArcSwapOption::empty(),
            answered: watch::Sender::new(false),
            budget: Arc::new(RetryBudget::destination()),
            last_used: AtomicU64::new(0),
            cancel: CancellationToken::new(),
        });
        tokio::spawn(follow(
            self.client.clone(),
            self.namespace.clone(),
            dest.clone(),
            self.metrics.clone(),
        ));
        dest
    }
}

/// Keeps one destination up to date until it is evicted.
async fn follow(
    mut client: DestinationClient<tonic::transport::Channel>,
    namespace: String,
    dest: Arc<Destination>,
    metrics: Arc<Metrics>,
) {
    let addr = dest.addr;
    let mut backoff = MIN_BACKOFF;
    let request = GetDestination {
        authority: addr.to_string(),
        context_namespace: namespace,
    };
    loop {
        let stream = tokio::select! {
            _ = dest.cancel.cancelled() => return,
            result = client.get(request.clone()) => result,
        };
        match stream {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    let message = tokio::select! {
                        _ = dest.cancel.cancelled() => return,
                        message = stream.message() => message,
                    };
                    match message {
                        Ok(Some(update)) => {
                            backoff = MIN_BACKOFF;
                            apply(&dest, update, &metrics);
                            metrics.discovery.updates.inc();
                        }
                        Ok(None) => {
                            tracing::info!(%addr, "discovery stream ended; resubscribing");
                            break;
                        }
                        Err(status) => {
                            tracing::warn!(%addr, code = ?status.code(), message = %status.message(), "discovery stream failed; keeping the last known state");
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                tracing::warn!(%addr, code = ?status.code(), message = %status.message(), "cannot subscribe; keeping the last known state");
            }
        }
        metrics.discovery.reconnects.inc();
        let wait = crate::identity::jitter(backoff);
        tokio::select! {
            _ = dest.cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Installs an update, keeping the state of endpoints that stay.
fn apply(dest: &Destination, update: DestinationUpdate, metrics: &Metrics) {
    if !update.known {
        if dest.routes.swap(None).is_some() {
            tracing::info!(addr = %dest.addr, "destination no longer in discovery");
        }
        dest.answered.send_replace(true);
        return;
    }
    let old = dest.routes.load_full();
    let previous: HashMap<&Target, &Arc<EndpointState>> = old
        .iter()
        .flat_map(|r| {
            let routed = r.http.iter().flat_map(|table| table.endpoints());
            r.backends.iter().flat_map(|b| &b.endpoints).chain(routed)
        })
        .map(|e| (&e.target, e))
        .collect();
    let protocol = declared_protocol(&update);
    let policy = update.policy.unwrap_or_default();
    let backends: Vec<BackendSet> = update
        .backends
        .into_iter()
        .map(|b| backend_set(dest.addr, b, &previous))
        .collect();
    let route_backends: Vec<BackendSet> = update
        .http_routes
        .iter()
        .flat_map(|table| table.backends.iter().cloned())
        .map(|b| backend_set(dest.addr, b, &previous))
        .collect();
    let route_labels = RouteLabels {
        authority: Arc::new(update.authority.clone()),
    };
    let retry_on = RetryOn::parse(&policy.retry_on);
    // A pod addressed directly has no route metrics: its counters count
    // into the void.
    let named = !route_labels.authority.is_empty();
    let counter = |family: &Family<RouteLabels, Counter>| match named {
        true => family.get_or_create(&route_labels).clone(),
        false => Counter::default(),
    };
    let breaker = |state| match named {
        true => metrics.routes.breaker_counter(&route_labels, state),
        false => Counter::default(),
    };
    let routes = Routes {
        retry: Arc::new(RetryRules {
            retry_on: retry_on.clone(),
            limit: policy.retry_limit,
            backoff: Duration::ZERO,
            retries: counter(&metrics.routes.retries),
            exhausted: counter(&metrics.routes.retry_budget_exhausted),
        }),
        ejected: breaker(BreakerState::Open),
        readmitted: breaker(BreakerState::Closed),
        shed: counter(&metrics.routes.requests_shed),
        route_labels,
        service: Arc::new(update.service),
        authority: (!update.authority.is_empty()).then(|| Arc::new(update.authority)),
        policy: Policy {
            retry_on,
            retry_limit: policy.retry_limit,
            timeout: (policy.timeout_ms > 0).then(|| Duration::from_millis(policy.timeout_ms)),
            backend_timeout: None,
            failure_accrual: policy.failure_accrual_consecutive,
            max_in_flight: match policy.max_in_flight {
                0 => weft_api::policy::DEFAULT_MAX_IN_FLIGHT as usize,
                n => n as usize,
            },
        },
        backends,
        protocol,
        http: None,
        rule: None,
    };
    let routes = match &update.http_routes {
        None => routes,
        Some(table) => Routes {
            http: Some(Arc::new(RouteTable::build(table, &route_backends, &routes))),
            ..routes
        },
    };
    tracing::debug!(
        addr = %dest.addr,
        service = %routes.service,
        backends = ?routes.backends.iter().map(|b| (b.service.as_str(), b.weight, b.endpoints.len())).collect::<Vec<_>>(),
        "destination updated"
    );
    metrics.routes.known(&routes.route_labels);
    dest.routes.store(Some(Arc::new(routes)));
    dest.answered.send_replace(true);
}

/// One backend from an update, keeping the state of endpoints it had.
fn backend_set(
    dest: SocketAddr,
    backend: weft_api::proto::destination::Backend,
    previous: &HashMap<&Target, &Arc<EndpointState>>,
) -> BackendSet {
    let mut endpoints = Vec::with_capacity(backend.endpoints.len());
    let backend_name = Arc::new(
        backend
            .service
            .split_once('.')
            .map_or(backend.service.as_str(), |(name, _)| name)
            .to_string(),
    );
    for e in backend.endpoints {
        let app_port = e.hint.as_ref().is_some_and(|h| h.app_port);
        let Some(mut target) = target_of(&e.address, &e.identity, app_port) else {
            tracing::warn!(addr = %dest, endpoint = %e.address, identity = %e.identity, "ignoring an unusable endpoint");
            continue;
        };
        target.dst = Dst(Some(Arc::new(DstLabels {
            namespace: Arc::new(e.namespace),
            service: backend_name.clone(),
            workload: Arc::new(e.workload),
            pod: Arc::new(e.pod),
        })));
        let state = match previous.get(&target) {
            Some(state) => Arc::clone(state),
            None => Arc::new(EndpointState::new(target)),
        };
        endpoints.push(state);
    }
    BackendSet {
        service: Arc::new(backend.service),
        weight: u64::from(backend.weight),
        endpoints,
        unresolved: None,
    }
}

fn declared_protocol(update: &DestinationUpdate) -> Option<crate::detect::Protocol> {
    use crate::detect::Protocol;
    use weft_api::proto::destination::AppProtocol;
    match update.protocol() {
        AppProtocol::Http1 => Some(Protocol::Http1),
        AppProtocol::Http2 => Some(Protocol::Http2),
        AppProtocol::Opaque => Some(Protocol::Opaque),
        // An older controller says only `opaque`.
        AppProtocol::Detect => update.opaque.then_some(Protocol::Opaque),
    }
}

fn target_of(address: &str, identity: &str, app_port: bool) -> Option<Target> {
    let addr: SocketAddr = address.parse().ok()?;
    let mesh = if identity.is_empty() {
        None
    } else {
        let id: SpiffeId = identity.parse().ok()?;
        Some(Arc::new(MeshPeer::new(id, app_port).ok()?))
    };
    Some(Target {
        addr,
        mesh,
        dst: Dst::default(),
    })
}

/// Unsubscribes from destinations nobody has used for a while.
async fn evict_idle(resolver: std::sync::Weak<Resolver>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let Some(resolver) = resolver.upgrade() else {
            return;
        };
        let now = resolver.epoch.elapsed().as_secs();
        let mut cache = resolver.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, dest| {
            let idle = now.saturating_sub(dest.last_used.load(Ordering::Relaxed));
            // Connections still holding it keep it alive.
            let keep = idle < IDLE_EVICTION.as_secs() || Arc::strong_count(dest) > 1;
            if !keep {
                dest.cancel.cancel();
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests;
