//! What Weft says on a route's status, for each Service parent: pure
//! functions from the route and the Services discovery holds, so the
//! writer (in the Kubernetes source) only compares and patches.
//!
//! Per parent, as the Gateway API defines the route conditions:
//! - `Accepted`: `True` when the parent Service (and its port, if the
//!   reference names one) exists and at least one rule is usable;
//!   `False` with `NoMatchingParent` or `UnsupportedValue` otherwise.
//! - `PartiallyInvalid`: present, `True` with `UnsupportedValue`, when some
//!   rules were dropped and the others are served.
//! - `ResolvedRefs`: `False` with the reason of the first backend that
//!   does not resolve (`InvalidKind`, `RefNotPermitted`,
//!   `BackendNotFound`), else `True`.
//!
//! An accepted route's `Accepted` message also names the rules that are
//! served but cannot do what they say: a rule whose matches a route
//! ahead of it in precedence already has (conflicting routes: the older
//! wins, as the Gateway API says), and a rule whose weights are all 0.
//!
//! Entries of other controllers (a Gateway's, for its own parents) are
//! kept as they are; a condition that keeps its status keeps its
//! `lastTransitionTime`.

use std::collections::HashMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::gateway::{ParentRef, RouteParentStatus, RouteStatus};
use super::{BackendTarget, RouteInfo, Unresolved};
use crate::discovery::model::{Key, ServiceInfo};

/// The `controllerName` of Weft's entries (see DESIGN.md).
pub const CONTROLLER_NAME: &str = "weft.io/mesh";

/// One condition as Weft wants it, before times are filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub kind: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Weft's entry for one parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentState {
    pub parent_ref: ParentRef,
    pub conditions: Vec<Wanted>,
}

/// What Weft's entries on a route should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub generation: i64,
    pub parents: Vec<ParentState>,
    /// Rules that never match because another route's same matches take
    /// precedence (counted once when they appear).
    pub shadowed: usize,
}

/// A route of the same namespace attached to the same Service.
pub type Peer<'a> = (&'a Key, &'a RouteInfo);

/// The rules of `route` (keyed `key`) that never match: each of their
/// matches is also a match of a peer that takes precedence (the older
/// route, then the smaller `namespace/name`, as [`super::table`] orders
/// them).
fn shadowed_rules(key: &Key, route: &RouteInfo, peers: &[Peer<'_>]) -> Vec<(u32, String)> {
    let ahead: Vec<&Peer<'_>> = peers
        .iter()
        .filter(|(k, r)| (r.created.as_str(), *k) < (route.created.as_str(), key))
        .collect();
    route
        .rules
        .iter()
        .filter_map(|rule| {
            let winner = ahead.iter().find(|(_, r)| {
                rule.matches
                    .iter()
                    .all(|m| r.rules.iter().any(|theirs| theirs.matches.contains(m)))
            })?;
            Some((rule.index, format!("{}/{}", winner.0.0, winner.0.1)))
        })
        .collect()
}

fn wanted(kind: &'static str, status: bool, reason: &'static str, message: String) -> Wanted {
    Wanted {
        kind,
        status,
        reason,
        message,
    }
}

/// Whether `port` is one of the Service's ports.
fn has_port(service: &ServiceInfo, port: u16) -> bool {
    service.ports.iter().any(|p| p.port == port)
}

/// The conditions of every Service parent of `route` (keyed `key`), given
/// the Services and the `peers` it shares a parent with.
pub fn desired(
    key: &Key,
    route: &RouteInfo,
    services: &HashMap<Key, ServiceInfo>,
    peers: &[Peer<'_>],
) -> Desired {
    let dropped = route.rules_total.saturating_sub(route.rules.len());
    let shadowed = shadowed_rules(key, route, peers);
    // What an accepted route's message adds: rules that are served but
    // cannot do what they say.
    let mut notes: Vec<String> = shadowed
        .iter()
        .map(|(rule, winner)| {
            format!("rule {rule} never matches: route {winner} has the same matches and takes precedence")
        })
        .collect();
    notes.extend(
        route
            .rules
            .iter()
            .filter(|r| !r.backends.is_empty() && r.backends.iter().all(|b| b.weight == 0))
            .map(|r| {
                format!(
                    "rule {}: every backend has weight 0, so its requests are answered 500",
                    r.index
                )
            }),
    );
    let problems = || {
        route
            .invalid
            .iter()
            .map(|p| p.detail.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let resolved = resolved_refs(route, services);
    let parents = route
        .parents
        .iter()
        .map(|parent| {
            let (ns, name) = &parent.service;
            let service = services.get(&parent.service);
            let accepted = match (service, parent.port) {
                (None, _) => wanted(
                    "Accepted",
                    false,
                    "NoMatchingParent",
                    format!("no Service {ns}/{name}"),
                ),
                (Some(s), Some(port)) if !has_port(s, port) => wanted(
                    "Accepted",
                    false,
                    "NoMatchingParent",
                    format!("Service {ns}/{name} has no port {port}"),
                ),
                _ if route.rules_total > 0 && route.rules.is_empty() => wanted(
                    "Accepted",
                    false,
                    "UnsupportedValue",
                    format!("no rule can be served: {}", problems()),
                ),
                _ if notes.is_empty() => {
                    wanted("Accepted", true, "Accepted", "served by the mesh".into())
                }
                _ => wanted(
                    "Accepted",
                    true,
                    "Accepted",
                    format!("served by the mesh; {}", notes.join("; ")),
                ),
            };
            let mut conditions = vec![accepted];
            if conditions[0].status && dropped > 0 {
                conditions.push(wanted(
                    "PartiallyInvalid",
                    true,
                    "UnsupportedValue",
                    format!(
                        "{dropped} of {} rules dropped: {}",
                        route.rules_total,
                        problems()
                    ),
                ));
            }
            conditions.push(resolved.clone());
            ParentState {
                parent_ref: parent.reference.clone(),
                conditions,
            }
        })
        .collect();
    Desired {
        generation: route.generation,
        parents,
        shadowed: shadowed.len(),
    }
}

/// `ResolvedRefs` over the usable rules' backends.
fn resolved_refs(route: &RouteInfo, services: &HashMap<Key, ServiceInfo>) -> Wanted {
    for rule in &route.rules {
        let targets = rule.backends.iter().map(|b| &b.target).chain(&rule.mirrors);
        for target in targets {
            let why = match target {
                Err(why) => Some((why.as_str(), why.detail().to_string())),
                Ok(BackendTarget { service, port }) => match services.get(service) {
                    Some(s) if has_port(s, *port) => None,
                    Some(_) => Some((
                        Unresolved::BackendNotFound.as_str(),
                        format!("Service {}/{} has no port {port}", service.0, service.1),
                    )),
                    None => Some((
                        Unresolved::BackendNotFound.as_str(),
                        format!("no Service {}/{}", service.0, service.1),
                    )),
                },
            };
            if let Some((reason, detail)) = why {
                return wanted(
                    "ResolvedRefs",
                    false,
                    reason,
                    format!("rule {}: {detail}", rule.index),
                );
            }
        }
    }
    wanted(
        "ResolvedRefs",
        true,
        "ResolvedRefs",
        "every backend resolves".into(),
    )
}

/// Whether Weft's entries in `current` already say what `desired` does
/// (times aside), so nothing needs writing.
pub fn up_to_date(current: Option<&RouteStatus>, desired: &Desired) -> bool {
    let ours: Vec<&RouteParentStatus> = current
        .map(|s| s.parents.iter())
        .into_iter()
        .flatten()
        .filter(|p| p.controller_name == CONTROLLER_NAME)
        .collect();
    ours.len() == desired.parents.len()
        && ours.iter().zip(&desired.parents).all(|(have, want)| {
            have.parent_ref == want.parent_ref
                && have.conditions.len() == want.conditions.len()
                && have.conditions.iter().zip(&want.conditions).all(|(c, w)| {
                    c.type_ == w.kind
                        && c.status == status_of(w.status)
                        && c.reason == w.reason
                        && c.message == w.message
                        && c.observed_generation == Some(desired.generation)
                })
        })
}

fn status_of(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// The route's new status: the other controllers' entries as they are,
/// then Weft's, each condition keeping its `lastTransitionTime` when its
/// status did not change.
pub fn merged(current: Option<&RouteStatus>, desired: &Desired, now: &Time) -> RouteStatus {
    let existing = current.map(|s| s.parents.as_slice()).unwrap_or_default();
    let mut parents: Vec<RouteParentStatus> = existing
        .iter()
        .filter(|p| p.controller_name != CONTROLLER_NAME)
        .cloned()
        .collect();
    for want in &desired.parents {
        let before = existing
            .iter()
            .find(|p| p.controller_name == CONTROLLER_NAME && p.parent_ref == want.parent_ref);
        let conditions = want
            .conditions
            .iter()
            .map(|w| {
                let status = status_of(w.status);
                let since = before
                    .and_then(|b| b.conditions.iter().find(|c| c.type_ == w.kind))
                    .filter(|c| c.status == status)
                    .map(|c| c.last_transition_time.clone())
                    .unwrap_or_else(|| now.clone());
                Condition {
                    last_transition_time: since,
                    message: w.message.clone(),
                    observed_generation: Some(desired.generation),
                    reason: w.reason.into(),
                    status: status.into(),
                    type_: w.kind.into(),
                }
            })
            .collect();
        parents.push(RouteParentStatus {
            parent_ref: want.parent_ref.clone(),
            controller_name: CONTROLLER_NAME.into(),
            conditions,
        });
    }
    RouteStatus { parents }
}

#[cfg(test)]
mod tests;
