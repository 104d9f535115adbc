//! Fixtures of the CLI suites: a real `berth serve` on a temporary data directory, and the real
//! `berth` client run against it with a clean environment (its own HOME and config directory,
//! no `BERTH_*` variables but the URL).
//!
//! Include it next to `support` with
//! `#[path = "support/cli.rs"] mod cli_support;`.

#![allow(dead_code)]

use std::cell::RefCell;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::{self, Server};

/// A running server and a place for the client's files.
pub struct Berth {
    pub server: Server,
    /// Holds `data/` (the server's) and `home/` (the client's HOME and XDG_CONFIG_HOME).
    pub dir: tempfile::TempDir,
    /// The operator's admin token, read from `data/admin-token`.
    pub admin: String,
    /// Tenants made by [`Berth::tenant`]; their active leases are released on drop, so no
    /// runner process outlives the test.
    tenants: RefCell<Vec<String>>,
}

/// What one run of `berth` did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts exit 0 and returns self.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "berth failed: {self:#?}");
        self
    }

    /// Asserts exit `code` and returns self.
    #[track_caller]
    pub fn code(self, code: i32) -> Run {
        assert_eq!(self.code, Some(code), "unexpected exit code: {self:#?}");
        self
    }

    /// Asserts that stderr is one error line (a server error shown to people) containing
    /// every one of `parts`, followed by at most one `hint:` line.
    #[track_caller]
    pub fn one_line_error(self, parts: &[&str]) -> Run {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert!(
            lines.len() == 1 || lines.len() == 2 && lines[1].starts_with("hint: "),
            "expected one error line and at most a hint on stderr: {self:#?}"
        );
        assert!(lines[0].starts_with("error: "), "{self:#?}");
        for part in parts {
            assert!(lines[0].contains(part), "`{part}` missing: {self:#?}");
        }
        self
    }

    /// Asserts that stderr ends with a `hint:` line containing every one of `parts`.
    #[track_caller]
    pub fn hint(self, parts: &[&str]) -> Run {
        let last = self.stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("hint: "), "no hint: {self:#?}");
        for part in parts {
            assert!(
                last.contains(part),
                "`{part}` missing from the hint: {self:#?}"
            );
        }
        self
    }

    /// Asserts that stderr has no `hint:` line.
    #[track_caller]
    pub fn no_hint(self) -> Run {
        assert!(
            !self.stderr.lines().any(|line| line.starts_with("hint: ")),
            "unexpected hint: {self:#?}"
        );
        self
    }

    /// Asserts that the last line on stderr but a hint is the error, containing every one of
    /// `parts` (a wait prints the lease's states before it when stderr is not a terminal).
    #[track_caller]
    pub fn last_line_error(self, parts: &[&str]) -> Run {
        let last = self
            .stderr
            .lines()
            .rfind(|line| !line.starts_with("hint: "))
            .unwrap_or_default();
        assert!(last.starts_with("error: "), "{self:#?}");
        for part in parts {
            assert!(last.contains(part), "`{part}` missing: {self:#?}");
        }
        self
    }

    /// stdout parsed as one JSON document.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("stdout is not one JSON document ({err}): {self:#?}"))
    }
}

/// A tenant set up for leases: a `process` provider `local` and a pool `local` whose runner
/// sleeps, plus a `leases:write` token.
pub struct Tenant {
    pub name: String,
    pub token: String,
}

impl Berth {
    /// Starts `berth serve` on a fresh temporary data directory.
    pub fn start() -> Berth {
        Berth::start_with(&[])
    }

    /// Starts `berth serve` with `extra` flags on a fresh temporary data directory.
    pub fn start_with(extra: &[&str]) -> Berth {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(dir.path().join("home")).expect("home");
        let server = Server::start(&data, extra);
        let admin = std::fs::read_to_string(data.join("admin-token"))
            .expect("the admin token file exists once berth serves")
            .trim()
            .to_owned();
        Berth {
            server,
            dir,
            admin,
            tenants: RefCell::new(Vec::new()),
        }
    }

    /// The client's HOME (its config directory is `home/.config`).
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// Where `berth login` writes the config file in this environment.
    pub fn config_file(&self) -> PathBuf {
        self.home().join(".config/berth/config.toml")
    }

    /// `berth` with a clean environment: PATH, HOME, XDG_CONFIG_HOME and BERTH_URL only.
    pub fn cmd(&self) -> Command {
        let mut cmd = support::berth();
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .env("XDG_CONFIG_HOME", self.home().join(".config"))
            .env("BERTH_URL", &self.server.url)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    /// `berth` as the operator.
    pub fn admin_cmd(&self) -> Command {
        let mut cmd = self.cmd();
        cmd.env("BERTH_TOKEN", &self.admin);
        cmd
    }

    /// `berth` as a tenant's `leases:write` token.
    pub fn tenant_cmd(&self, tenant: &Tenant) -> Command {
        let mut cmd = self.cmd();
        cmd.env("BERTH_TOKEN", &tenant.token)
            .env("BERTH_TENANT", &tenant.name);
        cmd
    }

    /// Runs `berth ARGS` as the operator.
    pub fn admin(&self, args: &[&str]) -> Run {
        run(self.admin_cmd().args(args))
    }

    /// Runs `berth ARGS` with a tenant's token.
    pub fn as_tenant(&self, tenant: &Tenant, args: &[&str]) -> Run {
        run(self.tenant_cmd(tenant).args(args))
    }

    /// Releases the active leases of `tenant` when the test ends (for tenants made otherwise
    /// than by [`Berth::tenant`]).
    pub fn track(&self, tenant: &str) {
        self.tenants.borrow_mut().push(tenant.to_owned());
    }

    /// Creates a tenant with `limits` flags, a `process` provider `local` (runners are
    /// `sleep`s) and a pool `local` at $0.12/hour, and a `leases:write` token — all through
    /// the binary.
    pub fn tenant(&self, name: &str, limits: &[&str]) -> Tenant {
        self.admin(&[&["tenant", "create", name], limits].concat())
            .ok();
        self.track(name);
        let with_tenant = |args: &[&str]| self.admin(&[&["--tenant", name], args].concat()).ok();
        with_tenant(&[
            "provider",
            "set",
            "local",
            "--kind",
            "process",
            "--config",
            r#"{"grace_ms": 1000}"#,
        ]);
        with_tenant(&[
            "pool",
            "set",
            "local",
            "--provider",
            "local",
            "--machine-type",
            "local",
            "--price",
            "0.12",
            "--",
            "sh",
            "-c",
            "exec sleep 120",
        ]);
        let created = with_tenant(&["token", "create", "--scope", "leases:write", "-o", "json"]);
        let token = created.json()["token"]
            .as_str()
            .expect("the token is in the answer")
            .to_owned();
        Tenant {
            name: name.to_owned(),
            token,
        }
    }
}

impl Drop for Berth {
    /// Releases every active lease of the tenants made here, so their runner processes end.
    fn drop(&mut self) {
        for tenant in self.tenants.borrow().iter() {
            let listed = self.admin(&[
                "--tenant", tenant, "lease", "list", "--state", "active", "-o", "id",
            ]);
            for id in listed.stdout.lines() {
                let _ = self.admin(&["--tenant", tenant, "lease", "release", id, "--wait", "30s"]);
            }
        }
    }
}

/// Runs a prepared command to completion (bounded by the commands' own timeouts).
pub fn run(cmd: &mut Command) -> Run {
    let output = cmd.output().expect("berth runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs a prepared command with `input` on stdin.
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> Run {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("berth runs");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let output = child.wait_with_output().expect("berth finishes");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The mode bits of a file.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}
