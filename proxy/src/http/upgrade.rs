//! WebSocket-style upgrades and CONNECT: the request goes to its target on
//! a fresh HTTP/1 connection and, if the upstream agrees, the two upgraded
//! streams are spliced together for good.

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::headers::strip_hop_by_hop;
use super::pool::{BoxBody, BoxError, Pool, UpstreamError};
use crate::transport::Target;

/// Forwards an upgrade request (`upgrade`: it asked for one; otherwise it
/// is a CONNECT) and splices both sides once the upstream switches.
pub(crate) async fn forward(
    pool: &Pool,
    mut req: Request<Incoming>,
    upgrade: bool,
    target: &Target,
) -> Result<Response<BoxBody>, UpstreamError> {
    let is_connect = req.method() == Method::CONNECT;
    let downstream = hyper::upgrade::on(&mut req);
    strip_hop_by_hop(req.headers_mut(), upgrade);
    let addr = target.addr;
    let (io, guard) = pool
        .connector
        .connect(target, weft_api::mesh::Protocol::Http1)
        .await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|source| UpstreamError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(error) = conn.with_upgrades().await {
            tracing::debug!(%addr, %error, "upstream upgrade connection ended");
        }
    });
    let req = req.map(|body| body.map_err(BoxError::from).boxed());
    let mut resp = sender
        .send_request(req)
        .await
        .map_err(|source| UpstreamError::Request { addr, source })?;
    let switched = if is_connect {
        resp.status().is_success()
    } else {
        resp.status() == StatusCode::SWITCHING_PROTOCOLS
    };
    if switched {
        let upstream = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let mut guard = guard;
            let (downstream, upstream) = tokio::join!(downstream, upstream);
            match (downstream, upstream) {
                (Ok(d), Ok(u)) => {
                    let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                    if let Err(error) = tokio::io::copy_bidirectional(&mut d, &mut u).await {
                        guard.set_error(&error);
                    }
                }
                (d, u) => {
                    tracing::debug!(downstream = ?d.err(), upstream = ?u.err(), "upgrade did not complete")
                }
            }
        });
    } else {
        strip_hop_by_hop(resp.headers_mut(), false);
    }
    Ok(resp.map(|body| body.map_err(BoxError::from).boxed()))
}

/// Whether the request holds its connection for good: an upgrade or CONNECT.
pub(crate) fn is_tunnel<B>(req: &Request<B>) -> Option<bool> {
    let upgrade = super::headers::wants_upgrade(req);
    (upgrade || req.method() == Method::CONNECT).then_some(upgrade)
}
