//! The demo gRPC service.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::proto::echo_server::{Echo, EchoServer};
use crate::proto::{EchoReply, EchoRequest};

#[derive(Debug, Clone)]
pub struct EchoService {
    pub name: String,
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn say(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let req = req.into_inner();
        Ok(Response::new(EchoReply {
            message: req.message,
            served_by: self.name.clone(),
            sequence: 0,
        }))
    }

    type RepeatStream = ReplyStream;
    async fn repeat(
        &self,
        req: Request<EchoRequest>,
    ) -> Result<Response<Self::RepeatStream>, Status> {
        let req = req.into_inner();
        if req.count > 100_000 {
            return Err(Status::invalid_argument("count must be at most 100000"));
        }
        let name = self.name.clone();
        let stream = futures_util::stream::iter(0..req.count).map(move |i| {
            Ok(EchoReply {
                message: req.message.clone(),
                served_by: name.clone(),
                sequence: i,
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    type ChatStream = ReplyStream;
    async fn chat(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        let name = self.name.clone();
        let stream = req.into_inner().enumerate().map(move |(i, msg)| {
            msg.map(|m| EchoReply {
                message: m.message,
                served_by: name.clone(),
                sequence: i as u32,
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

pub async fn serve(listener: tokio::net::TcpListener, name: String) -> anyhow::Result<()> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(EchoService { name }))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
