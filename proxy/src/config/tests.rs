use super::*;
use std::collections::HashMap;

fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(|k| map.get(k).cloned())
}

#[test]
fn defaults_follow_the_design() {
    let c = config(&[]).unwrap();
    assert_eq!(c.outbound_port, 6140);
    assert_eq!(c.inbound_port, 6143);
    assert_eq!(c.admin_addr.port(), 6191);
    assert!(c.opaque_ports.contains(&5432) && c.opaque_ports.contains(&25));
    assert_eq!(c.detect_timeout, Duration::from_secs(1));
    // No collector, no tracing.
    assert!(c.trace_collector.is_none());
    let c = config(&[
        ("WEFT_TRACE_COLLECTOR", "http://otel.observability:4317"),
        ("WEFT_TRACE_SAMPLE_RATIO", "0.25"),
    ])
    .unwrap();
    assert_eq!(
        c.trace_collector.unwrap().host(),
        Some("otel.observability")
    );
    assert_eq!(c.trace_sample_ratio, 0.25);
}

#[test]
fn parses_durations() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
}

#[test]
fn bad_values_name_the_variable() {
    let cases = [
        ("WEFT_OUTBOUND_PORT", "70000"),
        ("WEFT_DETECT_TIMEOUT", "soon"),
        ("WEFT_DETECT_TIMEOUT", "0ms"),
        ("WEFT_OPAQUE_PORTS", "25,x"),
        ("WEFT_OPAQUE_PORTS", "30-20"),
        ("WEFT_ADMIN_ADDR", "localhost"),
        ("WEFT_LOG_LEVEL", "[[["),
        ("WEFT_PROXY_CORES", "0"),
        ("WEFT_TRACE_COLLECTOR", "collector:4317"),
        ("WEFT_TRACE_COLLECTOR", "ftp://collector:4317"),
        ("WEFT_TRACE_SAMPLE_RATIO", "1.5"),
        ("WEFT_TRACE_SAMPLE_RATIO", "some"),
        ("WEFT_HTTP_MAX_HEADER_BYTES", "100"),
        ("WEFT_SKIP_INBOUND_PORTS", "ssh"),
        ("WEFT_SKIP_OUTBOUND_PORTS", "9-1"),
        ("WEFT_SKIP_OUTBOUND_CIDRS", "10.0.0.0/33"),
    ];
    for (var, value) in cases {
        let err = config(&[(var, value)]).expect_err(var);
        assert_eq!(err.var, var, "{err}");
        assert!(err.to_string().contains(value), "{err}");
    }
}

#[test]
fn reads_redirect_exemptions() {
    let c = config(&[
        ("WEFT_SKIP_INBOUND_PORTS", "22, 8000-8010"),
        ("WEFT_SKIP_OUTBOUND_PORTS", "5432"),
        ("WEFT_SKIP_OUTBOUND_CIDRS", "10.0.0.0/8,fd00::/8"),
    ])
    .unwrap();
    let e = &c.redirect_exemptions;
    assert_eq!(e.inbound_ports.len(), 2);
    assert_eq!(e.inbound_ports[1].to_string(), "8000-8010");
    assert_eq!(e.outbound_ports[0].to_string(), "5432");
    assert_eq!(e.outbound_cidrs.len(), 2);
    assert_eq!(config(&[]).unwrap().redirect_exemptions, Default::default());
}

#[test]
fn listener_ports_must_differ() {
    let err = config(&[("WEFT_INBOUND_PORT", "6140")]).unwrap_err();
    assert!(err.to_string().contains("must differ"), "{err}");
    // The variable that was set is blamed, with its value as given (found
    // by fuzzing: the message quoted a list nobody wrote).
    assert_eq!((err.var, err.value.as_str()), ("WEFT_INBOUND_PORT", "6140"));
    // Whitespace the parser trims is quoted too.
    let err = config(&[("WEFT_CONTROLLER_ADDR", "wef5,\u{b}\u{b}")]).unwrap_err();
    assert_eq!(err.value, "wef5,\u{b}\u{b}");
    let err = config(&[("WEFT_ADMIN_ADDR", " 0.0.0.0:6140")]).unwrap_err();
    assert_eq!(
        (err.var, err.value.as_str()),
        ("WEFT_ADMIN_ADDR", " 0.0.0.0:6140")
    );
}

/// A syntactically valid anchor, made on the fly.
fn anchor_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

#[test]
fn identity_settings_are_all_or_nothing() {
    let anchor = anchor_pem();
    let full = [
        ("WEFT_CONTROLLER_ADDR", "weft-controller.weft-system:8086"),
        ("WEFT_IDENTITY", "spiffe://cluster.local/ns/demo/sa/web"),
        ("WEFT_IDENTITY_TOKEN_FILE", "/var/run/secrets/weft/token"),
        ("WEFT_TRUST_ANCHORS", anchor.as_str()),
    ];
    let c = config(&full).unwrap();
    let id = c.identity.expect("identity");
    assert_eq!(
        id.controller_identity.to_string(),
        "spiffe://cluster.local/ns/weft-system/sa/weft-controller"
    );
    assert_eq!(c.inbound_mtls, InboundMtls::Permissive);
    assert!(config(&[]).unwrap().identity.is_none());

    // Each missing or bad piece is named.
    for (drop, var) in [
        ("WEFT_IDENTITY", "WEFT_IDENTITY"),
        ("WEFT_IDENTITY_TOKEN_FILE", "WEFT_IDENTITY_TOKEN_FILE"),
        ("WEFT_TRUST_ANCHORS", "WEFT_TRUST_ANCHORS"),
    ] {
        let vars: Vec<_> = full.iter().copied().filter(|(k, _)| *k != drop).collect();
        assert_eq!(config(&vars).unwrap_err().var, var);
    }
    for (key, bad) in [
        ("WEFT_CONTROLLER_ADDR", "no-port"),
        ("WEFT_IDENTITY", "spiffe://cluster.local/web"),
        ("WEFT_TRUST_ANCHORS", "not pem"),
        ("WEFT_CONTROLLER_IDENTITY", "web"),
        ("WEFT_INBOUND_MTLS", "sometimes"),
        ("WEFT_MESH_ENDPOINTS", "10.0.0.1"),
        ("WEFT_MESH_ENDPOINTS", "10.0.0.1=spiffe://x/y"),
    ] {
        let mut vars: Vec<_> = full.iter().copied().filter(|(k, _)| *k != key).collect();
        vars.push((key, bad));
        assert_eq!(config(&vars).unwrap_err().var, key, "{key}={bad}");
    }
    // Strict mode and meshed endpoints need an identity.
    assert_eq!(
        config(&[("WEFT_INBOUND_MTLS", "strict")]).unwrap_err().var,
        "WEFT_INBOUND_MTLS"
    );
    let mut vars = full.to_vec();
    vars.push((
        "WEFT_MESH_ENDPOINTS",
        "10.42.0.3=spiffe://cluster.local/ns/demo/sa/api",
    ));
    vars.push(("WEFT_INBOUND_MTLS", "strict"));
    let c = config(&vars).unwrap();
    assert_eq!(c.mesh_endpoints.len(), 1);
    assert_eq!(c.inbound_mtls, InboundMtls::Strict);
}

#[test]
fn the_documented_defaults_are_the_defaults() {
    let unset = format!("{:?}", config(&[]).unwrap());
    for var in weft_api::proxy_env::ALL {
        if var.default.is_empty() {
            continue;
        }
        let set = config(&[(var.name, var.default)])
            .unwrap_or_else(|e| panic!("{}: default {:?}: {e}", var.name, var.default));
        assert_eq!(
            format!("{set:?}"),
            unset,
            "{} = {:?}",
            var.name,
            var.default
        );
    }
}
