//! Response metrics that wait for the end of the body when they must: a
//! gRPC status is in the trailers, and a traced span covers the whole
//! exchange.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame};

use super::pool::{BoxBody, BoxError};
use crate::metrics::Metrics;
use crate::metrics::http::{Classification, ResponseLabels};
use crate::trace::RequestSpan;

/// Counts a response once it is over: at once for plain HTTP, or when a
/// gRPC body ends (its status is in the trailers) or a traced response's
/// body ends (the span covers the whole exchange).
#[derive(Debug)]
pub(crate) struct ResponseMeter {
    pub metrics: Arc<Metrics>,
    pub labels: ResponseLabels,
    /// Time to response headers.
    pub latency_ms: Option<f64>,
    pub span: Option<RequestSpan>,
}

impl ResponseMeter {
    /// `broken`: the body failed midway.
    pub(crate) fn finish(mut self, grpc_status: Option<u16>, broken: bool) {
        self.labels.grpc_status = grpc_status;
        if broken || grpc_status.is_some_and(|code| code != 0) {
            self.labels.classification = Classification::Failure;
        }
        self.metrics.http.response.get_or_create(&self.labels).inc();
        if let Some(ms) = self.latency_ms {
            self.metrics
                .http
                .response_latency_ms
                .get_or_create(&self.labels)
                .observe(ms);
        }
        if let Some(span) = self.span.take() {
            span.end(
                self.labels.status_code,
                grpc_status,
                self.labels.classification == Classification::Failure,
            );
        }
    }
}

/// A response body that reports to its meter when it ends, fails or is
/// dropped by the client.
pub(crate) struct MeteredBody {
    pub inner: BoxBody,
    pub meter: Option<ResponseMeter>,
}

impl MeteredBody {
    fn finish(&mut self, grpc_status: Option<u16>, broken: bool) {
        if let Some(meter) = self.meter.take() {
            meter.finish(grpc_status, broken);
        }
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.finish(grpc_status(trailers), false);
                }
            }
            std::task::Poll::Ready(Some(Err(_))) => this.finish(None, true),
            std::task::Poll::Ready(None) => this.finish(None, false),
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        self.finish(None, false);
    }
}

pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}
