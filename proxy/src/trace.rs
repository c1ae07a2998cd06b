//! Distributed tracing: a span per HTTP request, exported over OTLP/gRPC.
//!
//! Each proxy continues the trace the request carries in its W3C
//! `traceparent` (or starts one) and passes its own span on as the
//! request's new parent, so the client proxy's span is the parent of the
//! server proxy's, which is the parent of whatever the app records. Spans
//! are batched and exported off the request path; with no collector
//! configured there is no tracer, and the request path does no tracing
//! work at all.

use std::sync::Arc;

use http::Request;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use weft_api::identity::SpiffeId;

use crate::metrics::Direction;

/// The proxy's tracer; exists only when a collector is configured.
#[derive(Debug)]
pub struct Tracer {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

/// The OTLP exporter could not be built for the configured collector.
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter for {collector}")]
pub struct ExporterError {
    collector: http::Uri,
    #[source]
    source: opentelemetry_otlp::ExporterBuildError,
}

impl Tracer {
    /// Sets up export to `collector`. Must run inside the Tokio runtime
    /// (the exporter's gRPC channel lives there). The channel connects
    /// lazily: an unreachable collector costs dropped spans, never
    /// requests.
    pub fn new(
        collector: &http::Uri,
        sample_ratio: f64,
        identity: Option<&SpiffeId>,
    ) -> Result<Arc<Self>, ExporterError> {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(collector.to_string())
            .with_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|source| ExporterError {
                collector: collector.clone(),
                source,
            })?;
        // Spans are named after the workload's service account, so a trace
        // view shows which workload each hop is.
        let service_name = identity.map_or_else(
            || "weft-proxy".to_string(),
            |id| format!("{}.{}", id.service_account(), id.namespace()),
        );
        let mut resource = Resource::builder()
            .with_service_name(service_name)
            .with_attribute(KeyValue::new("weft.component", "proxy"));
        if let Some(id) = identity {
            resource = resource
                .with_attribute(KeyValue::new("weft.identity", id.to_string()))
                .with_attribute(KeyValue::new(
                    "k8s.namespace.name",
                    id.namespace().to_string(),
                ));
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                sample_ratio,
            ))))
            .build();
        let tracer = provider.tracer("weft-proxy");
        Ok(Arc::new(Tracer {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        }))
    }

    /// Starts the request's span under the parent its `traceparent` names
    /// (a new trace if none), and rewrites `traceparent` so the next hop
    /// is this span's child.
    pub fn start<B>(
        &self,
        req: &mut Request<B>,
        direction: Direction,
        authority: &str,
    ) -> RequestSpan {
        let parent = self.propagator.extract(&HeaderExtractor(req.headers()));
        let kind = match direction {
            // The app's request leaves the pod here; another proxy's
            // arrives.
            Direction::Outbound => SpanKind::Client,
            Direction::Inbound => SpanKind::Server,
        };
        let span = self
            .tracer
            .span_builder(format!("{} {}", direction.as_str(), req.method()))
            .with_kind(kind)
            .with_attributes([
                KeyValue::new("http.request.method", req.method().to_string()),
                KeyValue::new("url.path", req.uri().path().to_string()),
                KeyValue::new("server.address", authority.to_string()),
                KeyValue::new("weft.direction", direction.as_str()),
            ])
            .start_with_context(&self.tracer, &parent);
        let cx = parent.with_span(span);
        self.propagator
            .inject_context(&cx, &mut HeaderInjector(req.headers_mut()));
        RequestSpan { cx }
    }

    /// Exports what is still queued; called when the proxy drains.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::debug!(%error, "trace exporter shutdown");
        }
    }
}

/// One request's span; ended when the response is over.
#[derive(Debug)]
pub struct RequestSpan {
    cx: Context,
}

impl RequestSpan {
    pub fn end(self, status: u16, grpc_status: Option<u16>, failed: bool) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if let Some(code) = grpc_status {
            span.set_attribute(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
        }
        if failed {
            span.set_status(Status::error(""));
        }
        span.end();
    }
}
