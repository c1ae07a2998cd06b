#!/usr/bin/env python3
"""Writes Weft's Grafana dashboards (the *.json next to this file).

The dashboards are plain importable Grafana JSON; this script is how they
are kept consistent (ids, layout, the datasource variable, label names).
Edit here, run it, commit both. `--check` fails if the JSON files differ
from what it would write (the test suite runs that).

Every panel queries the datasource chosen in the `datasource` variable.
Label names are the ones the proxy and the scrape configurations in
../prometheus/ produce: `namespace`, `workload` and `pod` say which proxy
reported a series; `direction`, `authority`, `tls`, `client_id`,
`server_id` and `dst_*` describe the other end of the traffic.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"


def datasource_var():
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "options": [],
    }


def query_var(name, label, query):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": query,
        "definition": query,
        "current": {},
        "hide": 0,
        "refresh": 2,
        "sort": 1,
        "includeAll": False,
        "multi": False,
        "options": [],
    }


class Dashboard:
    def __init__(self, uid, title, description, variables):
        self.uid = uid
        self.title = title
        self.description = description
        self.variables = [datasource_var()] + variables
        self.panels = []
        self.x = 0
        self.y = 0
        self.row_height = 0

    def _place(self, w, h):
        if self.x + w > 24:
            self.x = 0
            self.y += self.row_height
            self.row_height = 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_height = max(self.row_height, h)
        return pos

    def row(self, title):
        if self.x:
            self.x = 0
            self.y += self.row_height
            self.row_height = 0
        self.panels.append(
            {
                "id": len(self.panels) + 1,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1},
                "panels": [],
            }
        )
        self.y += 1

    def panel(self, kind, title, targets, unit="short", w=12, h=8, description="", **options):
        panel = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": self._place(w, h),
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": options.get("options", {}),
            "targets": [
                {
                    "refId": chr(ord("A") + i),
                    "datasource": DS,
                    "expr": expr,
                    "legendFormat": legend,
                    "range": kind != "stat",
                    "instant": kind == "stat",
                }
                for i, (expr, legend) in enumerate(targets)
            ],
        }
        if kind == "timeseries":
            panel["options"] = {
                "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                "tooltip": {"mode": "multi"},
            }
        if kind == "stat":
            panel["options"] = {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "value",
                "graphMode": "area",
            }
        self.panels.append(panel)

    def stat(self, title, expr, unit="short", w=6, description=""):
        self.panel("stat", title, [(expr, "")], unit=unit, w=w, h=4, description=description)

    def series(self, title, targets, unit="short", w=12, description=""):
        self.panel("timeseries", title, targets, unit=unit, w=w, description=description)

    def json(self):
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["weft"],
            "editable": True,
            "graphTooltip": 1,
            "refresh": "30s",
            "schemaVersion": 39,
            "time": {"from": "now-1h", "to": "now"},
            "timezone": "",
            "templating": {"list": self.variables},
            "annotations": {"list": []},
            "links": [
                {
                    "type": "dashboards",
                    "tags": ["weft"],
                    "asDropdown": True,
                    "title": "Weft dashboards",
                }
            ],
            "panels": self.panels,
        }


def rate(metric, selector):
    return f"rate({metric}{{{selector}}}[{RI}])"


def success_rate(selector, by=""):
    grouping = f" by ({by})" if by else ""
    succeeded = rate("response_total", selector + ',classification="success"')
    everything = rate("response_total", selector)
    return f"sum{grouping} ({succeeded}) / sum{grouping} ({everything})"


def latency(q, selector, by=""):
    grouping = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({grouping}) ({rate('response_latency_ms_bucket', selector)}))"


NAMESPACE_VAR = query_var("namespace", "Namespace", 'label_values(up{job="weft-proxy"}, namespace)')


def mesh():
    d = Dashboard(
        "weft-mesh",
        "Weft / Mesh",
        "The whole mesh at a glance: traffic meshed pods receive, how much of it succeeds and how fast, per namespace.",
        [],
    )
    inbound = 'direction="inbound"'
    d.stat("Request rate (received by meshed pods)", f"sum({rate('response_total', inbound)})", unit="reqps")
    d.stat("Success rate", success_rate(inbound), unit="percentunit")
    d.stat("Meshed pods up", 'count(up{job="weft-proxy"} == 1)')
    mtls = rate("request_total", inbound + ',tls="true"')
    d.stat(
        "mTLS share of requests",
        f"sum({mtls}) / sum({rate('request_total', inbound)})",
        unit="percentunit",
        description="Requests that arrived over mesh mTLS, out of all requests meshed pods received.",
    )
    d.row("Per namespace")
    d.series("Request rate", [(f"sum by (namespace) ({rate('response_total', inbound)})", "{{namespace}}")], unit="reqps")
    d.series("Success rate", [(success_rate(inbound, "namespace"), "{{namespace}}")], unit="percentunit")
    d.series("p95 latency", [(latency(0.95, inbound, "namespace"), "{{namespace}}")], unit="ms")
    d.series(
        "Open TCP connections",
        [('sum by (namespace) (tcp_open_connections{job="weft-proxy"})', "{{namespace}}")],
    )
    d.row("Busiest workloads")
    d.series(
        "Top 10 workloads by requests received",
        [(f"topk(10, sum by (namespace, workload) ({rate('response_total', inbound)}))", "{{namespace}}/{{workload}}")],
        unit="reqps",
        w=24,
    )
    return d


def namespace():
    d = Dashboard(
        "weft-namespace",
        "Weft / Namespace",
        "One namespace's workloads: what they receive, what they call, and how much of it is mTLS.",
        [NAMESPACE_VAR],
    )
    ns = 'namespace="$namespace"'
    inbound = ns + ',direction="inbound"'
    outbound = ns + ',direction="outbound"'
    d.stat("Meshed pods up", f'count(up{{job="weft-proxy",{ns}}} == 1)')
    d.stat("Requests received", f"sum({rate('response_total', inbound)})", unit="reqps")
    d.stat("Requests sent", f"sum({rate('response_total', outbound)})", unit="reqps")
    d.stat("Inbound success rate", success_rate(inbound), unit="percentunit")
    d.row("Received, per workload")
    d.series("Request rate", [(f"sum by (workload) ({rate('response_total', inbound)})", "{{workload}}")], unit="reqps")
    d.series("Success rate", [(success_rate(inbound, "workload"), "{{workload}}")], unit="percentunit")
    d.series("p95 latency", [(latency(0.95, inbound, "workload"), "{{workload}}")], unit="ms")
    mtls = rate("request_total", inbound + ',tls="true"')
    d.series(
        "mTLS share",
        [
            (
                f"sum by (workload) ({mtls}) / sum by (workload) ({rate('request_total', inbound)})",
                "{{workload}}",
            )
        ],
        unit="percentunit",
    )
    d.row("Sent, per workload and destination")
    d.series(
        "Request rate",
        [
            (
                f"sum by (workload, dst_namespace, dst_service) ({rate('response_total', outbound)})",
                "{{workload}} → {{dst_service}}.{{dst_namespace}}",
            )
        ],
        unit="reqps",
    )
    d.series(
        "Success rate",
        [(success_rate(outbound, "workload, dst_namespace, dst_service"), "{{workload}} → {{dst_service}}.{{dst_namespace}}")],
        unit="percentunit",
    )
    return d


def workload():
    d = Dashboard(
        "weft-workload",
        "Weft / Workload",
        "One workload (Deployment, StatefulSet, DaemonSet or Job): its traffic both ways, its peers, its connections.",
        [
            NAMESPACE_VAR,
            query_var(
                "workload",
                "Workload",
                'label_values(up{job="weft-proxy",namespace="$namespace"}, workload)',
            ),
        ],
    )
    w = 'namespace="$namespace",workload="$workload"'
    d.stat("Pods up", f'count(up{{job="weft-proxy",{w}}} == 1)')
    d.stat("Request rate", f"sum({rate('response_total', w)})", unit="reqps")
    d.stat("Success rate", success_rate(w), unit="percentunit")
    d.stat("p95 latency", latency(0.95, w), unit="ms")
    d.row("Requests")
    d.series("Request rate by direction", [(f"sum by (direction) ({rate('response_total', w)})", "{{direction}}")], unit="reqps")
    d.series("Success rate by direction", [(success_rate(w, "direction"), "{{direction}}")], unit="percentunit")
    d.series(
        "Latency by direction",
        [(latency(q, w, "direction"), f"{{{{direction}}}} p{int(q * 100)}") for q in (0.5, 0.95, 0.99)],
        unit="ms",
    )
    d.series(
        "Responses by status",
        [(f"sum by (direction, status_code, grpc_status) ({rate('response_total', w)})", "{{direction}} {{status_code}} {{grpc_status}}")],
        unit="reqps",
    )
    d.series(
        "Requests by peer",
        [
            (
                f"sum by (direction, client_id, dst_namespace, dst_service) ({rate('request_total', w)})",
                "{{direction}} {{client_id}}{{dst_service}}.{{dst_namespace}}",
            )
        ],
        unit="reqps",
        description="Inbound: the client's workload identity (empty for unmeshed clients). Outbound: the destination service.",
        w=24,
    )
    d.row("Policy")
    d.series(
        "Authorization denials",
        # `or vector(0)`: a flat zero, not "no data", while nothing is refused.
        [(f"sum by (policy, reason, mode) ({rate('authorization_denied_total', w)}) or vector(0)", "{{policy}} {{reason}} {{mode}}")],
        unit="reqps",
        description="Inbound requests (or non-HTTP connections) mesh authorization refused; mode=audit: would have refused.",
    )
    d.series(
        "NetworkPolicy denials",
        [(f"sum by (direction, policy, reason, mode) ({rate('policy_denied_total', w)}) or vector(0)", "{{direction}} {{policy}} {{reason}} {{mode}}")],
        unit="cps",
        description="Connections NetworkPolicy refused, by the policies isolating the pod; mode=audit: would have refused.",
    )
    d.row("TCP")
    d.series("Open connections", [(f"sum by (direction, peer) (tcp_open_connections{{{w}}})", "{{direction}} {{peer}}")])
    d.series(
        "Throughput",
        [
            (f"sum by (direction) ({rate('tcp_read_bytes_total', w)})", "{{direction}} read"),
            (f"sum by (direction) ({rate('tcp_write_bytes_total', w)})", "{{direction}} written"),
        ],
        unit="Bps",
    )
    return d


def pod():
    d = Dashboard(
        "weft-pod",
        "Weft / Pod",
        "One meshed pod: its proxy's traffic, connections, protocol detection, certificate and resources.",
        [
            NAMESPACE_VAR,
            query_var("pod", "Pod", 'label_values(up{job="weft-proxy",namespace="$namespace"}, pod)'),
        ],
    )
    p = 'namespace="$namespace",pod="$pod"'
    d.stat("Request rate", f"sum({rate('response_total', p)})", unit="reqps")
    d.stat("Success rate", success_rate(p), unit="percentunit")
    d.stat("Certificate expires in", f"min(identity_cert_expiration_timestamp_seconds{{{p}}}) - time()", unit="s")
    d.stat("Proxy memory", f"sum(process_resident_memory_bytes{{{p}}})", unit="bytes")
    d.row("Requests")
    d.series("Request rate by direction", [(f"sum by (direction) ({rate('response_total', p)})", "{{direction}}")], unit="reqps")
    d.series("p95 latency by direction", [(latency(0.95, p, "direction"), "{{direction}}")], unit="ms")
    d.series(
        "Requests by peer",
        [
            (
                f"sum by (direction, client_id, dst_service, dst_pod) ({rate('request_total', p)})",
                "{{direction}} {{client_id}}{{dst_service}} {{dst_pod}}",
            )
        ],
        unit="reqps",
    )
    d.series(
        "Protocol detection",
        [(f"sum by (direction, protocol) ({rate('protocol_detect_total', p)})", "{{direction}} {{protocol}}")],
        unit="cps",
        description="Connections by detected protocol; opaque_port means the port is configured opaque and was not inspected.",
    )
    d.row("Connections")
    d.series("Open connections", [(f"sum by (direction, peer, tls) (tcp_open_connections{{{p}}})", "{{direction}} {{peer}} tls={{tls}}")])
    d.series(
        "Closed connections by error",
        [(f"sum by (direction, errno) ({rate('tcp_close_total', p)})", "{{direction}} {{errno}}")],
        unit="cps",
        description="An empty errno is a clean close.",
    )
    d.row("Proxy")
    d.series("CPU", [(f"sum({rate('process_cpu_seconds_total', p)})", "cores")], unit="short")
    d.series("Memory", [(f"sum(process_resident_memory_bytes{{{p}}})", "resident")], unit="bytes")
    return d


def service():
    d = Dashboard(
        "weft-service",
        "Weft / Service and traffic split",
        "A service as its clients' proxies see it: each backend's traffic, success and latency next to the TrafficSplit's configured weights.",
        [
            query_var(
                "namespace",
                "Namespace",
                'label_values(request_total{direction="outbound"}, dst_namespace)',
            ),
            query_var(
                "service",
                "Service",
                'label_values(request_total{direction="outbound",dst_namespace="$namespace"}, authority)',
            ),
        ],
    )
    s = 'direction="outbound",authority="$service"'
    # The apex's short name, taken from the authority, matches the split's
    # `apex` label.
    apex = 'label_replace(label_replace(vector(1), "service", "$service", "", ""), "apex", "$1", "service", "([^.]+)\\\\..*")'
    d.series(
        "Configured weights",
        [(f'max by (backend) (traffic_split_backend_weight{{dst_namespace="$namespace"}} * on (apex) group_left () {apex})', "{{backend}}")],
        unit="percentunit",
        description="Each backend's share of the TrafficSplit whose apex is this service, as the controller serves it.",
    )
    d.series(
        "Observed traffic share",
        [
            (
                f"sum by (dst_service) ({rate('response_total', s)}) / ignoring (dst_service) group_left () sum({rate('response_total', s)})",
                "{{dst_service}}",
            )
        ],
        unit="percentunit",
    )
    d.series("Request rate by backend", [(f"sum by (dst_service) ({rate('response_total', s)})", "{{dst_service}}")], unit="reqps")
    d.series("Success rate by backend", [(success_rate(s, "dst_service"), "{{dst_service}}")], unit="percentunit")
    d.series("p95 latency by backend", [(latency(0.95, s, "dst_service"), "{{dst_service}}")], unit="ms")
    d.series(
        "Requests by client workload",
        [(f"sum by (namespace, workload) ({rate('request_total', s)})", "{{namespace}}/{{workload}}")],
        unit="reqps",
    )
    d.row("Routes")
    # Requests no route applied to have empty route labels; they show as
    # "(no route)" so the shares add up.
    by_route = 'label_replace(sum by (route_kind, route_namespace, route_name) ({q}), "route_name", "(no route)", "route_name", "")'
    route_legend = "{{route_kind}} {{route_namespace}}/{{route_name}}"
    d.series(
        "Request rate by route",
        [(by_route.format(q=rate("response_total", s)), route_legend)],
        unit="reqps",
        description="Requests to this service by the HTTPRoute or GRPCRoute that matched them: a consumer route shows under the client's namespace.",
    )
    d.series(
        "Success rate by route",
        [(by_route.format(q=success_rate(s, "route_kind, route_namespace, route_name")), route_legend)],
        unit="percentunit",
    )
    d.series(
        "p95 latency by route",
        [(by_route.format(q=latency(0.95, s, "route_kind, route_namespace, route_name")), route_legend)],
        unit="ms",
    )
    d.row("Resilience")
    route = 'authority="$service"'
    d.series(
        "Retries",
        [
            (f"sum({rate('retries_total', route)})", "retried"),
            (f"sum({rate('retry_budget_exhausted_total', route)})", "not retried: budget spent"),
        ],
        unit="reqps",
    )
    d.series(
        "Circuit breaker",
        [(f"sum by (state) (increase(circuit_breaker_transitions_total{{{route}}}[{RI}]))", "{{state}}")],
        description="Endpoints ejected after consecutive failures (open) and readmitted (closed).",
    )
    return d


def proxy_health():
    d = Dashboard(
        "weft-proxy-health",
        "Weft / Proxy health",
        "The sidecars themselves: CPU, memory, connections, certificates, protocol detection and discovery.",
        [NAMESPACE_VAR],
    )
    n = 'job="weft-proxy",namespace="$namespace"'
    d.stat("Proxies up", f"count(up{{{n}}} == 1)")
    d.stat("Total proxy CPU", f"sum({rate('process_cpu_seconds_total', n)})", unit="short")
    d.stat("Total proxy memory", f"sum(process_resident_memory_bytes{{{n}}})", unit="bytes")
    d.stat("Soonest certificate expiry", f"min(identity_cert_expiration_timestamp_seconds{{{n}}}) - time()", unit="s")
    d.row("Resources")
    d.series("CPU by pod", [(f"sum by (pod) ({rate('process_cpu_seconds_total', n)})", "{{pod}}")])
    d.series("Memory by pod", [(f"sum by (pod) (process_resident_memory_bytes{{{n}}})", "{{pod}}")], unit="bytes")
    d.series("Open connections by pod", [(f"sum by (pod) (tcp_open_connections{{{n}}})", "{{pod}}")])
    d.series("Open file descriptors by pod", [(f"sum by (pod) (process_open_fds{{{n}}})", "{{pod}}")])
    d.row("Identity")
    d.series(
        "Certificate expires in",
        [(f"min by (pod) (identity_cert_expiration_timestamp_seconds{{{n}}}) - time()", "{{pod}}")],
        unit="s",
        description="Certificates renew well before expiry; a line heading to zero means renewals are failing.",
    )
    d.series(
        "Certificate requests by result",
        [(f"sum by (result) (increase(identity_cert_refresh_total{{{n}}}[1h]))", "{{result}}")],
    )
    d.series(
        "mTLS refusals by reason",
        [(f"sum by (direction, reason) ({rate('mtls_refused_total', n)})", "{{direction}} {{reason}}")],
        unit="cps",
    )
    d.row("Protocol detection and discovery")
    d.series(
        "Detection outcomes",
        [(f"sum by (direction, protocol) ({rate('protocol_detect_total', n)})", "{{direction}} {{protocol}}")],
        unit="cps",
    )
    d.series(
        "Detection timeouts and HTTP errors",
        [
            (f"sum by (direction) ({rate('protocol_detect_timeout_total', n)})", "{{direction}} detection timeout"),
            (f"sum by (direction) ({rate('http_error_total', n)})", "{{direction}} malformed or stalled HTTP"),
        ],
        unit="cps",
    )
    d.series(
        "Discovery lookups by result",
        [(f"sum by (result) ({rate('destination_lookups_total', n)})", "{{result}}")],
        unit="cps",
    )
    d.series(
        "Discovery updates and reconnects",
        [
            (f"sum({rate('destination_updates_total', n)})", "updates"),
            (f"sum({rate('destination_reconnects_total', n)})", "reconnects"),
        ],
        unit="cps",
    )
    return d


def control_plane():
    d = Dashboard(
        "weft-control-plane",
        "Weft / Control plane",
        "The controller (certificate authority and discovery) and the injector.",
        [],
    )
    cp = 'job="weft-control-plane"'
    d.stat("Connected proxies", "sum(discovery_connected_proxies)")
    d.stat("Certificates issued (1h)", "sum(increase(identity_certificates_issued_total[1h]))")
    d.stat("Issuer expires in", "min(identity_issuer_expiration_timestamp_seconds) - time()", unit="s")
    d.stat("Injector admissions (1h)", "sum(increase(injector_admissions_total[1h]))")
    d.row("Certificate authority")
    d.series("Certificates issued", [(f"sum({rate('identity_certificates_issued_total', '')})", "issued")], unit="cps")
    d.series(
        "Certificate requests refused by reason",
        [(f"sum by (reason) ({rate('identity_certificates_refused_total', '')})", "{{reason}}")],
        unit="cps",
    )
    d.row("Discovery")
    d.series(
        "Proxies and subscriptions",
        [("sum(discovery_connected_proxies)", "proxies"), ("sum(discovery_subscriptions)", "subscriptions")],
    )
    d.series(
        "Update latency",
        [
            (f"histogram_quantile({q}, sum by (le) ({rate('discovery_update_latency_ms_bucket', '')}))", f"p{int(q * 100)}")
            for q in (0.5, 0.99)
        ],
        unit="ms",
        description="From a change in the cluster to the update being handed to each subscribed proxy's stream.",
    )
    d.series(
        "Watch events",
        [(f"sum by (kind, action) ({rate('discovery_watch_events_total', '')})", "{{kind}} {{action}}")],
        unit="cps",
    )
    d.series("Objects held", [("max by (kind) (discovery_objects)", "{{kind}}")])
    d.row("Injector")
    d.series(
        "Admissions by outcome",
        [(f"sum by (outcome) ({rate('injector_admissions_total', '')})", "{{outcome}}")],
        unit="reqps",
    )
    d.series(
        "Review latency p99",
        [(f"histogram_quantile(0.99, sum by (le) ({rate('injector_review_duration_ms_bucket', '')}))", "p99")],
        unit="ms",
    )
    d.row("Processes")
    d.series("CPU", [(f"sum by (pod) ({rate('process_cpu_seconds_total', cp)})", "{{pod}}")])
    d.series("Memory", [(f"sum by (pod) (process_resident_memory_bytes{{{cp}}})", "{{pod}}")], unit="bytes")
    return d


DASHBOARDS = [mesh, namespace, workload, pod, service, proxy_health, control_plane]


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for make in DASHBOARDS:
        d = make()
        path = HERE / f"{d.uid}.json"
        text = json.dumps(d.json(), indent=2, ensure_ascii=False) + "\n"
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run {Path(__file__).name}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
