//! The Gateway API conformance suite (`sigs.k8s.io/gateway-api/conformance`,
//! the version of the CRDs Weft installs) against Weft on this cluster, with
//! the `MESH-HTTP` and `MESH-GRPC` profiles. The suite's namespaces get the
//! injection label; its app, `echo-advanced`, is built from source
//! (tests/kube/gateway-api/images.sh). The report it writes is kept under
//! `tests/gateway-api/`; the features declared and those left out (with
//! why) are below and in the README.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, ensure};
use weft_testbed::node::KubeNode;

/// The features Weft implements, declared to the suite.
const SUPPORTED: &[&str] = &[
    "Mesh",
    "HTTPRoute",
    "GRPCRoute",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteParentRefPort",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "MeshClusterIPMatching",
    "MeshConsumerRoute",
    "MeshHTTPRouteRewritePath",
    "MeshHTTPRouteSchemeRedirect",
    "MeshHTTPRouteRedirectPort",
    "MeshHTTPRouteRedirectPath",
    "MeshHTTPRouteQueryParamMatching",
    "MeshHTTPRouteNamedRouteRule",
];

// Left out: MeshHTTPRouteBackendRequestHeaderModification (filters on a
// backendRef are not supported yet; such a rule is dropped and says so).

fn script(node: &KubeNode, path: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("bash")
        .arg(node.repo().join(path))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {path}"))?;
    ensure!(
        out.status.success(),
        "{path} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn gateway_api(node: &KubeNode) -> anyhow::Result<()> {
    let images = node.repo().join("target/weft-images");
    let archive = script(
        node,
        "tests/kube/gateway-api/images.sh",
        &[images.to_str().unwrap()],
    )?;
    node.import(Path::new(&archive))?;
    let suite = script(node, "tests/kube/gobuild.sh", &["gateway-api-conformance"])?;
    let report_dir = node.repo().join("tests/gateway-api");
    std::fs::create_dir_all(&report_dir)?;
    let report = report_dir.join("conformance-report.yaml");
    let version = env!("CARGO_PKG_VERSION");
    let work = tempfile::tempdir()?;
    let started = std::time::Instant::now();
    // The suite reads manifests relative to nothing (they are embedded),
    // and writes only the report.
    let out = Command::new(&suite)
        .current_dir(work.path())
        .env("KUBECONFIG", node.kubeconfig())
        .args([
            "-test.run=TestConformance",
            "-test.v",
            "-test.timeout=40m",
            "--conformance-profiles=MESH-HTTP,MESH-GRPC",
            &format!("--supported-features={}", SUPPORTED.join(",")),
            "--namespace-labels=weft.io/inject=enabled",
            // Who the report is from (the suite refuses to write one
            // without); the project's own names, as in DESIGN.md.
            "--organization=weft.io",
            "--project=weft",
            "--url=https://weft.io",
            &format!("--version=v{version}"),
            "--contact=weft.io/mesh maintainers",
            "--mode=default",
            &format!("--report-output={}", report.display()),
        ])
        .stdin(Stdio::null())
        .output()
        .context("cannot run the conformance suite")?;
    let log = String::from_utf8_lossy(&out.stdout);
    std::fs::write(report_dir.join("conformance.log"), log.as_bytes())?;
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.trim_start().starts_with("--- FAIL"))
        .collect();
    eprintln!(
        "Gateway API conformance: {} in {:?}; report in {}",
        if out.status.success() {
            "passed"
        } else {
            "FAILED"
        },
        started.elapsed(),
        report.display()
    );
    ensure!(
        out.status.success(),
        "the conformance suite failed ({} failures; log in tests/gateway-api/conformance.log):\n{}\n{}",
        failed.len(),
        failed.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
