//! The `process` provider tells the broker when a runner's process ends (Linux, real `sh`
//! runners): its exit status and last stderr line through `Environment::runner_exits`, once
//! per runner; a listing marks a runner whose end nobody here will report, so reconciliation
//! can end its lease.

mod fixtures;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fixtures::{build, by_lease, env, spec};
use providers::exits::{EXIT_STATUS, ExitStatus, Exits, RunnerExit};
use providers::{Provider, RunnerSpec};
use serde_json::json;
use tokio::sync::mpsc;

/// A process provider on `root` that reports exits to `exits`.
fn provider(root: &Path, exits: &Exits) -> Arc<dyn Provider> {
    let env = providers::Environment {
        runner_exits: Some(exits.clone()),
        ..env(Path::new("/nonexistent"), false)
    };
    build(
        "process",
        json!({"root": root, "grace_ms": 500}),
        serde_json::Value::Null,
        &env,
    )
}

fn sh(lease_id: &str, script: &str) -> RunnerSpec {
    RunnerSpec {
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..spec("acme", lease_id)
    }
}

/// The next report (bounded wait).
async fn next(reports: &mut mpsc::Receiver<RunnerExit>) -> RunnerExit {
    tokio::time::timeout(Duration::from_secs(30), reports.recv())
        .await
        .expect("a report within 30 s")
        .expect("the channel is open")
}

/// A runner that exits is reported with its code and last stderr line (control characters
/// gone); one berth kills is reported with its signal.
#[tokio::test]
async fn exits_are_reported_with_their_status() {
    let root = tempfile::tempdir().expect("tempdir");
    let (exits, mut reports) = Exits::channel();
    let provider = provider(root.path(), &exits);
    let lease = format!("lease_exit_{}", std::process::id());
    provider
        .create(&sh(
            &lease,
            "echo 'first' >&2; printf 'it \\033[1mbroke\\033[0m\\n' >&2; exit 5",
        ))
        .await
        .expect("create");
    let report = next(&mut reports).await;
    assert_eq!(
        report,
        RunnerExit {
            tenant: "acme".into(),
            lease_id: lease.clone(),
            status: ExitStatus::Code(5),
            last_stderr_line: Some("it broke".into()),
        }
    );
    provider
        .destroy(&by_lease("acme", &lease))
        .await
        .expect("destroy");

    let killed = format!("lease_kill_{}", std::process::id());
    provider
        .create(&sh(&killed, "exec sleep 600"))
        .await
        .expect("create");
    provider
        .destroy(&by_lease("acme", &killed))
        .await
        .expect("destroy");
    let report = next(&mut reports).await;
    assert_eq!(report.lease_id, killed);
    assert_eq!(report.status, ExitStatus::Signal(15));
    assert_eq!(report.last_stderr_line, None);
    assert_eq!(exits.watching(), 0, "nothing is watched any more");
}

/// A runner that ended unseen (this provider never watched it: here, another provider
/// instance with no one listening started it) is listed with `exit_status: unknown`; a
/// running one is not, and is watched from then on.
#[tokio::test]
async fn a_listing_marks_runners_gone_unseen() {
    let root = tempfile::tempdir().expect("tempdir");
    let unseen = build(
        "process",
        json!({"root": root.path(), "grace_ms": 500}),
        serde_json::Value::Null,
        &env(Path::new("/nonexistent"), false),
    );
    let gone = format!("lease_gone_{}", std::process::id());
    let running = format!("lease_running_{}", std::process::id());
    unseen.create(&sh(&gone, "exit 0")).await.expect("create");
    unseen
        .create(&sh(&running, "exec sleep 600"))
        .await
        .expect("create");

    let (exits, mut reports) = Exits::channel();
    let watching = provider(root.path(), &exits);
    // The first runner's process is gone once its reaper (of the other instance) waited.
    let mut listed = Vec::new();
    for _ in 0..300 {
        listed = watching.list("acme").await.expect("list");
        if listed
            .iter()
            .any(|runner| runner.lease_id == gone && runner.metadata.contains_key(EXIT_STATUS))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let find = |lease: &str| {
        listed
            .iter()
            .find(|runner| runner.lease_id == lease)
            .expect("listed")
            .clone()
    };
    assert_eq!(find(&gone).metadata[EXIT_STATUS], "unknown");
    assert!(!find(&running).metadata.contains_key(EXIT_STATUS));
    assert_eq!(exits.watching(), 1, "the running one is watched");

    // Its end is reported, with an unknown status: this instance is not its parent's.
    unseen
        .destroy(&by_lease("acme", &running))
        .await
        .expect("destroy");
    let report = next(&mut reports).await;
    assert_eq!(report.lease_id, running);
    assert_eq!(report.status, ExitStatus::Unknown);
    watching
        .destroy(&by_lease("acme", &gone))
        .await
        .expect("destroy");
}
