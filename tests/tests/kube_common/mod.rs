//! Weft's programs run on the host next to a real API server (tests/kube
//! apiserver.sh), shared by the tests that talk to Kubernetes.
#![allow(dead_code)]

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use serde::Deserialize;
use serde_json::{Value, json};
use weft_testbed::Bins;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Weft program on the host's loopback, next to the API server, with a
/// folder of its own (removed on drop). Its log is printed when the test
/// fails.
pub struct HostProcess {
    pub name: &'static str,
    pub dir: PathBuf,
    pub command: Vec<OsString>,
    pub kubeconfig: PathBuf,
    pub child: Child,
}

impl HostProcess {
    /// A fresh folder for `name`.
    pub fn folder(name: &str, label: &str) -> PathBuf {
        let dir = PathBuf::from(format!(
            "/tmp/weft-kube-{name}-{label}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Runs `command` (program first) with `KUBECONFIG` set, logging to
    /// the folder.
    pub fn spawn(
        name: &'static str,
        dir: PathBuf,
        command: Vec<OsString>,
        kubeconfig: &Path,
    ) -> Self {
        let child = Self::start(&dir, name, &command, kubeconfig);
        HostProcess {
            name,
            dir,
            command,
            kubeconfig: kubeconfig.to_path_buf(),
            child,
        }
    }

    pub fn start(dir: &Path, name: &str, command: &[OsString], kubeconfig: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))
            .unwrap();
        Command::new(&command[0])
            .args(&command[1..])
            .env("KUBECONFIG", kubeconfig)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL, then start again with the same arguments.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::start(&self.dir, self.name, &self.command, &self.kubeconfig);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.name))).unwrap_or_default()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- {} log\n{}", self.name, self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn args(items: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    items.iter().map(|i| i.as_ref().to_os_string()).collect()
}

/// A `weft-injector` with a serving certificate for 127.0.0.1 from its
/// own CA.
pub struct Injector {
    pub process: HostProcess,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub ca_pem: String,
}

impl Injector {
    pub fn start(kubeconfig: &Path) -> Injector {
        Self::with_mode(kubeconfig, "auto")
    }

    /// An injector run with `--sidecar-mode mode`.
    pub fn with_mode(kubeconfig: &Path, mode: &str) -> Injector {
        let dir = HostProcess::folder("injector", mode);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(
                &key,
                &rcgen::Issuer::from_ca_cert_der(ca.der(), &ca_key).unwrap(),
            )
            .unwrap();
        let file = |name: &str, contents: &str| {
            let path = dir.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        };
        let cert = file("tls.crt", &leaf.pem());
        let key = file("tls.key", &key.serialize_pem());
        let anchors = file("anchors.crt", &ca.pem());
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let command = args(&[
            &Bins::locate().unwrap().path("weft-injector"),
            &"--listen",
            &addr.to_string(),
            &"--admin",
            &admin.to_string(),
            &"--tls-cert",
            &cert,
            &"--tls-key",
            &key,
            &"--trust-anchors-file",
            &anchors,
            &"--sidecar-mode",
            &mode,
        ]);
        Injector {
            process: HostProcess::spawn("weft-injector", dir, command, kubeconfig),
            addr,
            admin,
            ca_pem: ca.pem(),
        }
    }

    pub async fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        admin_get(self.admin, path).await
    }

    /// Waits until the admin port says ready: the webhook is listening
    /// and has picked its sidecar mode. Panics with the log after 30 s.
    pub async fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !matches!(self.admin_get("/ready").await, Some((200, _))) {
            assert!(
                std::time::Instant::now() < deadline,
                "injector not ready:\n{}",
                self.process.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The shipped webhook configuration, pointed at this process.
    pub fn webhook_configuration(&self, name: &str) -> MutatingWebhookConfiguration {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/install/templates/webhook.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let mut config = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| Value::deserialize(d).unwrap())
            .find(|d| d["kind"] == "MutatingWebhookConfiguration")
            .unwrap();
        config["metadata"]["name"] = json!(name);
        let bundle = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        for hook in config["webhooks"].as_array_mut().unwrap() {
            let path = hook["clientConfig"]["service"]["path"]
                .as_str()
                .unwrap()
                .to_string();
            hook["clientConfig"] = json!({
                "url": format!("https://{}{path}", self.addr),
                "caBundle": bundle,
            });
        }
        serde_json::from_value(config).unwrap()
    }
}

pub async fn admin_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    Some((status, out))
}
