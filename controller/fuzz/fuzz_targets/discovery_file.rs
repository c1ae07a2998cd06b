//! Discovery files, YAML or JSON, holding any of the kinds the controller
//! reads: Services, EndpointSlices, Pods, Namespaces, TrafficSplits,
//! HTTPRoutes, GRPCRoutes, NetworkPolicies and AuthorizationPolicies.
//! Invariants: no panic from parsing through to what proxies are served:
//! each Service is resolved by name and by cluster IP, and each Pod's
//! policy is built; and a file that loads once loads the same twice.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use weft_controller::discovery::file;
use weft_controller::discovery::metrics::DiscoveryMetrics;
use weft_controller::discovery::resolve::Authority;
use weft_controller::discovery::{Kind, Object, Store};

fuzz_target!(|text: &str| {
    let path = Path::new("fuzz.yaml");
    let Ok(objects) = file::parse(path, text) else {
        return;
    };
    let again = file::parse(path, text).expect("a file that loaded loads again");
    assert_eq!(again.len(), objects.len());
    let mut registry = prometheus_client::registry::Registry::default();
    let store = Store::new(
        "cluster.local",
        "cluster.local",
        DiscoveryMetrics::register(&mut registry),
    );
    let mut services = Vec::new();
    let mut pods = Vec::new();
    for object in &objects {
        match object {
            Object::Service(key, info) => services.push((key.clone(), info.clone())),
            Object::Pod(key, ..) => pods.push(key.clone()),
            _ => {}
        }
    }
    store.replace(Kind::ALL, objects);
    store.mark_synced();
    for ((namespace, name), info) in &services {
        for port in &info.ports {
            let host = format!("{name}.{namespace}.svc.cluster.local");
            let _ = store.resolve(
                &Authority::Name {
                    host,
                    port: port.port,
                },
                namespace,
            );
            for ip in &info.cluster_ips {
                let _ = store.resolve(&Authority::Addr((*ip, port.port).into()), namespace);
            }
        }
    }
    for key in &pods {
        let _ = store.policy_for(key);
    }
});
