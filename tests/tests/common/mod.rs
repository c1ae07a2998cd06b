//! Shared setup for the end-to-end tests: a client pod and a server pod,
//! each with a real proxy, the server running the demo workloads.
#![allow(dead_code)]

use std::net::SocketAddr;

use weft_testbed::{Mesh, Pod, ProxyOptions};

pub const HTTP_PORT: u16 = 8080;
pub const GRPC_PORT: u16 = 50051;
/// MySQL's port: on the proxy's default opaque list.
pub const BANNER_OPAQUE_PORT: u16 = 3306;
/// Not on any list: detection has to time out.
pub const BANNER_PLAIN_PORT: u16 = 2525;

pub struct Pair {
    pub mesh: Mesh,
    pub client: Pod,
    pub server: Pod,
    pub client_proxy: u32,
    pub server_proxy: u32,
}

impl Pair {
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from((self.server.ip, HTTP_PORT))
    }
}

/// Builds the pair; `proxy_env` goes to both proxies.
pub async fn pair(label: &str, proxy_env: &[(&str, &str)]) -> Pair {
    let mesh = Mesh::new(label).expect("mesh");
    let client = mesh.add_pod("client", None).expect("client pod");
    let server = mesh.add_pod("server", None).expect("server pod");
    mesh.spawn_demo(&server, "http", HTTP_PORT, "server")
        .await
        .expect("http app");
    mesh.spawn_demo(&server, "grpc", GRPC_PORT, "server")
        .await
        .expect("grpc app");
    mesh.spawn_demo(&server, "banner", BANNER_OPAQUE_PORT, "server")
        .await
        .expect("banner app");
    mesh.spawn_demo(&server, "banner", BANNER_PLAIN_PORT, "server")
        .await
        .expect("banner app");
    let options = ProxyOptions {
        env: weft_testbed::env(proxy_env),
        cpu: None,
    };
    let client_proxy = mesh
        .spawn_proxy(&client, options.clone())
        .await
        .expect("client proxy");
    let server_proxy = mesh
        .spawn_proxy(&server, options)
        .await
        .expect("server proxy");
    Pair {
        mesh,
        client,
        server,
        client_proxy,
        server_proxy,
    }
}
