//! Every pod the injector patches must be one the API server accepts. Real
//! pod shapes, as the workload controllers and other projects write them,
//! go through the real webhook on a real API server in both sidecar modes,
//! and each is created for real: Deployment, StatefulSet, Job and CronJob
//! pods, host namespaces, many containers and sidecars, an ephemeral
//! container added afterwards, pod-level resources, Windows, and
//! annotations near the API's size limit.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use weft_testbed::kube_api::{self, KubeApi};
use weft_testbed::require_root;

mod kube_common;
use kube_common::Injector;

/// What the injector should do with a shape.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Injected,
    Skipped,
}

/// `(name, pod, expectation)`: pods as their controllers make them.
fn shapes() -> Vec<(&'static str, Value, Expect)> {
    let owner = |kind: &str, name: &str| {
        json!([{"apiVersion": if kind == "Job" { "batch/v1" } else { "apps/v1" },
                "kind": kind, "name": name, "uid": "6f7c1f5e-1d3b-4c4e-9a8e-0a1b2c3d4e5f",
                "controller": true, "blockOwnerDeletion": true}])
    };
    let app = |name: &str| {
        json!({"name": name, "image": "docker.io/library/app:1", "imagePullPolicy": "IfNotPresent",
               "ports": [{"name": "http", "containerPort": 8080}],
               "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
               "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
               "securityContext": {"runAsNonRoot": true, "runAsUser": 1000,
                                   "allowPrivilegeEscalation": false,
                                   "capabilities": {"drop": ["ALL"]}}})
    };
    let many: Vec<Value> = (0..12)
        .map(|i| {
            let mut c = app(&format!("worker-{i}"));
            c["ports"] = json!([{"containerPort": 9000 + i}]);
            c
        })
        .collect();
    let mut shapes = vec![
        (
            "deployment",
            json!({"metadata": {"generateName": "web-7d4b9c-", "ownerReferences": owner("ReplicaSet", "web-7d4b9c"),
                                "labels": {"app": "web", "pod-template-hash": "7d4b9c"}},
                   "spec": {"containers": [app("web")], "terminationGracePeriodSeconds": 30,
                            "securityContext": {"fsGroup": 2000, "seccompProfile": {"type": "RuntimeDefault"}}}}),
            Expect::Injected,
        ),
        (
            "statefulset",
            json!({"metadata": {"name": "db-0", "ownerReferences": owner("StatefulSet", "db"),
                                "labels": {"app": "db", "statefulset.kubernetes.io/pod-name": "db-0"}},
                   "spec": {"hostname": "db-0", "subdomain": "db", "containers": [app("db")],
                            "volumes": [{"name": "data", "emptyDir": {}}]}}),
            Expect::Injected,
        ),
        (
            "job",
            json!({"metadata": {"generateName": "migrate-", "ownerReferences": owner("Job", "migrate"),
                                "labels": {"job-name": "migrate", "batch.kubernetes.io/job-name": "migrate"}},
                   "spec": {"restartPolicy": "Never", "containers": [app("migrate")]}}),
            Expect::Injected,
        ),
        (
            "cronjob",
            json!({"metadata": {"generateName": "report-29001234-", "ownerReferences": owner("Job", "report-29001234"),
                                "labels": {"job-name": "report-29001234"}},
                   "spec": {"restartPolicy": "OnFailure", "containers": [app("report")]}}),
            Expect::Injected,
        ),
        (
            "host-pid-job",
            json!({"metadata": {"generateName": "inspect-", "ownerReferences": owner("Job", "inspect")},
                   "spec": {"restartPolicy": "Never", "hostPID": true, "hostIPC": true,
                            "containers": [app("inspect")]}}),
            Expect::Injected,
        ),
        (
            "host-network",
            json!({"metadata": {"generateName": "agent-"},
                   "spec": {"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet", "containers": [app("agent")]}}),
            Expect::Skipped,
        ),
        (
            "many-containers",
            json!({"metadata": {"generateName": "big-"},
                   "spec": {"containers": many,
                            "initContainers": [
                                {"name": "setup", "image": "docker.io/library/app:1"},
                                {"name": "log-shipper", "image": "docker.io/library/app:1", "restartPolicy": "Always"},
                                {"name": "wait", "image": "docker.io/library/app:1"}]}}),
            Expect::Injected,
        ),
        (
            "pod-level-resources",
            json!({"metadata": {"generateName": "budget-"},
                   "spec": {"resources": {"requests": {"cpu": "200m", "memory": "96Mi"},
                                          "limits": {"cpu": "1", "memory": "128Mi"}},
                            "containers": [{"name": "app", "image": "docker.io/library/app:1",
                                            "resources": {"requests": {"memory": "64Mi"}}}]}}),
            Expect::Injected,
        ),
        (
            "pod-level-limits-only",
            json!({"metadata": {"generateName": "tight-"},
                   "spec": {"resources": {"limits": {"memory": "100Mi"}},
                            "containers": [{"name": "app", "image": "docker.io/library/app:1"}]}}),
            Expect::Injected,
        ),
        (
            "windows",
            json!({"metadata": {"generateName": "iis-"},
                   "spec": {"os": {"name": "windows"},
                            "securityContext": {"windowsOptions": {"runAsUserName": "ContainerUser"}},
                            "containers": [{"name": "iis", "image": "mcr.microsoft.com/windows/servercore/iis"}]}}),
            Expect::Skipped,
        ),
        (
            "huge-annotations",
            json!({"metadata": {"generateName": "annotated-",
                                "annotations": {"example.com/config": "x".repeat(200 * 1024),
                                                "example.com/other": "y".repeat(40 * 1024)}},
                   "spec": {"containers": [app("app")]}}),
            Expect::Injected,
        ),
    ];
    // Every shape also as a bare pod with the service account token
    // turned off, the way security-minded charts ship them.
    let mut hardened = shapes[0].clone();
    hardened.0 = "no-token";
    hardened.1["spec"]["automountServiceAccountToken"] = json!(false);
    shapes.push(hardened);
    shapes
}

fn names(pod: &Value, field: &str) -> Vec<String> {
    pod["spec"][field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

fn has_proxy(pod: &Value) -> bool {
    names(pod, "initContainers")
        .iter()
        .chain(&names(pod, "containers"))
        .any(|n| n == "weft-proxy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realistic_pods_are_admitted_in_both_modes() {
    require_root();
    let api = KubeApi::shared();
    let client = api.client().await.unwrap();
    let mut failures = Vec::new();
    for mode in ["native", "classic"] {
        let injector = Injector::with_mode(&api.kubeconfig, mode);
        // The webhook's failure policy is Fail: the API server must not
        // call it before it listens.
        injector.wait_ready().await;
        let ns = format!("shapes-{mode}");
        // Only this test's namespaces, through the namespace path.
        let label = "weft-test/pod-shapes";
        kube_api::namespace(&client, &ns, &[(label, mode)])
            .await
            .unwrap();
        let mut hook =
            serde_json::to_value(injector.webhook_configuration(&format!("weft-shapes-{mode}")))
                .unwrap();
        let hooks = hook["webhooks"].as_array_mut().unwrap();
        hooks.retain(|h| {
            h["clientConfig"]["url"]
                .as_str()
                .unwrap()
                .ends_with("/inject")
        });
        hooks[0]["namespaceSelector"] = json!({"matchLabels": {label: mode}});
        let hooks_api: Api<
            k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
        > = Api::all(client.clone());
        hooks_api
            .create(
                &PostParams::default(),
                &serde_json::from_value(hook).unwrap(),
            )
            .await
            .unwrap();

        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        // Wait until the API server calls the new webhook.
        let deadline = Instant::now() + Duration::from_secs(20);
        let probe: Pod = serde_json::from_value(shapes()[0].1.clone()).unwrap();
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        loop {
            let admitted = pods.create(&dry_run, &probe).await.unwrap();
            if has_proxy(&serde_json::to_value(&admitted).unwrap()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{mode}: the webhook was never called"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        for (name, shape, expect) in shapes() {
            let pod: Pod = serde_json::from_value(shape.clone()).unwrap();
            let created = match pods.create(&PostParams::default(), &pod).await {
                Ok(p) => serde_json::to_value(&p).unwrap(),
                Err(e) => {
                    failures.push(format!("{mode} {name}: refused: {e}"));
                    continue;
                }
            };
            if has_proxy(&created) != (expect == Expect::Injected) {
                failures.push(format!("{mode} {name}: expected {expect:?}"));
            }
            // Nothing of the original is lost.
            for field in ["containers", "initContainers"] {
                let after = names(&created, field);
                for original in names(&shape, field) {
                    if !after.contains(&original) {
                        failures.push(format!("{mode} {name}: lost {field} {original}"));
                    }
                }
            }
            for (key, value) in shape["metadata"]["annotations"]
                .as_object()
                .into_iter()
                .flatten()
            {
                if created["metadata"]["annotations"][key] != *value {
                    failures.push(format!("{mode} {name}: annotation {key} changed"));
                }
            }
            if name == "pod-level-resources"
                && created["spec"]["resources"] != shape["spec"]["resources"]
            {
                failures.push(format!("{mode} {name}: the pod's own resources changed"));
            }
            if name == "host-pid-job" && created["spec"]["shareProcessNamespace"] == true {
                failures.push(format!(
                    "{mode} {name}: shareProcessNamespace beside hostPID"
                ));
            }
        }

        // `kubectl debug` adds an ephemeral container to a running,
        // injected pod; the webhook must not stand in its way.
        let created = pods
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "debug-me"},
                    "spec": {"containers": [{"name": "app", "image": "docker.io/library/app:1"}]}
                }))
                .unwrap(),
            )
            .await
            .unwrap();
        assert!(
            has_proxy(&serde_json::to_value(&created).unwrap()),
            "{mode}: debug-me not injected"
        );
        let debug = json!({"spec": {"ephemeralContainers": [
            {"name": "debugger", "image": "docker.io/library/busybox:1", "targetContainerName": "app",
             "stdin": true, "tty": true}]}});
        match pods
            .patch_subresource(
                "ephemeralcontainers",
                "debug-me",
                &PatchParams::default(),
                &Patch::Strategic(debug),
            )
            .await
        {
            Ok(p) => {
                let p = serde_json::to_value(&p).unwrap();
                if names(&p, "ephemeralContainers") != ["debugger"] || !has_proxy(&p) {
                    failures.push(format!("{mode}: ephemeral container: {}", p["spec"]));
                }
            }
            Err(e) => failures.push(format!("{mode}: ephemeral container refused: {e}")),
        }
        hooks_api
            .delete(&format!("weft-shapes-{mode}"), &Default::default())
            .await
            .unwrap();
        drop(injector);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
