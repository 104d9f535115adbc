//! Runners are untrusted code (DESIGN.md §6): a CI job on a `process` runner runs a stranger's
//! pull request. With berth running as root, this suite starts real runners as other users
//! and has one of them try to read what it must not: the data directory, the admin token, the
//! master key, berth's environment, another runner's environment and files, and its own
//! runner record. Every attempt must fail while the same probe reads its own environment.
//!
//! These tests need root (CI runs as root). Without it they say so and check nothing else.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use support::Server;

/// Whether this process runs as root (the real uid in `/proc/self/status`).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next())
            == Some("0")
    })
}

/// A temporary directory the runners' users may pass through (tempdirs are 0700).
fn passable_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    dir
}

/// Creates tenant `acme`, a `process` account and a pool `name` running `command`.
async fn pool(server: &Server, name: &str, command: Value) {
    let (status, _) = server
        .call("POST", "/v1/tenants", Some(json!({ "name": "acme" })))
        .await;
    assert!(status == 201 || status == 409);
    let (status, body) = server
        .call(
            "PUT",
            "/v1/tenants/acme/providers/local",
            Some(json!({ "kind": "process", "config": { "grace_ms": 200 } })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/tenants/acme/pools/{name}"),
            Some(json!({ "provider": "local", "machine_type": "local", "hourly_price_micros": 0, "command": command })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Requests a lease of `pool` and waits until its runner is ready; returns the lease.
async fn ready_lease(server: &Server, pool: &str) -> Value {
    let (status, lease) = server
        .call(
            "POST",
            "/v1/tenants/acme/leases",
            Some(json!({ "pool": pool, "ttl_s": 600 })),
        )
        .await;
    assert_eq!(status, 201, "{lease}");
    server
        .wait_lease("acme", lease["id"].as_str().expect("id"), "ready")
        .await
}

/// Releases a lease and waits until its runner is gone (runners must not outlive the test).
async fn release(server: &Server, lease: &Value) {
    let id = lease["id"].as_str().expect("id");
    let (status, _) = server
        .call(
            "POST",
            &format!("/v1/tenants/acme/leases/{id}/release"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    server.wait_lease("acme", id, "ended").await;
}

/// The runner's directory (its work directory's parent).
fn runner_dir(lease: &Value) -> PathBuf {
    Path::new(lease["runner"]["address"].as_str().expect("address"))
        .parent()
        .expect("a parent")
        .to_owned()
}

/// The runner's stdout once it printed `done` (bounded: 60 s).
async fn output_when_done(lease: &Value) -> String {
    let log = runner_dir(lease).join("stdout.log");
    for _ in 0..600 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().any(|line| line == "done") {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the probe did not finish: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// The probe: one line `READ <what>` or `DENIED <what>` per attempt, then `done`.
fn probe_script(data: &Path, checks: &[(&str, String)]) -> String {
    let mut script = String::from(
        "check() { if sh -c \"$2\" >/dev/null 2>&1; then echo \"READ $1\"; else echo \"DENIED $1\"; fi; }\n",
    );
    script.push_str("echo \"uid $(id -u)\"\n");
    let data = data.display();
    for (name, command) in [
        ("admin-token", format!("cat '{data}/admin-token'")),
        ("master-key", format!("cat '{data}/master.key'")),
        ("data-dir", format!("ls '{data}'")),
        ("directory-db", format!("cat '{data}/directory.sqlite'")),
        (
            "own-record",
            "echo x >> \"$BERTH_RUNNER_DIR/runner.json\"".to_owned(),
        ),
        ("own-environ", "cat /proc/$$/environ".to_owned()),
    ]
    .into_iter()
    .chain(checks.iter().map(|(n, c)| (*n, c.clone())))
    {
        script.push_str(&format!(
            "check {name} '{}'\n",
            command.replace('\'', "'\\''")
        ));
    }
    script.push_str("echo done\nexec sleep 600\n");
    script
}

/// What the probe tries to read exists: a denial means the runner may not, not that the path
/// is wrong.
fn targets_exist(data: &Path) {
    for file in ["admin-token", "master.key", "directory.sqlite"] {
        assert!(data.join(file).is_file(), "{file} exists");
    }
}

/// The lines of a probe's output, as `(verdict, what)`.
fn verdicts(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(verdict, _)| *verdict == "READ" || *verdict == "DENIED")
        .map(|(verdict, what)| (verdict.to_owned(), what.to_owned()))
        .collect()
}

/// With `--runner-uids`, a runner runs as a uid of its own and can read neither the data
/// directory, the admin token, the master key, berth's environment, another runner's
/// environment or files, nor write its own record — while it reads its own environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_reads_nothing_of_berth_or_another_runner() {
    if !running_as_root() {
        eprintln!("SKIPPED: runner isolation needs root (CI runs as root)");
        return;
    }
    let dir = passable_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--runner-uids", "231000-231099"]);
    // Another runner with a secret in its work directory and a runner token in its environment.
    pool(
        &server,
        "victim",
        json!(["sh", "-c", "echo s3cret > secret.txt; exec sleep 600"]),
    )
    .await;
    let victim = ready_lease(&server, "victim").await;
    let victim_pid: i32 = victim["runner"]["metadata"]["pid"]
        .as_str()
        .and_then(|pid| pid.parse().ok())
        .expect("pid");
    let victim_work = victim["runner"]["address"].as_str().expect("address");
    let script = dir.path().join("probe.sh");
    std::fs::write(
        &script,
        probe_script(
            &data,
            &[
                ("other-environ", format!("cat /proc/{victim_pid}/environ")),
                ("other-files", format!("cat '{victim_work}/secret.txt'")),
                ("other-work-dir", format!("ls '{victim_work}'")),
                (
                    "berth-environ",
                    format!("cat /proc/{}/environ", server.child.id()),
                ),
            ],
        ),
    )
    .expect("probe");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    pool(
        &server,
        "probe",
        json!(["sh", script.display().to_string()]),
    )
    .await;
    let probe = ready_lease(&server, "probe").await;
    let output = output_when_done(&probe).await;
    eprintln!("the probe's output:\n{output}");
    targets_exist(&data);

    assert!(Path::new(victim_work).join("secret.txt").is_file());
    let uid = |output: &str| {
        output
            .lines()
            .find_map(|line| line.strip_prefix("uid "))
            .and_then(|uid| uid.parse::<u32>().ok())
            .expect("the probe printed its uid")
    };
    let probe_uid = uid(&output);
    assert!((231_000..=231_099).contains(&probe_uid), "{output}");
    let victim_uid = std::fs::metadata(victim_work).map(|m| {
        use std::os::unix::fs::MetadataExt as _;
        m.uid()
    });
    assert!(
        victim_uid.is_ok_and(|victim| victim != probe_uid && (231_000..=231_099).contains(&victim)),
        "each runner has a uid of its own"
    );
    let verdicts = verdicts(&output);
    assert!(
        verdicts.contains(&("READ".into(), "own-environ".into())),
        "the probe works: {output}"
    );
    let read: Vec<&String> = verdicts
        .iter()
        .filter(|(verdict, what)| verdict == "READ" && what != "own-environ")
        .map(|(_, what)| what)
        .collect();
    assert!(read.is_empty(), "a runner read {read:?}:\n{output}");
    assert_eq!(verdicts.len(), 10, "{output}");
    release(&server, &probe).await;
    release(&server, &victim).await;
}

/// With `--runner-user`, runners run as that user: they cannot read the data directory, the
/// admin token or the master key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_user_reads_nothing_of_berth() {
    if !running_as_root() {
        eprintln!("SKIPPED: runner isolation needs root (CI runs as root)");
        return;
    }
    let dir = passable_tempdir();
    let data = dir.path().join("data");
    // 65534 is `nobody` on Debian; a uid without an account works as well.
    let server = Server::start(&data, &["--runner-user", "65534"]);
    let script = dir.path().join("probe.sh");
    std::fs::write(&script, probe_script(&data, &[])).expect("probe");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    pool(
        &server,
        "probe",
        json!(["sh", script.display().to_string()]),
    )
    .await;
    let probe = ready_lease(&server, "probe").await;
    let output = output_when_done(&probe).await;
    eprintln!("the probe's output:\n{output}");
    targets_exist(&data);
    assert!(output.lines().any(|line| line == "uid 65534"), "{output}");
    let verdicts = verdicts(&output);
    assert!(
        verdicts.contains(&("READ".into(), "own-environ".into())),
        "{output}"
    );
    let read: Vec<&String> = verdicts
        .iter()
        .filter(|(verdict, what)| verdict == "READ" && what != "own-environ")
        .map(|(_, what)| what)
        .collect();
    assert!(read.is_empty(), "a runner read {read:?}:\n{output}");
    release(&server, &probe).await;
}
