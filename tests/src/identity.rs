//! The control plane in the mesh on one machine: CA material made by
//! `weft-controller bootstrap`, a `weft-controller` process on the node
//! (reachable from pods at the bridge's gateway address), and per-pod
//! service-account tokens from the file token source.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{Mesh, Pod, metrics};

/// The node's address on the pod bridge (the pods' gateway).
pub const NODE_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 1);
pub const TRUST_DOMAIN: &str = "cluster.local";

/// CA material for one mesh: `ca.crt`, `ca.key`, `tls.crt`, `tls.key`, and
/// the file token source's key pair.
#[derive(Debug, Clone)]
pub struct CaDir {
    pub dir: PathBuf,
}

impl CaDir {
    pub fn anchors(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    fn token_signing_key(&self) -> PathBuf {
        self.dir.join("token-signing.key")
    }
    fn token_verify_key(&self) -> PathBuf {
        self.dir.join("token-signing.pub")
    }
}

/// How to run a controller.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub grpc_port: u16,
    pub admin_port: u16,
    /// `--cert-lifetime`, e.g. `15s`.
    pub cert_lifetime: String,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            grpc_port: weft_api::controller::GRPC_PORT,
            admin_port: weft_api::controller::ADMIN_PORT,
            cert_lifetime: "24h".into(),
        }
    }
}

/// A running controller on the node.
#[derive(Debug, Clone)]
pub struct Controller {
    pub pid: u32,
    pub ca: CaDir,
    pub options: ControllerOptions,
}

impl Controller {
    /// Where pods reach it.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((NODE_GATEWAY, self.options.grpc_port))
    }
}

/// A workload's SPIFFE ID in the test trust domain.
pub fn spiffe_id(namespace: &str, service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
}

impl Mesh {
    /// The node itself, as a place to run processes (it is not meshed).
    pub fn node(&self) -> Pod {
        Pod {
            name: "node".into(),
            netns: self.node_netns.clone(),
            ip: NODE_GATEWAY,
            ip6: None,
        }
    }

    fn controller_cmd(&self, args: &[&str]) -> anyhow::Result<String> {
        crate::sh(&self.bins.path("weft-controller").to_string_lossy(), args)
    }

    /// Makes a new trust anchor, issuer and token key under the mesh folder.
    pub fn make_ca(&self, name: &str) -> anyhow::Result<CaDir> {
        let dir = self.dir.join(name);
        let d = dir.to_string_lossy();
        self.controller_cmd(&["bootstrap", "--out", &d, "--trust-domain", TRUST_DOMAIN])?;
        self.controller_cmd(&["token-key", "--out", &d])?;
        Ok(CaDir { dir })
    }

    /// Replaces the issuer with a new one under the same anchor.
    pub fn rotate_issuer(&self, ca: &CaDir) -> anyhow::Result<()> {
        self.controller_cmd(&["rotate-issuer", "--dir", &ca.dir.to_string_lossy()])?;
        Ok(())
    }

    /// One step of a trust-anchor rotation: `add`, `issuer` or `retire`.
    pub fn rotate_anchor(&self, ca: &CaDir, step: &str) -> anyhow::Result<()> {
        self.controller_cmd(&[
            "rotate-anchor",
            "--dir",
            &ca.dir.to_string_lossy(),
            "--step",
            step,
        ])?;
        Ok(())
    }

    /// Starts a controller on the node and waits until it serves.
    pub async fn start_controller(
        &self,
        ca: &CaDir,
        options: ControllerOptions,
    ) -> anyhow::Result<Controller> {
        let node = self.node();
        let listen = format!("0.0.0.0:{}", options.grpc_port);
        let admin = format!("127.0.0.1:{}", options.admin_port);
        let token_source = format!("file:{}", ca.token_verify_key().display());
        let issuer_dir = ca.dir.to_string_lossy().into_owned();
        let discovery_dir = self.discovery_dir()?;
        let discovery = format!("file:{}", discovery_dir.display());
        let pid = self.spawn(
            &node,
            &format!("controller-{}", options.grpc_port),
            &self.bins.path("weft-controller"),
            &[
                "serve",
                "--issuer-dir",
                &issuer_dir,
                "--listen",
                &listen,
                "--admin",
                &admin,
                "--token-source",
                &token_source,
                "--cert-lifetime",
                &options.cert_lifetime,
                "--reload-interval",
                "500ms",
                "--discovery",
                &discovery,
                "--log-level",
                "info,weft_controller=debug",
            ],
            &[],
        )?;
        let controller = Controller {
            pid,
            ca: ca.clone(),
            options,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok((200, _)) = self.controller_get(&controller, "/ready").await {
                return Ok(controller);
            }
            if Instant::now() > deadline {
                bail!(
                    "controller not ready: {}",
                    self.log_of(
                        &node,
                        &format!("controller-{}", controller.options.grpc_port)
                    )
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn controller_get(&self, c: &Controller, path: &str) -> anyhow::Result<(u16, String)> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, c.options.admin_port));
        crate::http_request(&self.node(), addr, "GET", path).await
    }

    /// Scrapes a controller's metrics.
    pub async fn controller_metrics(&self, c: &Controller) -> anyhow::Result<metrics::Scrape> {
        let (status, body) = self.controller_get(c, "/metrics").await?;
        if status != 200 {
            bail!("controller metrics answered {status}");
        }
        Ok(metrics::Scrape::parse(&body))
    }

    /// The controller's log so far.
    pub fn controller_log(&self, c: &Controller) -> String {
        self.log_of(&self.node(), &format!("controller-{}", c.options.grpc_port))
    }

    /// Mints a service-account token into a file only the proxy can read.
    /// `extra` goes to `weft-controller token` (`--expired`, `--audience x`).
    pub fn mint_token(
        &self,
        ca: &CaDir,
        file: &str,
        namespace: &str,
        service_account: &str,
        extra: &[&str],
    ) -> anyhow::Result<PathBuf> {
        let key = ca.token_signing_key();
        let mut args = vec![
            "token",
            "--key",
            key.to_str().context("path")?,
            "--namespace",
            namespace,
            "--service-account",
            service_account,
        ];
        args.extend_from_slice(extra);
        let token = self.controller_cmd(&args)?;
        let path = self.dir.join(file);
        write_private(&path, token.trim().as_bytes())?;
        Ok(path)
    }

    /// Environment that gives a pod's proxy the identity `namespace/sa`
    /// from controller `c`, the way the injector does: the bundle of the
    /// moment inline, and a cache file of the pod's own for what the
    /// controller sends later (kept across restarts of the proxy).
    pub fn identity_env(
        &self,
        c: &Controller,
        pod: &Pod,
        namespace: &str,
        service_account: &str,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let token = self.mint_token(
            &c.ca,
            &format!("{}-token", pod.name),
            namespace,
            service_account,
            &[],
        )?;
        let mut env = identity_env_with_token(c, &spiffe_id(namespace, service_account), &token)?;
        let cache = self.dir.join(format!("{}-anchors", pod.name));
        std::fs::create_dir_all(&cache)?;
        nix::unistd::chown(
            &cache,
            Some(nix::unistd::Uid::from_raw(weft_api::PROXY_UID)),
            Some(nix::unistd::Gid::from_raw(weft_api::PROXY_GID)),
        )?;
        env.push((
            "WEFT_TRUST_ANCHORS_CACHE".into(),
            cache.join("ca.crt").to_string_lossy().into_owned(),
        ));
        Ok(env)
    }
}

/// The proxy variables for an identity and a token file, with the
/// controller's anchors of the moment inline.
pub fn identity_env_with_token(
    c: &Controller,
    identity: &str,
    token: &Path,
) -> anyhow::Result<Vec<(String, String)>> {
    let anchors = std::fs::read_to_string(c.ca.anchors())
        .with_context(|| format!("cannot read {}", c.ca.anchors().display()))?;
    Ok(vec![
        ("WEFT_CONTROLLER_ADDR".into(), c.addr().to_string()),
        ("WEFT_IDENTITY".into(), identity.into()),
        (
            "WEFT_IDENTITY_TOKEN_FILE".into(),
            token.to_string_lossy().into_owned(),
        ),
        ("WEFT_TRUST_ANCHORS".into(), anchors),
    ])
}

/// A file readable only by the proxy's user (as the kubelet mounts tokens).
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(weft_api::PROXY_UID)),
        Some(nix::unistd::Gid::from_raw(weft_api::PROXY_GID)),
    )?;
    Ok(())
}
