use weft_api::proto::policy::{Direction, Mode, PolicyUpdate};

use super::*;

fn isolated_update(mode: Mode) -> PolicyUpdate {
    PolicyUpdate {
        known: true,
        mode: mode as i32,
        ingress: Some(Direction {
            isolated: true,
            policies: vec!["prod/deny".into()],
            rules: vec![],
        }),
        egress: None,
        authorization: None,
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn denied(metrics: &Metrics, reason: &str, mode: &str) -> bool {
    metrics.encode().lines().any(|l| {
        l.starts_with("policy_denied_total{")
            && l.contains(&format!("reason=\"{reason}\""))
            && l.contains(&format!("mode=\"{mode}\""))
            && l.ends_with(" 1")
    })
}

#[tokio::test]
async fn an_enforcing_proxy_refuses_everything_until_its_policy_arrives() {
    let metrics = Metrics::new();
    let host = Some("10.0.0.254".parse().unwrap());
    let policy = Policy::with(State::Pending, false, host, metrics.clone());
    assert!(
        policy.allows(Way::Ingress, addr("10.0.0.254:40000"), None, 8080),
        "the node"
    );
    assert!(!policy.is_ready());
    assert!(!policy.allows(Way::Egress, addr("10.0.0.1:53"), None, 53));
    assert!(denied(&metrics, "policy_unknown", "enforce"));
    // An empty policy: nothing isolates the pod.
    policy.set(Rules::compile(&PolicyUpdate {
        known: true,
        ..Default::default()
    }));
    assert!(policy.is_ready());
    assert!(policy.allows(Way::Egress, addr("10.0.0.1:53"), None, 53));
}

#[tokio::test]
async fn audit_mode_counts_and_lets_through() {
    let metrics = Metrics::new();
    let policy = Policy::off(metrics.clone());
    assert!(policy.allows(Way::Ingress, addr("10.0.0.9:1"), None, 80));
    policy.set(Rules::compile(&isolated_update(Mode::Audit)));
    assert!(policy.allows(Way::Ingress, addr("10.0.0.9:1"), None, 80));
    assert!(denied(&metrics, "not_allowed", "audit"));
    policy.set(Rules::compile(&isolated_update(Mode::Enforce)));
    assert!(!policy.allows(Way::Ingress, addr("10.0.0.9:1"), None, 80));
    assert!(denied(&metrics, "not_allowed", "enforce"));
}

#[tokio::test]
async fn egress_at_accept_passes_when_any_endpoint_may_be_reached() {
    let policy = Policy::off(Metrics::new());
    policy.set(Rules::compile(&PolicyUpdate {
        known: true,
        egress: Some(Direction {
            isolated: true,
            policies: vec!["prod/egress".into()],
            rules: vec![weft_api::proto::policy::Rule {
                blocks: vec![weft_api::proto::policy::IpBlock {
                    cidr: "10.0.0.2/32".into(),
                    except: vec![],
                }],
                any_port: true,
                ..Default::default()
            }],
        }),
        ..Default::default()
    }));
    let some = [addr("10.0.0.1:80"), addr("10.0.0.2:80")];
    assert!(policy.allows_any(Way::Egress, &some));
    assert!(!policy.allows_any(Way::Egress, &some[..1]));
}
