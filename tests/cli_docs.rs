//! The documentation runs: README.md's quickstart and tour, its table of `berth serve` flags,
//! and the GitHub Actions example, each checked against the real binary so they cannot drift
//! from it.

#[path = "support/cli.rs"]
mod cli_support;
mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cli_support::Berth;

/// The binary under test.
const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn repo_file(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The text between `<!-- NAME:begin -->` and `<!-- NAME:end -->`.
fn section<'a>(readme: &'a str, name: &str) -> &'a str {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let start = readme.find(&begin).expect("the begin marker") + begin.len();
    let stop = readme[start..].find(&end).expect("the end marker") + start;
    &readme[start..stop]
}

/// The contents of the ```sh fences of `text`, in order.
fn sh_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), line) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// Replaces `cargo run --release --` (which would build) with the binary under test.
fn with_binary(block: &str) -> String {
    let script = block.replace("cargo run --release --", &format!("'{BERTH}'"));
    assert!(
        !script.contains("cargo "),
        "only `cargo run --release --` is replaced: {script}"
    );
    script
}

/// A clean environment rooted in `dir`: PATH, HOME and XDG_CONFIG_HOME only.
fn clean_env(cmd: &mut Command, dir: &Path) {
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.join("home"))
        .env("XDG_CONFIG_HOME", dir.join("home/.config"))
        .current_dir(dir)
        .stdin(Stdio::null());
}

/// Waits for a child at most `limit`, then kills it and fails.
fn wait_output(mut child: Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("reap");
            panic!(
                "still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// The README's quickstart, run verbatim: its first block (`berth serve`, with only the
/// listen address and log format changed through their environment twins, so the test can
/// find it) starts the server on a fresh `./berth-data`, which says where the admin token is;
/// the second block (quickstart, lease, usage) and then the tour run as one shell session,
/// with `cargo run --release --` replaced by the test binary and `target/release/berth` a link
/// to it. Every line must succeed (`set -e`).
#[test]
fn readme_quickstart_and_tour_run_verbatim() {
    let readme = repo_file("README.md");
    let quickstart = sh_blocks(section(&readme, "quickstart"));
    assert_eq!(
        quickstart.len(),
        2,
        "the quickstart is two blocks: serve, then the client"
    );
    let tour = sh_blocks(section(&readme, "tour"));
    assert_eq!(tour.len(), 1, "the tour is one block");
    let serve_lines: Vec<&str> = quickstart[0]
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .collect();
    assert_eq!(serve_lines, ["cargo run --release -- serve"]);

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("home")).expect("home");
    std::fs::create_dir_all(dir.path().join("target/release")).expect("target");
    std::os::unix::fs::symlink(BERTH, dir.path().join("target/release/berth")).expect("link");

    // Terminal 1.
    let mut serve = Command::new("bash");
    clean_env(&mut serve, dir.path());
    let mut server = serve
        .arg("-c")
        .arg(format!("exec {}", with_binary(serve_lines[0])))
        .env("BERTH_LISTEN", "127.0.0.1:0")
        .env("BERTH_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("berth serve starts");
    let stderr = server.stderr.take().expect("stderr");
    let (tx, log) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut addr, mut first_run) = (None, None);
    while addr.is_none() || first_run.is_none() {
        let line = log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("berth logs its address and the first-run message within 60 s");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(found) = event["fields"]["addr"].as_str() {
            addr = Some(found.to_owned());
        }
        if let Some(path) = event["fields"]["admin_token_file"].as_str() {
            first_run = Some(path.to_owned());
        }
    }
    assert_eq!(first_run.as_deref(), Some("./berth-data/admin-token"));
    let url = format!("http://{}", addr.expect("address"));

    // Terminal 2: the quickstart's client block, then the tour, in one shell.
    let script = format!(
        "set -euo pipefail\nset -x\n{}\n{}",
        with_binary(&quickstart[1]),
        with_binary(&tour[0])
    );
    let mut client = Command::new("bash");
    clean_env(&mut client, dir.path());
    let child = client
        .arg("-c")
        .arg(&script)
        .env("BERTH_URL", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash runs");
    let output = wait_output(child, Duration::from_secs(180));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);

    // Whatever happened, no runner outlives the test.
    let admin = std::fs::read_to_string(dir.path().join("berth-data/admin-token"))
        .expect("admin token")
        .trim()
        .to_owned();
    for tenant in ["demo", "acme"] {
        let mut list = Command::new(BERTH);
        clean_env(&mut list, dir.path());
        let listed = list
            .args(["--url", &url, "--token", &admin, "--tenant", tenant])
            .args(["lease", "list", "--state", "active", "-o", "id"])
            .output()
            .expect("list");
        for id in String::from_utf8_lossy(&listed.stdout).lines() {
            let mut release = Command::new(BERTH);
            clean_env(&mut release, dir.path());
            let _ = release
                .args(["--url", &url, "--token", &admin, "--tenant", tenant])
                .args(["lease", "release", id, "--wait", "30s"])
                .output();
        }
    }
    support::signal(&server, "TERM");
    let stopped = support::wait_bounded(&mut server);

    assert!(
        output.status.success(),
        "the README's lines failed:\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(stdout.contains("tenant    demo (created)"), "{stdout}");
    // The tour's first runner printed this as it started, several commands before
    // `lease logs` runs.
    assert!(
        stdout.contains("hello from lease_"),
        "the tour shows its runner's output: {stdout}"
    );
    assert!(stdout.contains("lease_"), "{stdout}");
    assert!(stdout.contains("released"), "{stdout}");
    assert!(
        stdout.contains("exit code 3: acme is at its cap"),
        "the third lease is refused by the cap: {stdout}\n{stderr}"
    );
    assert!(stderr.contains("(concurrency_cap)"), "{stderr}");
    assert!(
        stdout.contains("$0.12"),
        "prices read as currency: {stdout}"
    );
    assert!(stopped.success(), "berth serve stops cleanly");
}

/// Every flag of `berth serve --help` has a row in the README's configuration table, and
/// every row names a real flag.
#[test]
fn readme_documents_every_serve_flag() {
    let help = Command::new(BERTH)
        .args(["serve", "--help"])
        .env_clear()
        .output()
        .expect("berth serve --help");
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    // The client's global options (`--url`, `--token`, …) are documented in `berth --help`
    // only, not here.
    assert!(!help.contains("--config-file"), "{help}");
    let flags: Vec<String> = help
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let flag = line.split([' ', ',', '=', '<']).next()?;
            (flag.starts_with("--") && flag.len() > 2).then(|| flag.to_owned())
        })
        .filter(|flag| flag != "--help" && flag != "--version")
        .collect();
    assert!(flags.len() >= 10, "{flags:?}");

    let readme = repo_file("README.md");
    let start = readme
        .find("## Configuration of `berth serve`")
        .expect("the configuration section");
    let table = &readme[start..];
    let table = &table[..table[2..].find("\n## ").map_or(table.len(), |end| end + 2)];
    let rows: Vec<&str> = table
        .lines()
        .filter_map(|line| line.strip_prefix("| `--"))
        .filter_map(|rest| rest.split('`').next())
        .collect();
    for flag in &flags {
        assert!(
            rows.contains(&&flag[2..]),
            "`{flag}` of `berth serve` is missing from the README's table"
        );
    }
    for row in &rows {
        assert!(
            flags.iter().any(|flag| &flag[2..] == *row),
            "the README documents `--{row}`, which `berth serve` does not have"
        );
    }
}

/// The GitHub Actions example requests a lease with `--github-output`, uses
/// `steps.lease.outputs.runner_address`, and releases in an `if: always()` step; its `berth`
/// lines run against a real server, with the step outputs taken from $GITHUB_OUTPUT.
#[test]
fn github_actions_example_runs() {
    let workflow = repo_file("examples/github-actions/lease.yml");
    let steps: Vec<&str> = workflow.split("\n      - ").skip(1).collect();
    let lease_step = steps
        .iter()
        .find(|step| step.contains("id: lease"))
        .expect("a step with id `lease`");
    assert!(lease_step.contains("berth lease request") && lease_step.contains("--github-output"));
    assert!(workflow.contains("steps.lease.outputs.runner_address"));
    let release_step = steps
        .iter()
        .find(|step| step.contains("berth lease release"))
        .expect("a release step");
    assert!(release_step.contains("if: always()"), "{release_step}");

    let commands: Vec<&str> = workflow
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("run: "))
        .filter(|command| command.starts_with("berth "))
        .collect();
    assert_eq!(commands.len(), 2, "request and release: {commands:?}");

    let berth = Berth::start();
    let tenant = berth.tenant("acme", &[]);
    berth
        .admin(&[
            "--tenant",
            "acme",
            "pool",
            "set",
            "linux",
            "--provider",
            "local",
            "--machine-type",
            "local",
            "--price",
            "0.20",
            "--",
            "sh",
            "-c",
            "exec sleep 120",
        ])
        .ok();
    let bin = berth.dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    std::os::unix::fs::symlink(BERTH, bin.join("berth")).expect("link");
    let github_output = berth.dir.path().join("github_output");
    std::fs::write(&github_output, "").expect("outputs");
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH");

    for command in commands {
        let outputs = parse_outputs(&github_output);
        let mut line = command
            .replace("${{ github.repository }}", "acme/web")
            .replace("${{ github.run_id }}", "42");
        for (name, value) in &outputs {
            line = line.replace(&format!("${{{{ steps.lease.outputs.{name} }}}}"), value);
        }
        assert!(!line.contains("${{"), "unresolved expression in {line}");
        let mut cmd = Command::new("bash");
        clean_env(&mut cmd, berth.dir.path());
        let child = cmd
            .arg("-c")
            .arg(&line)
            .env("PATH", &path)
            .env("BERTH_URL", &berth.server.url)
            .env("BERTH_TENANT", &tenant.name)
            .env("BERTH_TOKEN", &tenant.token)
            .env("GITHUB_OUTPUT", &github_output)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bash");
        let output = wait_output(child, Duration::from_secs(120));
        assert!(
            output.status.success(),
            "`{line}` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let outputs = parse_outputs(&github_output);
    let lease_id = outputs.get("lease_id").expect("lease_id output");
    assert!(outputs.get("runner_address").is_some_and(|a| !a.is_empty()));
    let lease = berth
        .as_tenant(&tenant, &["lease", "show", lease_id, "-o", "json"])
        .ok()
        .json();
    assert_eq!(lease["labels"]["repo"], "acme/web");
    assert!(
        matches!(lease["state"].as_str(), Some("releasing" | "released")),
        "the release step ended the lease: {lease}"
    );
}

/// `name=value` lines of a $GITHUB_OUTPUT file.
fn parse_outputs(path: &PathBuf) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .expect("outputs")
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// README's "Deploy" (completions, man page, version) and "Backup" blocks run verbatim
/// against a running server with a tenant `acme`, from the directory that holds its
/// `berth-data`; a berth then starts on the data directory the offline restore made.
#[test]
fn readme_deploy_and_backup_sections_run() {
    let readme = repo_file("README.md");
    let deploy = sh_blocks(section(&readme, "deploy"));
    let backup = sh_blocks(section(&readme, "backup"));
    assert_eq!((deploy.len(), backup.len()), (1, 1));
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("home")).expect("home");
    std::fs::create_dir_all(dir.path().join("bin")).expect("bin");
    std::os::unix::fs::symlink(BERTH, dir.path().join("bin/berth")).expect("link");
    let data = dir.path().join("berth-data");
    let server = support::Server::start(&data, &["--enable-fake"]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (status, body) = runtime.block_on(server.call(
        "POST",
        "/v1/tenants",
        Some(serde_json::json!({ "name": "acme" })),
    ));
    assert_eq!(status, 201, "{body}");
    let script = format!("set -euo pipefail\nset -x\n{}\n{}", deploy[0], backup[0]);
    let mut client = Command::new("bash");
    clean_env(&mut client, dir.path());
    let path = format!(
        "{}:{}",
        dir.path().join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = client
        .arg("-c")
        .arg(&script)
        .env("PATH", path)
        .env("BERTH_URL", &server.url)
        .env("BERTH_TOKEN", server.admin_token())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash runs");
    let output = wait_output(child, Duration::from_secs(120));
    assert!(
        output.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(dir.path().join("berth.bash").exists() && dir.path().join("berth.1").exists());
    server.kill();
    let restored = support::Server::start(&dir.path().join("restored-data"), &[]);
    let (status, tenant) = runtime.block_on(restored.call("GET", "/v1/tenants/acme", None));
    assert_eq!(status, 200, "{tenant}");
    restored.kill();
}
