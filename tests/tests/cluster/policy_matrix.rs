//! NetworkPolicy's truth table on the real cluster. Three meshed
//! namespaces (`np-x`, `np-y`, `np-z`, labelled `ns: x` and so on) of three
//! pods each (`pod: a|b|c`), spread over both nodes, each pod serving HTTP
//! on 8080 (`serve-8080`) and 8081 (`serve-8081`); and an unmeshed
//! namespace `np-u` whose pod `a` is a plaintext client. For each case the
//! policies are applied, every pod tries every other pod on both ports,
//! and each of the 162 results is compared with what the API reference
//! says, written per case as a rule of its own (not derived from Weft's
//! code). The cases retell the kubernetes-network-policy-recipes in our
//! own words, then cover every field: empty and set selectors, both
//! combined, match expressions, `ipBlock` with `except`, named ports,
//! `endPort`, ingress only, egress only, both, several policies at once
//! and a namespace label changing live.
//!
//! A pod's traffic to itself is left out: the API leaves it to the
//! implementation.

use std::collections::BTreeMap;
use std::fmt;

use super::*;

const PORTS: [u16; 2] = [8080, 8081];
const MESHED: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

/// One pod of the table.
#[derive(Debug, Clone)]
struct Peer {
    ns: &'static str,
    pod: &'static str,
    ip: String,
    node: String,
}

impl Peer {
    fn is(&self, ns: &str, pod: &str) -> bool {
        self.ns == ns && self.pod == pod
    }

    fn namespace(&self) -> String {
        format!("np-{}", self.ns)
    }

    fn meshed(&self) -> bool {
        self.ns != "u"
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ns, self.pod)
    }
}

/// What a case expects of `from` connecting to `to` on `port`.
type Rule = fn(from: &Peer, to: &Peer, port: u16) -> bool;

struct Case {
    name: &'static str,
    /// The policies, given the pods (for their addresses).
    policies: fn(&[Peer]) -> String,
    allowed: Rule,
    /// `kubectl` arguments run after the policies and undone after the case.
    setup: &'static [&'static str],
    undo: &'static [&'static str],
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: np-{ns}}}\nspec: {spec}\n"
    )
}

fn ip_of<'a>(pods: &'a [Peer], ns: &str, pod: &str) -> &'a str {
    &pods.iter().find(|p| p.is(ns, pod)).expect("pod").ip
}

fn cases() -> Vec<Case> {
    fn case(name: &'static str, policies: fn(&[Peer]) -> String, allowed: Rule) -> Case {
        Case {
            name,
            policies,
            allowed,
            setup: &[],
            undo: &[],
        }
    }
    vec![
        case(
            "no policy: everything is open",
            |_| String::new(),
            |_, _, _| true,
        ),
        // Recipe 1: a policy selecting an app with no ingress rule.
        case(
            "deny all traffic to an app",
            |_| policy("x", "a-closed", "{podSelector: {matchLabels: {pod: a}}}"),
            |_, to, _| !to.is("x", "a"),
        ),
        // Recipe 2.
        case(
            "limit an app to one other app of its namespace",
            |_| {
                policy(
                    "x",
                    "a-from-b",
                    "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}",
                )
            },
            |from, to, _| !to.is("x", "a") || from.is("x", "b"),
        ),
        // Recipes 2a and 3: a namespace closed by default, one app opened
        // to everyone with an empty rule; the union of the two.
        case(
            "deny the namespace by default, allow all to one app",
            |_| {
                policy(
                    "x",
                    "default-deny",
                    "{podSelector: {}, policyTypes: [Ingress]}",
                ) + &policy(
                    "x",
                    "a-open",
                    "{podSelector: {matchLabels: {pod: a}}, ingress: [{}]}",
                )
            },
            |_, to, _| to.ns != "x" || to.pod == "a",
        ),
        // Recipe 4: an empty pod selector as the peer is the policy's own
        // namespace.
        case(
            "deny traffic from other namespaces",
            |_| {
                policy(
                    "x",
                    "own-namespace",
                    "{podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}",
                )
            },
            |from, to, _| to.ns != "x" || from.ns == "x",
        ),
        // Recipe 5 narrowed: an empty namespace selector with a pod
        // selector is those pods in every namespace.
        case(
            "allow one app from every namespace",
            |_| {
                policy(
                    "x",
                    "a-from-every-b",
                    "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]}]}",
                )
            },
            |from, to, _| !to.is("x", "a") || from.pod == "b",
        ),
        // Recipe 6.
        case(
            "allow traffic from a namespace",
            |_| {
                policy(
                    "x",
                    "a-from-y",
                    "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]}]}",
                )
            },
            |from, to, _| !to.is("x", "a") || from.ns == "y",
        ),
        // Recipe 7: both selectors in one peer must both match.
        case(
            "allow some pods of another namespace",
            |_| {
                policy(
                    "x",
                    "a-from-y-c",
                    "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}, podSelector: {matchLabels: {pod: c}}}]}]}",
                )
            },
            |from, to, _| !to.is("x", "a") || from.is("y", "c"),
        ),
        // Recipe 10: peers of one rule are a union; match expressions,
        // where NotIn also takes namespaces without the key.
        case(
            "several selectors in one rule",
            |_| {
                policy(
                    "x",
                    "a-from-many",
                    "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}}, {namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [\"x\", \"y\"]}]}}]}]}",
                )
            },
            |from, to, _| {
                !to.is("x", "a")
                    || (from.ns == "x" && from.pod != "a")
                    || from.ns == "z"
                    || from.ns == "u"
            },
        ),
        // Recipe 9.
        case(
            "allow traffic only to one port of an app",
            |_| {
                policy(
                    "x",
                    "a-8081",
                    "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: 8081, protocol: TCP}]}]}",
                )
            },
            |_, to, port| !to.is("x", "a") || port == 8081,
        ),
        case(
            "a named port, from the namespace",
            |_| {
                policy(
                    "x",
                    "a-serve-8080",
                    "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {}}], ports: [{port: serve-8080}]}]}",
                )
            },
            |from, to, port| !to.is("x", "a") || (from.ns == "x" && port == 8080),
        ),
        case(
            "a port range with endPort",
            |_| {
                policy(
                    "y",
                    "range",
                    "{podSelector: {}, ingress: [{ports: [{port: 8070, endPort: 8080}]}]}",
                )
            },
            |_, to, port| to.ns != "y" || port == 8080,
        ),
        case(
            "ipBlock with except",
            |pods| {
                policy(
                    "x",
                    "b-by-address",
                    &format!(
                        "{{podSelector: {{matchLabels: {{pod: b}}}}, ingress: [{{from: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [{}/32, {}/32]}}}}]}}]}}",
                        ip_of(pods, "y", "b"),
                        ip_of(pods, "u", "a")
                    ),
                )
            },
            |from, to, _| !to.is("x", "b") || !(from.is("y", "b") || from.is("u", "a")),
        ),
        // Recipe 11: egress only, with no rule.
        case(
            "deny egress from an app",
            |_| {
                policy(
                    "x",
                    "a-no-egress",
                    "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress]}",
                )
            },
            |from, _, _| !from.is("x", "a"),
        ),
        // Recipes 12 and 14: one namespace may only reach pods (and DNS),
        // on one port; another may reach nothing.
        case(
            "egress limited to pods on one port, and egress closed",
            |_| {
                policy(
                    "y",
                    "pods-only",
                    "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {}}], ports: [{port: 8080}]}, {ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]}]}",
                ) + &policy("z", "no-egress", "{podSelector: {}, policyTypes: [Egress]}")
            },
            |from, _, port| from.ns != "z" && (from.ns != "y" || port == 8080),
        ),
        case(
            "ingress and egress on one pod",
            |_| {
                policy(
                    "x",
                    "c-both",
                    "{podSelector: {matchLabels: {pod: c}}, policyTypes: [Ingress, Egress], ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}], egress: [{to: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}], ports: [{port: 8081, protocol: TCP}]}]}",
                )
            },
            |from, to, port| {
                (!to.is("x", "c") || from.is("x", "a"))
                    && (!from.is("x", "c") || (to.ns == "y" && port == 8081))
            },
        ),
        case(
            "several policies on one pod are a union",
            |_| {
                policy(
                    "y",
                    "a-from-x-8080",
                    "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"x\"}}}], ports: [{port: 8080}]}]}",
                ) + &policy(
                    "y",
                    "a-from-b-8081",
                    "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 8081}]}]}",
                )
            },
            |from, to, port| {
                !to.is("y", "a")
                    || (from.ns == "x" && port == 8080)
                    || (from.is("y", "b") && port == 8081)
            },
        ),
        // A connection needs the source's egress and the target's ingress.
        case(
            "egress of one namespace meets ingress of another",
            |_| {
                policy(
                    "x",
                    "to-y",
                    "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]}]}",
                ) + &policy(
                    "y",
                    "b-own",
                    "{podSelector: {matchLabels: {pod: b}}, ingress: [{from: [{podSelector: {}}]}]}",
                )
            },
            |from, to, _| (from.ns != "x" || to.ns == "y") && (!to.is("y", "b") || from.ns == "y"),
        ),
        // A namespace label changed while the policy stands.
        Case {
            name: "a namespace label added live",
            policies: |_| {
                policy(
                    "x",
                    "a-from-blue",
                    "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]}",
                )
            },
            allowed: |from, to, _| !to.is("x", "a") || from.ns == "z",
            setup: &["label", "namespace", "np-z", "team=blue"],
            undo: &["label", "namespace", "np-z", "team-"],
        },
    ]
}

fn pods_yaml(nodes: &[String]) -> String {
    let mut yaml = String::new();
    for (ns, meshed) in MESHED.iter().map(|n| (*n, true)).chain([("u", false)]) {
        yaml += &format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: np-{ns}\n  labels: {{ns: \"{ns}\"{}}}\n",
            if meshed {
                ", weft.io/inject: enabled"
            } else {
                ""
            }
        );
    }
    let all = MESHED
        .iter()
        .flat_map(|ns| PODS.iter().map(move |pod| (*ns, *pod)))
        .chain([("u", "a")]);
    for (i, (ns, pod)) in all.enumerate() {
        let node = &nodes[i % nodes.len()];
        let containers: String = PORTS
            .iter()
            .map(|port| {
                format!(
                    "    - name: serve-{port}\n      image: docker.io/weft/weft-demo:0.1.0\n      imagePullPolicy: IfNotPresent\n      args: [http, \"0.0.0.0:{port}\", {ns}-{pod}]\n      ports: [{{name: serve-{port}, containerPort: {port}, protocol: TCP}}]\n      readinessProbe: {{httpGet: {{path: /, port: {port}}}, periodSeconds: 2}}\n      resources: {{requests: {{cpu: 5m, memory: 8Mi}}, limits: {{memory: 64Mi}}}}\n"
                )
            })
            .collect();
        yaml += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: np-{ns}\n  labels: {{pod: {pod}}}\n  annotations: {{config.weft.io/proxy-cpu-request: 10m, config.weft.io/proxy-memory-request: 16Mi}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 2\n  containers:\n{containers}"
        );
    }
    yaml
}

/// Every pod's answer from every other, `(from, to, port) -> ok`, with the
/// probe's reason for each failure.
type Results = BTreeMap<(usize, usize, u16), Result<(), String>>;

fn probe_all(node: &KubeNode, pods: &[Peer]) -> anyhow::Result<Results> {
    let runs: Vec<anyhow::Result<Results>> = std::thread::scope(|scope| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(from, source)| {
                scope.spawn(move || {
                    let mut targets = Vec::new();
                    let mut index = BTreeMap::new();
                    for (to, target) in pods.iter().enumerate() {
                        if to == from || !target.meshed() {
                            continue;
                        }
                        for port in PORTS {
                            let addr = format!("{}:{port}", target.ip);
                            index.insert(addr.clone(), (from, to, port));
                            targets.push(addr);
                        }
                    }
                    let ns = source.namespace();
                    let mut args = vec![
                        "-n",
                        &ns,
                        "exec",
                        source.pod,
                        "-c",
                        "serve-8080",
                        "--",
                        "/usr/local/bin/weft-demo",
                        "probe",
                        "--timeout",
                        "3s",
                    ];
                    args.extend(targets.iter().map(String::as_str));
                    let out = node.kubectl(&args)?;
                    let mut results = Results::new();
                    for line in out.lines() {
                        let mut words = line.splitn(3, ' ');
                        let (Some(addr), Some(verdict)) = (words.next(), words.next()) else {
                            continue;
                        };
                        let key = *index.get(addr).context("a target nobody asked for")?;
                        let outcome = match verdict {
                            "ok" => Ok(()),
                            _ => Err(words.next().unwrap_or("failed").to_string()),
                        };
                        results.insert(key, outcome);
                    }
                    ensure!(
                        results.len() == targets.len(),
                        "{source} answered {} of {} probes:\n{out}",
                        results.len(),
                        targets.len()
                    );
                    Ok(results)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect()
    });
    let mut all = Results::new();
    for run in runs {
        all.extend(run?);
    }
    Ok(all)
}

/// The results that differ from the rule.
fn mismatches(pods: &[Peer], results: &Results, allowed: Rule) -> Vec<String> {
    results
        .iter()
        .filter_map(|(&(from, to, port), got)| {
            let (f, t) = (&pods[from], &pods[to]);
            let want = allowed(f, t, port);
            (want != got.is_ok()).then(|| {
                format!(
                    "{f} ({}) -> {t}:{port} ({}): expected {}, got {}",
                    f.node,
                    t.node,
                    if want { "allowed" } else { "refused" },
                    match got {
                        Ok(()) => "allowed".to_string(),
                        Err(why) => format!("refused ({why})"),
                    }
                )
            })
        })
        .collect()
}

fn clear_policies(node: &KubeNode) -> anyhow::Result<()> {
    for ns in MESHED {
        node.kubectl(&[
            "-n",
            &format!("np-{ns}"),
            "delete",
            "networkpolicy",
            "--all",
        ])?;
    }
    Ok(())
}

pub(super) fn matrix(node: &KubeNode) -> anyhow::Result<()> {
    let nodes: Vec<String> = node.nodes().iter().map(|n| n.name.clone()).collect();
    // Bare pods are not retried by a controller: right after the install
    // the webhook's Service may not route yet, and the API server refuses
    // them (failurePolicy Fail), so apply again until it takes.
    let pods_yaml = pods_yaml(&nodes);
    node.wait_for("the table's pods created", Duration::from_secs(60), || {
        node.apply(&pods_yaml).map(Some)
    })?;
    let mut pods = Vec::new();
    for ns in MESHED.iter().chain(&["u"]) {
        let expected = if *ns == "u" { 1 } else { PODS.len() };
        let ready = node.wait_ready(
            &format!("np-{ns}"),
            "pod",
            expected,
            Duration::from_secs(180),
        )?;
        for pod in &ready {
            let name = PODS
                .iter()
                .find(|p| **p == pod_name(pod))
                .context("an unknown pod")?;
            if *ns != "u" {
                ensure!(is_meshed(pod), "np-{ns}/{name} was not injected");
            }
            pods.push(Peer {
                ns,
                pod: name,
                ip: pod["status"]["podIP"].as_str().context("no pod IP")?.into(),
                node: node_of(pod).to_string(),
            });
        }
    }
    let spread: std::collections::BTreeSet<&str> = pods.iter().map(|p| p.node.as_str()).collect();
    ensure!(
        spread.len() == nodes.len().min(2),
        "the pods are not on both nodes: {spread:?}"
    );

    let mut probes = 0;
    for case in cases() {
        clear_policies(node)?;
        let policies = (case.policies)(&pods);
        if !policies.is_empty() {
            node.apply(&policies)
                .with_context(|| format!("case {:?}", case.name))?;
        }
        if !case.setup.is_empty() {
            node.kubectl(case.setup)?;
        }
        // Policy reaches the proxies within a second or two; a case is
        // given a few rounds before its differences count.
        let started = Instant::now();
        let wrong = loop {
            let results = probe_all(node, &pods)?;
            probes += results.len();
            let wrong = mismatches(&pods, &results, case.allowed);
            if wrong.is_empty() || started.elapsed() > Duration::from_secs(20) {
                break wrong;
            }
            std::thread::sleep(Duration::from_secs(1));
        };
        if !case.undo.is_empty() {
            node.kubectl(case.undo)?;
        }
        ensure!(
            wrong.is_empty(),
            "case {:?}: {} of the table differ from the API's rules:\n{}",
            case.name,
            wrong.len(),
            wrong.join("\n")
        );
        eprintln!(
            "network policy matrix: {:?} held after {:.1?}",
            case.name,
            started.elapsed()
        );
    }
    eprintln!(
        "network policy matrix: {} cases, {probes} probes",
        cases().len()
    );
    clear_policies(node)?;
    for ns in MESHED.iter().chain(&["u"]) {
        node.kubectl(&["delete", "namespace", &format!("np-{ns}"), "--wait=false"])?;
    }
    Ok(())
}
