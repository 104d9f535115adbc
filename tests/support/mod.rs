//! Shared fixtures of the end-to-end suites: start the real `berth` binary on a data
//! directory and an ephemeral loopback port, and stop it.

#![allow(dead_code)]

pub mod fake_github;
pub mod inproc;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `berth serve`.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    /// Every line the server logged to stderr after its address is sent here by a reader
    /// thread.
    pub log: mpsc::Receiver<String>,
    /// The lines it logged before its address, read while waiting for it (a message of the
    /// start-up may come just before or just after the address).
    pub early: Vec<String>,
    /// The installation id the server announced with its address.
    pub installation_id: Option<String>,
}

/// The `berth` binary cargo built for these tests.
pub fn berth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_berth"))
}

impl Server {
    /// Starts `berth serve` on `data_dir`, listening on 127.0.0.1 with a port the kernel
    /// picks, and waits (bounded) until it logs its address.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(data_dir, extra, &[])
    }

    /// [`Server::start`] with extra environment variables (`BERTH_LOG`, `BERTH_ADMIN_TOKEN`).
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = berth();
        command.envs(env.iter().copied());
        Server::spawn(command, data_dir, extra)
    }

    /// [`Server::start`] through `sh -c "<prelude>; exec berth serve …"`: the prelude sets up
    /// the process (resource limits, ignored signals) that berth then inherits.
    pub fn start_after(data_dir: &Path, extra: &[&str], prelude: &str) -> Server {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("{prelude}; exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_berth"));
        Server::spawn(command, data_dir, extra)
    }

    #[allow(
        clippy::zombie_processes,
        reason = "the returned Server's Drop kills and reaps the child"
    )]
    fn spawn(mut command: Command, data_dir: &Path, extra: &[&str]) -> Server {
        let mut child = command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("berth starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut early = Vec::new();
        loop {
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            let line = log
                .recv_timeout(remaining)
                .expect("berth logs its address within 60 s");
            let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if let Some(addr) = value["fields"]["addr"].as_str() {
                return Server {
                    child,
                    url: format!("http://{addr}"),
                    data_dir: data_dir.to_owned(),
                    log,
                    early,
                    installation_id: value["fields"]["installation_id"]
                        .as_str()
                        .map(str::to_owned),
                };
            }
            early.push(line);
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        signal(&self.child, "TERM");
        wait_bounded(&mut self.child)
    }

    /// Waits (bounded) for the server to exit by itself, and its exit status.
    pub fn wait_exit(mut self) -> std::process::ExitStatus {
        wait_bounded(&mut self.child)
    }

    /// SIGKILLs the server and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Every log line received so far.
    pub fn drain_log(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }

    /// The operator's admin token (created in the data directory on first start).
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin-token"))
            .expect("admin-token file")
            .trim()
            .to_owned()
    }

    /// One JSON call as the operator: `(status, body)` (`Null` for an empty body).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let client = reqwest::Client::new();
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(self.admin_token());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("berth answers");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body");
        let value = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_default()
        };
        (status, value)
    }

    /// Waits (long poll, bounded) until the lease is `ready` or has `ended`; returns it.
    pub async fn wait_lease(&self, tenant: &str, id: &str, until: &str) -> serde_json::Value {
        for _ in 0..10 {
            let path = format!("/v1/tenants/{tenant}/leases/{id}?wait={until}&timeout_s=10");
            let (status, lease) = self.call("GET", &path, None).await;
            assert_eq!(status, 200, "{lease}");
            let state = lease["state"].as_str().unwrap_or_default();
            let terminal = matches!(state, "released" | "expired" | "failed" | "canceled");
            if terminal || (until == "ready" && state == "ready") {
                return lease;
            }
        }
        panic!("lease {id} did not become {until} within 100 s");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{name} failed");
}

pub fn wait_bounded(child: &mut Child) -> std::process::ExitStatus {
    for _ in 0..3_000 {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("berth did not exit within 30 s");
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`, as GitHub signs a webhook delivery.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}
