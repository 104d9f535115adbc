//! Runners you can see, through the real binary: a `process` runner that exits ends its lease
//! (`runner_exited`) and its charge; `berth lease logs` shows what it wrote (never a file the
//! runner swapped in, never a terminal escape unless `--raw`); `berth serve` says at shutdown
//! what becomes of running runners, and adopts them again after a restart; `berth watch`
//! starts from now; the token `quickstart` saves sees its setup.
//!
//! Runners here wait for a file the test writes into their work directory (`stop`) before
//! they exit, so no step depends on how fast a process runs. Every wait is bounded and
//! nothing asserts how long anything took.

#[path = "support/cli.rs"]
mod cli_support;
mod support;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use cli_support::{Berth, Run, Tenant, run};
use support::Server;

/// $36.00 an hour: one cent (10,000 micros) a second, so charges are easy to read.
const PRICE: &str = "36";
const MICROS_PER_SECOND: i64 = 10_000;

/// A runner that says hello, then waits for `stop` in its work directory, complains on
/// stderr and exits 3.
const EXITS_ON_STOP: &str = r#"echo "hello from $BERTH_LEASE_ID"; while [ ! -e stop ]; do sleep 0.05; done; echo "oops: giving up" >&2; exit 3"#;

/// Sets pool `name` of `tenant` (on its `local` process account) to run `sh -c script`.
fn pool(berth: &Berth, tenant: &Tenant, name: &str, script: &str) {
    berth
        .admin(&[
            "--tenant",
            &tenant.name,
            "pool",
            "set",
            name,
            "--provider",
            "local",
            "--machine-type",
            "local",
            "--price",
            PRICE,
            "--",
            "sh",
            "-c",
            script,
        ])
        .ok();
}

/// Requests a lease of `pool` and waits until its runner is ready; returns the lease.
fn ready_lease(berth: &Berth, tenant: &Tenant, pool: &str) -> serde_json::Value {
    berth
        .as_tenant(
            tenant,
            &[
                "lease", "request", "--pool", pool, "--ttl", "30m", "--wait", "1m", "-o", "json",
            ],
        )
        .ok()
        .json()
}

/// The directory of a lease's runner (`runner.address` is its `work/`).
fn runner_dir(lease: &serde_json::Value) -> PathBuf {
    let work = lease["runner"]["address"].as_str().expect("an address");
    Path::new(work).parent().expect("a parent").to_owned()
}

/// Runs `lease logs ARGS` until its stdout contains `text` (the runner writes it soon after
/// it starts; at most 100 tries, a tenth of a second apart).
fn logs_until(berth: &Berth, tenant: &Tenant, args: &[&str], text: &str) -> Run {
    for _ in 0..100 {
        let shown = berth.as_tenant(tenant, &[&["lease", "logs"], args].concat());
        if shown.code == Some(0) && shown.stdout.contains(text) {
            return shown;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("`lease logs {args:?}` never showed {text:?}");
}

/// Milliseconds between two RFC 3339 times.
fn ms_between(from: &serde_json::Value, to: &serde_json::Value) -> i64 {
    let parse = |t: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(t.as_str().expect("a time")).expect("RFC 3339")
    };
    (parse(to) - parse(from)).num_milliseconds()
}

/// A runner that exits on its own ends its lease as `runner_exited` with its exit code and
/// last stderr line; its directory is cleaned up, and it is charged its lifetime (granted →
/// destroyed), not its TTL; a runner that reported itself done and then exits is not ended
/// twice.
#[test]
fn a_runner_that_exits_ends_its_lease_and_its_charge() {
    let berth = Berth::start();
    let tenant = berth.tenant("acme", &[]);
    pool(&berth, &tenant, "flaky", EXITS_ON_STOP);
    let lease = ready_lease(&berth, &tenant, "flaky");
    let id = lease["id"].as_str().expect("id").to_owned();
    assert_eq!(lease["state"], "ready");
    let dir = runner_dir(&lease);
    std::fs::write(dir.join("work/stop"), "").expect("stop file");

    let ended = berth
        .as_tenant(
            &tenant,
            &[
                "lease",
                "wait",
                &id,
                "--for",
                "ended",
                "--timeout",
                "1m",
                "-o",
                "json",
            ],
        )
        .ok()
        .json();
    assert_eq!(ended["state"], "released");
    assert_eq!(ended["end_reason"], "runner_exited");
    assert_eq!(
        ended["last_error"],
        "the runner exited with code 3; its last stderr line: oops: giving up"
    );
    assert_eq!(ended["runner"]["metadata"]["exit_status"], "code 3");
    assert!(!dir.exists(), "the destroy removed the runner's directory");

    // Charged its lifetime, rounded up to the second; the 30-minute reservation is released.
    let lifetime_ms = ms_between(&ended["granted_at"], &ended["runner_destroyed_at"]);
    let charged = ended["cost"]["charged_micros"].as_i64().expect("charged");
    assert_eq!(
        charged,
        (lifetime_ms + 999) / 1000 * MICROS_PER_SECOND,
        "{ended}"
    );
    assert_eq!(ended["cost"]["reserved_micros"], 0);
    assert!(charged < 30 * 60 * MICROS_PER_SECOND);
    let usage = berth
        .as_tenant(&tenant, &["usage", "-o", "json"])
        .ok()
        .json();
    assert_eq!(usage["charged_micros"].as_i64(), Some(charged));
    assert_eq!(usage["reserved_micros"], 0, "nothing is charging any more");
    let table = berth.as_tenant(&tenant, &["lease", "show", &id]).ok();
    assert!(
        table.stdout.contains("released (runner_exited)"),
        "{table:#?}"
    );

    // The runner says it is done (with its own token), then exits: the lease stays
    // `runner_done`, ended once.
    pool(
        &berth,
        &tenant,
        "polite",
        r#"printf %s "$BERTH_RUNNER_TOKEN" > token; while [ ! -e stop ]; do sleep 0.05; done; exit 7"#,
    );
    let lease = ready_lease(&berth, &tenant, "polite");
    let id = lease["id"].as_str().expect("id").to_owned();
    let work = runner_dir(&lease).join("work");
    let token = (0..100)
        .find_map(|_| {
            let token = std::fs::read_to_string(work.join("token")).unwrap_or_default();
            if token.is_empty() {
                std::thread::sleep(Duration::from_millis(50));
                None
            } else {
                Some(token)
            }
        })
        .expect("the runner wrote its token");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let status = runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("{}/v1/runners/{id}/release", berth.server.url))
            .bearer_auth(&token)
            .send()
            .await
            .expect("berth answers")
            .status()
    });
    assert!(status.is_success(), "{status}");
    // Its directory may already be gone (the destroy stops it); the stop file is a courtesy.
    let _ = std::fs::write(work.join("stop"), "");
    let done = berth
        .as_tenant(
            &tenant,
            &[
                "lease",
                "wait",
                &id,
                "--for",
                "ended",
                "--timeout",
                "1m",
                "-o",
                "json",
            ],
        )
        .ok()
        .json();
    assert_eq!(done["end_reason"], "runner_done", "{done}");
    assert!(done["last_error"].is_null(), "{done}");
}

/// `lease logs` prints what the runner wrote: its stdout on stdout, its stderr on stderr,
/// without terminal escapes (kept with `--raw`); `--follow` prints on until the lease ends;
/// a lease whose runner is gone has no logs, said in one line.
#[test]
fn lease_logs_shows_the_runner_output() {
    let berth = Berth::start();
    let tenant = berth.tenant("acme", &[]);
    pool(
        &berth,
        &tenant,
        "chatty",
        r#"echo "hello from $BERTH_LEASE_ID"; printf '\033[31mred\033[0m\n'; echo "to stderr" >&2; exec sleep 120"#,
    );
    let lease = ready_lease(&berth, &tenant, "chatty");
    let id = lease["id"].as_str().expect("id").to_owned();

    let shown = logs_until(&berth, &tenant, &[&id], "red");
    assert!(
        shown.stdout.contains(&format!("hello from {id}\n")),
        "{shown:#?}"
    );
    assert!(shown.stdout.contains("red\n"), "{shown:#?}");
    assert!(!shown.stdout.contains('\x1b'), "escapes are dropped");
    assert!(!shown.stdout.contains("to stderr"), "{shown:#?}");
    let stderr = logs_until(&berth, &tenant, &[&id, "--stream", "stderr"], "to stderr");
    assert_eq!(stderr.stdout, "to stderr\n");
    let both = berth.as_tenant(&tenant, &["lease", "logs", &id]).ok();
    assert!(both.stderr.contains("to stderr"), "{both:#?}");
    let raw = berth
        .as_tenant(&tenant, &["lease", "logs", &id, "--raw"])
        .ok();
    assert!(raw.stdout.contains("\x1b[31mred\x1b[0m"), "{raw:#?}");
    let json = berth
        .as_tenant(
            &tenant,
            &["lease", "logs", &id, "--stream", "stdout", "-o", "json"],
        )
        .ok();
    let piece: serde_json::Value = serde_json::from_str(json.stdout.trim()).expect("JSON");
    assert_eq!(piece["stream"], "stdout");
    assert_eq!(piece["offset"], 0);
    assert_eq!(piece["next_offset"], piece["size"]);

    // Follow until the lease ends.
    let mut follow = berth
        .tenant_cmd(&tenant)
        .args(["lease", "logs", &id, "--follow", "--stream", "stdout"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("berth runs");
    let lines = line_reader(follow.stdout.take().expect("stdout"));
    let first = lines
        .recv_timeout(Duration::from_secs(60))
        .expect("a first line");
    assert_eq!(first, format!("hello from {id}"));
    berth
        .as_tenant(&tenant, &["lease", "release", &id, "--wait", "1m"])
        .ok();
    let status = support::wait_bounded(&mut follow);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut follow.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains(&format!("lease {id} released")), "{stderr}");

    berth
        .as_tenant(&tenant, &["lease", "logs", &id])
        .code(1)
        .one_line_error(&["has ended", "(no_logs)"]);
    berth
        .as_tenant(&tenant, &["lease", "logs", "lease_nosuch"])
        .code(1)
        .one_line_error(&["(not_found)"]);
}

/// A runner that swaps its stdout.log for a link to berth's master key gets nothing: the link
/// is not followed, the key never leaves the server, and the refusal says why.
#[test]
fn a_log_swapped_for_a_link_to_a_secret_is_not_served() {
    let berth = Berth::start();
    let tenant = berth.tenant("acme", &[]);
    pool(&berth, &tenant, "sly", "echo harmless; exec sleep 120");
    let lease = ready_lease(&berth, &tenant, "sly");
    let id = lease["id"].as_str().expect("id").to_owned();
    logs_until(&berth, &tenant, &[&id, "--stream", "stdout"], "harmless");

    let key_file = berth.server.data_dir.join("master.key");
    let key = std::fs::read_to_string(&key_file).expect("the master key");
    let log = runner_dir(&lease).join("stdout.log");
    std::fs::remove_file(&log).expect("remove the log");
    std::os::unix::fs::symlink(&key_file, &log).expect("link to the key");

    for args in [&["--stream", "stdout"][..], &["--raw"], &["-o", "json"]] {
        let refused = berth.as_tenant(&tenant, &[&["lease", "logs", &id], args].concat());
        assert_eq!(refused.code, Some(1), "{refused:#?}");
        assert!(refused.stderr.contains("symbolic link"), "{refused:#?}");
        assert!(refused.stderr.contains("(no_logs)"), "{refused:#?}");
        for output in [&refused.stdout, &refused.stderr] {
            assert!(!output.contains(key.trim()), "the key leaked: {refused:#?}");
        }
    }
    // The other stream is still the runner's own.
    berth
        .as_tenant(&tenant, &["lease", "logs", &id, "--stream", "stderr"])
        .ok();
}

/// `berth watch` without `--after` prints only what happens after it started: it says from
/// which event, and an earlier lease's events never show.
#[test]
fn watch_starts_from_now() {
    let berth = Berth::start();
    let tenant = berth.tenant("acme", &[]);
    let before = ready_lease(&berth, &tenant, "local");
    let before = before["id"].as_str().expect("id").to_owned();
    berth
        .as_tenant(&tenant, &["lease", "release", &before, "--wait", "1m"])
        .ok();

    let mut watch = berth
        .tenant_cmd(&tenant)
        .args(["watch", "--count", "2", "-o", "json", "--timeout", "2m"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("berth runs");
    let said = line_reader(watch.stderr.take().expect("stderr"))
        .recv_timeout(Duration::from_secs(60))
        .expect("watch says where it starts");
    assert!(said.contains("from now (after event 3)"), "{said}");

    let after = ready_lease(&berth, &tenant, "local");
    let after = after["id"].as_str().expect("id").to_owned();
    let status = support::wait_bounded(&mut watch);
    assert!(status.success());
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut watch.stdout.take().expect("stdout"), &mut stdout)
        .expect("stdout");
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let seen: Vec<(&str, i64)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default(),
                e["seq"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(seen, [("lease.granted", 4), ("lease.ready", 5)], "{stdout}");
    assert!(events.iter().all(|e| e["data"]["id"] == after.as_str()));
    assert!(!stdout.contains(&before));

    // --from-start replays the stored ones.
    let replayed = berth
        .as_tenant(
            &tenant,
            &["watch", "--from-start", "--count", "1", "-o", "json"],
        )
        .ok();
    let first: serde_json::Value = serde_json::from_str(replayed.stdout.trim()).expect("JSON");
    assert_eq!(first["seq"], 1);
    assert_eq!(first["data"]["id"], before.as_str());
}

/// The token `berth quickstart` saves shows the user their setup: the pools and the tenant's
/// limits (it is a `leases:write` token; its tenant's tokens stay the admin's business).
#[test]
fn quickstart_token_sees_its_setup() {
    let berth = Berth::start();
    berth.track("demo");
    let data = berth.server.data_dir.display().to_string();
    run(berth.cmd().args(["quickstart", "--data-dir", &data])).ok();
    let pools = run(berth.cmd().args(["pool", "list"])).ok();
    assert!(pools.stdout.contains("local"), "{pools:#?}");
    assert!(pools.stdout.contains("$0.60"), "{pools:#?}");
    let tenant = run(berth.cmd().args(["tenant", "show", "-o", "json"]))
        .ok()
        .json();
    assert_eq!(tenant["name"], "demo");
    assert_eq!(tenant["limits"]["max_active_leases"], 4);
    run(berth.cmd().args(["token", "list"]))
        .code(1)
        .one_line_error(&["(forbidden)"]);
}

/// At shutdown `berth serve` says that process runners keep running; after a restart their
/// leases go on with the same runners, and a runner that then ends is seen (status unknown:
/// this berth is not its parent) and ends its lease.
#[test]
fn runners_outlive_a_restart_and_are_adopted_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(dir.path().join("home")).expect("home");
    let server = Server::start(&data, &[]);
    let admin = server.admin_token();
    let client = |url: &str, args: &[&str]| {
        let mut cmd = support::berth();
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.path().join("home"))
            .env("XDG_CONFIG_HOME", dir.path().join("home/.config"))
            .env("BERTH_URL", url)
            .env("BERTH_TOKEN", &admin)
            .env("BERTH_TENANT", "acme")
            .stdin(Stdio::null())
            .args(args);
        run(&mut cmd)
    };
    client(&server.url, &["tenant", "create", "acme"]).ok();
    client(
        &server.url,
        &[
            "provider",
            "set",
            "local",
            "--kind",
            "process",
            "--config",
            r#"{"grace_ms": 1000}"#,
        ],
    )
    .ok();
    client(
        &server.url,
        &[
            "pool",
            "set",
            "local",
            "--provider",
            "local",
            "--machine-type",
            "local",
            "--price",
            PRICE,
            "--",
            "sh",
            "-c",
            "exec sleep 300",
        ],
    )
    .ok();
    let lease = client(
        &server.url,
        &[
            "lease", "request", "--pool", "local", "--wait", "1m", "-o", "json",
        ],
    )
    .ok()
    .json();
    let id = lease["id"].as_str().expect("id").to_owned();
    let pid: i32 = lease["runner"]["metadata"]["pid"]
        .as_str()
        .and_then(|pid| pid.parse().ok())
        .expect("a pid");

    let log = stop_and_read_log(server);
    assert!(
        log.iter()
            .any(|line| line.contains("process runners keep running")
                && line.contains("\"runners\":1")),
        "{log:#?}"
    );
    assert!(alive(pid), "the runner outlived berth");

    let server = Server::start(&data, &[]);
    let shown = client(&server.url, &["lease", "show", &id, "-o", "json"])
        .ok()
        .json();
    assert_eq!(shown["state"], "ready");
    // Reading the lease woke the tenant, whose first look after the restart lists its
    // runners and watches this one. It ends now.
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success(), "kill the runner");
    let ended = client(
        &server.url,
        &[
            "lease",
            "wait",
            &id,
            "--for",
            "ended",
            "--timeout",
            "1m",
            "-o",
            "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(ended["end_reason"], "runner_exited", "{ended}");
    assert!(
        ended["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown")),
        "{ended}"
    );
    drop(server);
}

/// Whether a process with this pid is alive (not a zombie).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .trim_start()
            .starts_with('Z')
    })
}

/// The lines a child writes, as they come, from a thread.
fn line_reader(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Sends SIGTERM to the server, waits for its exit (bounded) and returns every line it
/// logged.
fn stop_and_read_log(mut server: Server) -> Vec<String> {
    support::signal(&server.child, "TERM");
    let status = support::wait_bounded(&mut server.child);
    assert!(status.success(), "berth serve stops cleanly");
    let mut lines = Vec::new();
    // The reader thread ends with the pipe, after the last line.
    while let Ok(line) = server.log.recv_timeout(Duration::from_secs(30)) {
        lines.push(line);
    }
    lines
}
