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
}

#[test]
fn parses_durations_and_port_sets() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(
        parse_port_set("25, 3306-3308")
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        vec![25, 3306, 3307, 3308]
    );
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
        ("WEFT_HTTP_MAX_HEADER_BYTES", "100"),
    ];
    for (var, value) in cases {
        let err = config(&[(var, value)]).expect_err(var);
        assert_eq!(err.var, var, "{err}");
        assert!(err.to_string().contains(value), "{err}");
    }
}

#[test]
fn listener_ports_must_differ() {
    let err = config(&[("WEFT_INBOUND_PORT", "6140")]).unwrap_err();
    assert!(err.to_string().contains("must differ"), "{err}");
}
