//! The `process` provider with real `sh` runners (Linux).
//!
//! Every test uses its own root directory and its own lease ids, so they run in parallel.
//! Waits are bounded polls, never fixed sleeps.

mod fixtures;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fixtures::{account, build, by_lease, env, spec};
use providers::{Error, Provider, Runner, RunnerRef, RunnerSpec};
use serde_json::{Value, json};

/// A process provider on `root`.
fn provider(root: &Path, extra: Value) -> Arc<dyn Provider> {
    let mut config = json!({"root": root});
    if let (Some(config), Value::Object(extra)) = (config.as_object_mut(), extra) {
        config.extend(extra);
    }
    build(
        "process",
        config,
        Value::Null,
        &env(Path::new("/nonexistent"), false),
    )
}

/// A spec whose command is `sh -c <script>`.
fn sh(tenant: &str, lease_id: &str, script: &str) -> RunnerSpec {
    RunnerSpec {
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..spec(tenant, lease_id)
    }
}

fn pid_of(runner: &Runner) -> i32 {
    runner.metadata["pid"]
        .parse()
        .expect("pid metadata is a number")
}

/// Fields 3 and on of `/proc/<pid>/stat` (state, ppid, pgrp, …), if the process exists.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Whether a process exists and is not a zombie.
fn is_alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|fields| fields[0] != "Z")
}

/// The process groups of the live processes of a lease.
fn groups_of(lease_id: &str) -> Vec<i32> {
    let mut groups: Vec<i32> = processes_of(lease_id)
        .into_iter()
        .filter_map(|pid| stat_fields(pid)?[2].parse().ok())
        .collect();
    groups.sort();
    groups.dedup();
    groups
}

/// Polls (bounded: 10 s) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Waits until a file exists and is non-empty, then reads it.
async fn read_when_written(path: &Path) -> String {
    eventually(&format!("{} to be written", path.display()), || {
        std::fs::metadata(path).is_ok_and(|meta| meta.len() > 0)
    })
    .await;
    // The writer may still be writing; give it the same bounded chance to finish a line.
    let mut text = String::new();
    eventually(&format!("{} to end in a newline", path.display()), || {
        text = std::fs::read_to_string(path).unwrap_or_default();
        text.ends_with('\n')
    })
    .await;
    text
}

/// A lease id unique to this test run: leftovers of an earlier, aborted run never match.
fn lease(name: &str) -> String {
    format!("lease_{name}_{}", std::process::id())
}

/// Runners whose environment holds this lease (what the provider's scan sees).
fn processes_of(lease_id: &str) -> Vec<i32> {
    let needle = format!("BERTH_LEASE_ID={lease_id}");
    std::fs::read_dir("/proc")
        .expect("/proc is readable")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|entry| entry == needle.as_bytes())
            }) && is_alive(*pid)
        })
        .collect()
}

/// A runner starts in its own fresh work dir with the lease environment; destroy stops the
/// whole group (a background grandchild too), removes the dir, and the leader is reaped.
#[tokio::test]
async fn create_and_destroy_a_real_runner() {
    let root = tempfile::tempdir().unwrap();
    let provider = provider(root.path(), json!({}));
    let script = "env > env.txt; sleep 600 & echo $! > child.pid; wait";
    let runner = provider
        .create(&sh("acme", &lease("run"), script))
        .await
        .unwrap();

    let dir = root.path().join("acme").join(lease("run"));
    let work = dir.join("work");
    assert_eq!(runner.id, lease("run"));
    assert_eq!(runner.address.as_deref(), Some(work.to_str().unwrap()));
    assert!(runner.ready);
    assert_eq!(runner.metadata["status"], "running");
    let leader = pid_of(&runner);
    assert!(is_alive(leader));
    for file in ["runner.json", "stdout.log", "stderr.log"] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }

    let env_text = read_when_written(&work.join("env.txt")).await;
    let vars: Vec<&str> = env_text.lines().collect();
    assert!(
        vars.contains(&format!("BERTH_LEASE_ID={}", lease("run")).as_str()),
        "{env_text}"
    );
    assert!(
        vars.contains(&"BERTH_RUNNER_TOKEN=rt_secret_token"),
        "{env_text}"
    );
    assert!(
        vars.iter()
            .any(|line| line.starts_with("BERTH_CALLBACK_URL=http://")),
        "{env_text}"
    );
    assert!(
        vars.iter().any(|line| line.starts_with("PATH=")),
        "{env_text}"
    );
    // The environment is clean: nothing of the test harness's own environment leaks in.
    assert!(
        !vars.iter().any(|line| line.starts_with("CARGO")),
        "{env_text}"
    );
    // The runner token never lands in the record.
    assert!(
        !std::fs::read_to_string(dir.join("runner.json"))
            .unwrap()
            .contains("rt_secret_token")
    );

    let grandchild: i32 = read_when_written(&work.join("child.pid"))
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(is_alive(grandchild));

    provider
        .destroy(&RunnerRef {
            id: Some(runner.id.clone()),
            ..by_lease("acme", &lease("run"))
        })
        .await
        .unwrap();
    assert!(!is_alive(leader), "leader survived destroy");
    assert!(!is_alive(grandchild), "grandchild survived destroy");
    assert!(!dir.exists(), "runner directory left behind");
    // The provider waits on its children, so the leader does not stay a zombie.
    eventually("the leader to be reaped", || {
        !Path::new(&format!("/proc/{leader}")).exists()
    })
    .await;
}

/// A runner that ignores SIGTERM is SIGKILLed once the grace is over.
#[tokio::test]
async fn sigterm_ignoring_runner_is_killed_after_grace() {
    let root = tempfile::tempdir().unwrap();
    let provider = provider(root.path(), json!({"grace_ms": 200}));
    let script = "trap '' TERM; echo trapped > trapped.txt; while true; do sleep 0.05; done";
    let runner = provider
        .create(&sh("acme", &lease("stubborn"), script))
        .await
        .unwrap();
    let work = PathBuf::from(runner.address.clone().unwrap());
    read_when_written(&work.join("trapped.txt")).await;

    provider
        .destroy(&by_lease("acme", &lease("stubborn")))
        .await
        .unwrap();
    assert!(!is_alive(pid_of(&runner)));
    assert!(processes_of(&lease("stubborn")).is_empty());
    assert!(!work.exists());
}

/// A second create of one lease returns the same runner and starts no second process.
#[tokio::test]
async fn create_is_idempotent() {
    let root = tempfile::tempdir().unwrap();
    let provider = provider(root.path(), json!({}));
    let first = provider
        .create(&sh("acme", &lease("once"), "sleep 600"))
        .await
        .unwrap();
    let second = provider
        .create(&sh("acme", &lease("once"), "sleep 600"))
        .await
        .unwrap();
    assert_eq!(pid_of(&first), pid_of(&second));
    assert_eq!(first.metadata["created_at"], second.metadata["created_at"]);
    assert_eq!(groups_of(&lease("once")), vec![pid_of(&first)]);
    provider
        .destroy(&by_lease("acme", &lease("once")))
        .await
        .unwrap();
    assert!(processes_of(&lease("once")).is_empty());
}

/// A new provider instance on the same root (berth restarted) lists the runners of one tenant
/// only, and can destroy them.
#[tokio::test]
async fn list_after_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let before = provider(root.path(), json!({}));
    let a = before
        .create(&sh("acme", &lease("la"), "sleep 600"))
        .await
        .unwrap();
    let b = before
        .create(&sh("acme", &lease("lb"), "sleep 600"))
        .await
        .unwrap();
    let other = before
        .create(&sh("other", &lease("lo"), "sleep 600"))
        .await
        .unwrap();

    let after = provider(root.path(), json!({}));
    let listed = after.list("acme").await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|runner| runner.id.as_str()).collect();
    assert_eq!(ids, [lease("la"), lease("lb")]);
    assert_eq!(pid_of(&listed[0]), pid_of(&a));
    assert_eq!(pid_of(&listed[1]), pid_of(&b));
    assert!(
        listed
            .iter()
            .all(|runner| runner.metadata["status"] == "running" && runner.tenant == "acme")
    );
    assert!(after.list("nobody").await.unwrap().is_empty());

    for name in ["la", "lb"] {
        after
            .destroy(&by_lease("acme", &lease(name)))
            .await
            .unwrap();
    }
    assert!(after.list("acme").await.unwrap().is_empty());
    assert!(!is_alive(pid_of(&a)) && !is_alive(pid_of(&b)));
    assert!(
        is_alive(pid_of(&other)),
        "another tenant's runner was touched"
    );
    after
        .destroy(&by_lease("other", &lease("lo")))
        .await
        .unwrap();
}

/// berth died between spawning a runner and writing its record: list still shows it, and
/// destroy finds its processes by the `/proc/*/environ` scan and kills them.
#[tokio::test]
async fn dir_without_record_is_found_by_the_environ_scan() {
    let root = tempfile::tempdir().unwrap();
    let before = provider(root.path(), json!({}));
    let script = "sleep 600 & echo $! > child.pid; wait";
    let runner = before
        .create(&sh("acme", &lease("norecord"), script))
        .await
        .unwrap();
    let work = PathBuf::from(runner.address.clone().unwrap());
    let grandchild: i32 = read_when_written(&work.join("child.pid"))
        .await
        .trim()
        .parse()
        .unwrap();
    std::fs::remove_file(
        root.path()
            .join("acme")
            .join(lease("norecord"))
            .join("runner.json"),
    )
    .unwrap();

    let after = provider(root.path(), json!({}));
    let listed = after.list("acme").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].metadata["status"], "unrecorded");

    after
        .destroy(&by_lease("acme", &lease("norecord")))
        .await
        .unwrap();
    assert!(!is_alive(pid_of(&runner)));
    assert!(!is_alive(grandchild));
    assert!(processes_of(&lease("norecord")).is_empty());
    assert!(!root.path().join("acme").join(lease("norecord")).exists());
}

/// A create that finds a runner without a record adopts it instead of starting another.
#[tokio::test]
async fn create_adopts_a_runner_without_record() {
    let root = tempfile::tempdir().unwrap();
    let before = provider(root.path(), json!({}));
    let runner = before
        .create(&sh("acme", &lease("adopt"), "sleep 600"))
        .await
        .unwrap();
    std::fs::remove_file(
        root.path()
            .join("acme")
            .join(lease("adopt"))
            .join("runner.json"),
    )
    .unwrap();

    let after = provider(root.path(), json!({}));
    let adopted = after
        .create(&sh("acme", &lease("adopt"), "sleep 600"))
        .await
        .unwrap();
    assert_eq!(pid_of(&adopted), pid_of(&runner));
    assert_eq!(groups_of(&lease("adopt")), vec![pid_of(&runner)]);
    assert!(
        root.path()
            .join("acme")
            .join(lease("adopt"))
            .join("runner.json")
            .is_file()
    );
    after
        .destroy(&by_lease("acme", &lease("adopt")))
        .await
        .unwrap();
    assert!(processes_of(&lease("adopt")).is_empty());
}

/// A runner directory berth made but left without any process or record (berth died
/// before the spawn) is cleared and the runner starts afresh.
#[tokio::test]
async fn empty_leftover_dir_starts_afresh() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("acme").join(lease("leftover"));
    let earlier = provider(root.path(), json!({"grace_ms": 100}));
    let first = earlier
        .create(&sh("acme", &lease("leftover"), "sleep 600"))
        .await
        .unwrap();
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid_of(&first)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually("the first runner to die", || !is_alive(pid_of(&first))).await;
    std::fs::remove_file(dir.join("runner.json")).unwrap();
    std::fs::write(dir.join("work/stale.txt"), "old").unwrap();
    let provider = provider(root.path(), json!({}));
    let runner = provider
        .create(&sh("acme", &lease("leftover"), "sleep 600"))
        .await
        .unwrap();
    assert!(is_alive(pid_of(&runner)));
    assert_ne!(pid_of(&runner), pid_of(&first));
    assert!(
        !dir.join("work/stale.txt").exists(),
        "the work dir is not fresh"
    );
    provider
        .destroy(&by_lease("acme", &lease("leftover")))
        .await
        .unwrap();
}

/// A directory at a lease's name that berth did not make is never listed, used or removed.
#[tokio::test]
async fn a_directory_berth_did_not_make_is_left_alone() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("acme").join(lease("foreign"));
    std::fs::create_dir_all(dir.join("work")).unwrap();
    std::fs::write(dir.join("precious.txt"), "keep me").unwrap();
    // A record alone, naming another lease, proves nothing either.
    std::fs::write(
        dir.join("runner.json"),
        r#"{"pid":1,"start_time":0,"lease_id":"lease_other","tenant":"acme","machine_type":"x","created_at":"2026-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    let provider = provider(root.path(), json!({}));
    assert!(provider.list("acme").await.unwrap().is_empty());
    provider
        .destroy(&by_lease("acme", &lease("foreign")))
        .await
        .unwrap();
    assert!(dir.join("precious.txt").is_file(), "destroy removed it");
    let refused = provider
        .create(&sh("acme", &lease("foreign"), "sleep 600"))
        .await
        .unwrap_err();
    assert!(!refused.is_retryable(), "{refused}");
    assert!(dir.join("precious.txt").is_file(), "create replaced it");
    assert!(processes_of(&lease("foreign")).is_empty());
}

/// A record written before a reboot (another boot id, or none: an older build) never gets a
/// process group signalled: after a reboot its pid names someone else's process.
#[tokio::test]
async fn a_record_of_another_boot_signals_nobody() {
    use std::os::unix::process::CommandExt as _;
    let root = tempfile::tempdir().unwrap();
    let provider = provider(root.path(), json!({"grace_ms": 100}));
    for (name, boot) in [("reboot", json!("another-boot")), ("oldbuild", Value::Null)] {
        let runner = provider
            .create(&sh("acme", &lease(name), "sleep 600"))
            .await
            .unwrap();
        // Our runner is gone (the machine rebooted) ...
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid_of(&runner)),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        eventually("the runner to die", || !is_alive(pid_of(&runner))).await;
        // ... and its pid now leads a stranger's process group.
        let mut stranger = std::process::Command::new("sleep")
            .arg("600")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = i32::try_from(stranger.id()).unwrap();
        let start_time: u64 = stat_fields(pid).unwrap()[19].parse().unwrap();
        let record_path = root
            .path()
            .join("acme")
            .join(lease(name))
            .join("runner.json");
        let mut record: Value =
            serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
        record["pid"] = json!(pid);
        record["start_time"] = json!(start_time);
        match &boot {
            Value::Null => record.as_object_mut().unwrap().remove("boot_id"),
            boot => record
                .as_object_mut()
                .unwrap()
                .insert("boot_id".into(), boot.clone()),
        };
        std::fs::write(&record_path, serde_json::to_vec(&record).unwrap()).unwrap();

        provider
            .destroy(&by_lease("acme", &lease(name)))
            .await
            .unwrap();
        assert!(
            is_alive(pid),
            "{name}: berth signalled a stranger's process group"
        );
        assert!(!root.path().join("acme").join(lease(name)).exists());
        stranger.kill().unwrap();
        stranger.wait().unwrap();
    }
}

/// A root outside the operator's runners directory is refused, also by climbing out of it.
#[test]
fn root_must_lie_under_the_runners_directory() {
    let runners = tempfile::tempdir().unwrap();
    let env = providers::Environment::new("/nonexistent/data", runners.path());
    for root in [
        "/etc".to_owned(),
        "/nonexistent/data/runners".to_owned(),
        format!("{}/../elsewhere", runners.path().display()),
    ] {
        let err = providers::build(
            &account("process", json!({ "root": root }), Value::Null),
            &env,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("runners directory"),
            "{root}: {err}"
        );
    }
    for root in [
        runners.path().display().to_string(),
        format!("{}/team-a", runners.path().display()),
    ] {
        assert!(
            providers::build(
                &account("process", json!({ "root": root }), Value::Null),
                &env
            )
            .is_ok(),
            "{root}"
        );
    }
}

/// Destroying what does not exist succeeds, also for names that could never exist.
#[tokio::test]
async fn destroy_unknown_is_ok() {
    let root = tempfile::tempdir().unwrap();
    let provider = provider(root.path(), json!({}));
    provider
        .destroy(&by_lease("acme", &lease("never")))
        .await
        .unwrap();
    provider
        .destroy(&by_lease("acme", "../escape"))
        .await
        .unwrap();
    provider
        .destroy(&RunnerRef {
            id: Some("x".into()),
            ..by_lease("acme", &lease("never"))
        })
        .await
        .unwrap();
}

/// A runner whose process already exited is listed as exited and destroyed without delay.
#[tokio::test]
async fn exited_runner_is_listed_and_destroyed() {
    let root = tempfile::tempdir().unwrap();
    let provider = provider(root.path(), json!({}));
    let runner = provider
        .create(&sh("acme", &lease("quick"), "echo done"))
        .await
        .unwrap();
    let pid = pid_of(&runner);
    eventually("the quick runner to exit", || !is_alive(pid)).await;
    assert_eq!(
        provider.list("acme").await.unwrap()[0].metadata["status"],
        "exited"
    );
    provider
        .destroy(&by_lease("acme", &lease("quick")))
        .await
        .unwrap();
    assert!(provider.list("acme").await.unwrap().is_empty());
}

/// Bad specs fail permanently and leave no directory behind.
#[tokio::test]
async fn bad_specs_are_permanent_errors() {
    let root = tempfile::tempdir().unwrap();
    let provider = provider(root.path(), json!({}));
    let empty = RunnerSpec {
        command: vec![],
        ..spec("acme", &lease("empty"))
    };
    let missing = RunnerSpec {
        command: vec!["/nonexistent/agent".into()],
        ..spec("acme", &lease("missing"))
    };
    let escape = spec("acme", "../../etc");
    for bad in [empty, missing, escape] {
        match provider.create(&bad).await {
            Err(Error::Permanent(message)) => {
                assert!(!message.contains("rt_secret_token"), "{message}")
            }
            other => panic!("{}: {other:?}", bad.lease_id),
        }
    }
    assert!(provider.list("acme").await.unwrap().is_empty());
}

/// `ready: "callback"` makes runners wait for berth's callback; the default root is the
/// operator's runners directory; prices come from the config.
#[tokio::test]
async fn config_ready_root_and_prices() {
    let data = tempfile::tempdir().unwrap();
    let runners = tempfile::tempdir().unwrap();
    let provider = build(
        "process",
        json!({"ready": "callback", "prices": {"small": 1500}}),
        json!({}),
        &providers::Environment::new(data.path(), runners.path()),
    );
    let runner = provider
        .create(&sh("acme", &lease("cb"), "sleep 600"))
        .await
        .unwrap();
    assert!(!runner.ready);
    assert!(
        runners
            .path()
            .join("acme")
            .join(lease("cb"))
            .join("work")
            .is_dir()
    );
    assert!(
        !data.path().join("runners").exists(),
        "nothing in the data dir"
    );
    assert_eq!(provider.price("small", None).await.unwrap(), Some(1500));
    assert_eq!(provider.price("large", None).await.unwrap(), None);
    provider
        .destroy(&by_lease("acme", &lease("cb")))
        .await
        .unwrap();
}

/// A runner an earlier build started under `<data_dir>/runners` (the old default root) is
/// still listed and destroyed by an account without a root; new runners never go there.
#[tokio::test]
async fn runners_of_the_old_default_root_are_still_destroyed() {
    let data = tempfile::tempdir().unwrap();
    let runners = tempfile::tempdir().unwrap();
    // Builds before 0.2 made runners in <data>/runners: as a root of the runners directory.
    let old = build(
        "process",
        json!({"grace_ms": 100}),
        json!({}),
        &providers::Environment::new(data.path(), data.path().join("runners")),
    );
    let runner = old
        .create(&sh("acme", &lease("legacy"), "sleep 600"))
        .await
        .unwrap();
    let new = build(
        "process",
        json!({"grace_ms": 100}),
        json!({}),
        &providers::Environment::new(data.path(), runners.path()),
    );
    let listed = new.list("acme").await.unwrap();
    assert_eq!(
        listed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [lease("legacy").as_str()]
    );
    new.destroy(&by_lease("acme", &lease("legacy")))
        .await
        .unwrap();
    assert!(!is_alive(pid_of(&runner)));
    assert!(
        !data
            .path()
            .join("runners/acme")
            .join(lease("legacy"))
            .exists()
    );
    let fresh = new
        .create(&sh("acme", &lease("fresh"), "sleep 600"))
        .await
        .unwrap();
    assert!(
        fresh
            .address
            .as_deref()
            .is_some_and(|a| a.starts_with(&runners.path().display().to_string()))
    );
    new.destroy(&by_lease("acme", &lease("fresh")))
        .await
        .unwrap();
}

/// Unknown config fields and any credentials are refused.
#[test]
fn bad_config_is_refused() {
    let environment = env(Path::new("/nonexistent"), false);
    let refuse = |config: Value, credentials: Value| {
        providers::build(
            &fixtures::account("process", config, credentials),
            &environment,
        )
        .err()
        .unwrap()
        .0
    };
    assert!(refuse(json!({"rooot": "/tmp"}), json!({})).contains("unknown field `rooot`"));
    assert!(refuse(json!({"ready": "soon"}), json!({})).contains("unknown variant"));
    assert!(refuse(json!({"grace_ms": 7_200_000}), json!({})).contains("grace_ms"));
    assert!(!refuse(json!({}), json!({"token": "hunter2"})).contains("hunter2"));
}

/// Two berth installations sharing a runners directory and a tenant name: the second lists
/// none of the first's runners and its destroy neither stops nor removes them.
#[tokio::test]
async fn a_second_installation_sharing_the_runners_directory_leaves_the_first_alone() {
    let root = tempfile::tempdir().unwrap();
    let as_installation = |installation: &str| {
        let environment = providers::Environment {
            installation_id: Some(installation.to_string()),
            ..env(Path::new("/nonexistent"), false)
        };
        build(
            "process",
            json!({"root": root.path(), "grace_ms": 200}),
            Value::Null,
            &environment,
        )
    };
    let first = as_installation("1111aaaa");
    let second = as_installation("2222bbbb");
    let lease_id = lease("shared_root");
    let runner = first
        .create(&sh("acme", &lease_id, "sleep 600"))
        .await
        .unwrap();
    let pid = pid_of(&runner);
    let marker = std::fs::read_to_string(
        root.path()
            .join("acme")
            .join(&lease_id)
            .join(".berth-runner"),
    )
    .unwrap();
    assert!(marker.contains("1111aaaa"), "{marker}");

    assert!(second.list("acme").await.unwrap().is_empty());
    second.destroy(&by_lease("acme", &lease_id)).await.unwrap();
    assert!(
        is_alive(pid),
        "the second installation stopped the first's runner"
    );
    assert!(
        second
            .create(&sh("acme", &lease_id, "sleep 600"))
            .await
            .is_err_and(|e| !e.is_retryable())
    );
    assert_eq!(first.list("acme").await.unwrap().len(), 1);
    first.destroy(&by_lease("acme", &lease_id)).await.unwrap();
    assert!(!is_alive(pid));
}
