//! The durable-object runtime, through its public API and real SQLite files: activation,
//! batches and their rollback, background work, subscriptions, migrations, the data
//! directory's lock, shutdown, and acknowledged writes across SIGKILL. Alarms are in
//! `alarms.rs`, hibernation and the live-object cap in `hibernation.rs`.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use broker::objects::{CallError, ManualClock, Options, Runtime};
use support::harness::{Harness, T0, harness, inspect, options};
use support::{Counter, Probes, Reply, Request, wait_until};
use tokio::io::{AsyncBufReadExt, BufReader};

/// 1,000 concurrent first messages to one new id activate it exactly once, and its handlers
/// never overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_first_messages_activate_once_and_run_serially() {
    let h = harness(|_| {}).await;
    let stub = h.ns.get_by_name("racer");
    let mut calls = Vec::new();
    for i in 0..1_000 {
        let stub = stub.clone();
        calls.push(tokio::spawn(async move {
            if i % 10 == 0 {
                stub.call(Request::Probe {
                    hold: Duration::from_micros(200),
                })
                .await
            } else {
                stub.call(Request::Add {
                    key: "n".into(),
                    by: 1,
                })
                .await
            }
        }));
    }
    for call in calls {
        call.await.expect("task").expect("call succeeds");
    }
    assert_eq!(h.probes.activations_of(stub.id()), 1);
    assert_eq!(
        h.probes.max_running.load(Ordering::SeqCst),
        1,
        "two handlers overlapped"
    );
    assert_eq!(
        stub.call(Request::Get { key: "n".into() }).await,
        Ok(Reply::Value(900))
    );
}

/// In a group commit, a failing event rolls back only its own writes (and its in-memory
/// changes); the others commit together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_event_in_group_commit_rolls_back_alone() {
    let h = harness(|_| {}).await;
    let stub = h.ns.get_by_name("group");
    // Park the object on a request so the next ones queue up and form one batch.
    let hold = tokio::spawn({
        let stub = stub.clone();
        async move { stub.call(Request::Hold).await }
    });
    wait_until("the object holds", || {
        h.probes.running.load(Ordering::SeqCst) == 1
    })
    .await;
    let mut calls = Vec::new();
    for i in 0..20 {
        let stub = stub.clone();
        let request = if i == 7 {
            Request::Fail { key: "bad".into() }
        } else {
            Request::Pair {
                key: format!("k{i}"),
            }
        };
        calls.push(tokio::spawn(async move { stub.call(request).await }));
    }
    wait_until("20 requests queue", || h.ns.queued(stub.id()) == 20).await;
    let commits_before = h.runtime.metrics().commits.load(Ordering::Relaxed);
    h.probes.gate.add_permits(1);
    hold.await.expect("task").expect("hold");
    for (i, call) in calls.into_iter().enumerate() {
        let result = call.await.expect("task");
        if i == 7 {
            assert!(matches!(result, Err(CallError::Failed(_))), "{result:?}");
        } else {
            assert_eq!(result, Ok(Reply::Done));
        }
    }
    let commits = h.runtime.metrics().commits.load(Ordering::Relaxed) - commits_before;
    assert_eq!(
        commits, 1,
        "the held event wrote nothing (no commit); the 20 queued ones commit together"
    );
    for i in (0..20).filter(|i| *i != 7) {
        assert_eq!(inspect(&h.ns, "group", &format!("k{i}")).await.0, 2);
    }
    assert_eq!(
        inspect(&h.ns, "group", "bad").await.0,
        0,
        "the failed event's row is gone"
    );
    assert_eq!(
        stub.call(Request::Get { key: "bad".into() }).await,
        Ok(Reply::Value(0)),
        "memory was reloaded after the failure"
    );
}

/// A failing event alone (no group) is rolled back and the object keeps serving.
#[tokio::test]
async fn failing_single_event_rolls_back() {
    let h = harness(|o| o.max_batch = 1).await;
    let stub = h.ns.get_by_name("single");
    assert!(matches!(
        stub.call(Request::Fail { key: "x".into() }).await,
        Err(CallError::Failed(_))
    ));
    assert_eq!(inspect(&h.ns, "single", "x").await.0, 0);
    assert_eq!(
        stub.call(Request::Add {
            key: "x".into(),
            by: 2
        })
        .await,
        Ok(Reply::Value(2))
    );
}

/// A handler that writes through `ctx.db()` instead of queuing fails, and its write is not
/// stored: only the session's own commits pass the connection's commit hook.
#[tokio::test]
async fn stray_direct_write_is_refused() {
    let h = harness(|o| o.max_batch = 1).await;
    let stub = h.ns.get_by_name("stray");
    let result = stub.call(Request::Stray { key: "x".into() }).await;
    // A refused commit is a bug in the object, not a state of the disk.
    assert!(matches!(result, Err(CallError::Failed(_))), "{result:?}");
    assert_eq!(inspect(&h.ns, "stray", "x").await.0, 0);
    // The object keeps serving, and its own writes still commit.
    assert_eq!(
        stub.call(Request::Add {
            key: "x".into(),
            by: 1
        })
        .await,
        Ok(Reply::Value(1))
    );
}

/// Migrations apply once per object; reopening does not run them again.
#[tokio::test]
async fn migrations_apply_once() {
    let h = harness(|_| {}).await;
    assert_eq!(inspect(&h.ns, "migrated", "-").await.1, 1);
    let id = h.ns.id_from_name("migrated");
    let h = h.restart(|_| {}).await;
    assert_eq!(inspect(&h.ns, "migrated", "-").await.1, 1);
    let h = h.restart(|_| {}).await;
    assert_eq!(inspect(&h.ns, "migrated", "-").await.1, 1);
    let dir = h.dir.path().to_owned();
    h.runtime.shutdown(Duration::from_secs(10)).await;
    let hex = id.to_hex();
    let path = dir
        .join("objects/counter")
        .join(&hex[..2])
        .join(format!("{hex}.sqlite"));
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "sqlite://{}",
        path.display()
    ))
    .await
    .expect("open object file");
    let (applied,): (i64,) = sqlx::query_as("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .expect("query");
    assert_eq!(applied, 2);
}

/// Background work reports back as a new event, and the object does not hibernate while it
/// is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_work_completes_as_an_event() {
    let h = harness(|o| o.object_idle = Duration::from_millis(20)).await;
    let stub = h.ns.get_by_name("worker");
    stub.call(Request::Spawn {
        key: "job".into(),
        delay: Duration::from_millis(300),
    })
    .await
    .expect("spawn");
    wait_until("the completion is stored", || {
        // Read the file rather than calling the object, which would keep it awake.
        done_rows(&h, "worker", "job") == 1
    })
    .await;
    assert_eq!(
        h.probes.activations_of(stub.id()),
        1,
        "hibernated with work in flight"
    );
}

fn done_rows(h: &Harness, name: &str, key: &str) -> i64 {
    let id = h.ns.id_from_name(name);
    let hex = id.to_hex();
    let path = h
        .dir
        .path()
        .join("objects/counter")
        .join(&hex[..2])
        .join(format!("{hex}.sqlite"));
    let path = path.display().to_string();
    let key = key.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let Ok(mut conn) = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
                "sqlite://{path}?mode=ro"
            ))
            .await
            else {
                return 0;
            };
            sqlx::query_as::<_, (i64,)>(
                "SELECT count(*) FROM rows WHERE key = ?1 AND part = 'done'",
            )
            .bind(key)
            .fetch_one(&mut conn)
            .await
            .map(|(n,)| n)
            .unwrap_or(0)
        })
    })
    .join()
    .expect("reader thread")
}

/// A subscriber keeps receiving an object's events across its hibernation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_survive_hibernation() {
    let h = harness(|o| o.object_idle = Duration::from_millis(20)).await;
    let stub = h.ns.get_by_name("emitter");
    let mut events = h.ns.subscribe(stub.id());
    stub.call(Request::Emit {
        note: "first".into(),
    })
    .await
    .expect("emit");
    assert_eq!(events.recv().await.expect("event"), "first");
    wait_until("the object hibernates", || !h.ns.is_live(stub.id())).await;
    stub.call(Request::Emit {
        note: "second".into(),
    })
    .await
    .expect("emit");
    assert_eq!(events.recv().await.expect("event"), "second");
    assert_eq!(h.probes.activations_of(stub.id()), 2);
}

/// A subscription made while the object is already live receives its events; an object
/// nobody subscribed to has no event channel, and a channel goes when its object hibernates
/// with no subscriber left (a channel preallocates its whole ring).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_channels_exist_only_for_subscribed_objects() {
    // Long enough that `watched` is still live when the subscription is made.
    let h = harness(|o| o.object_idle = Duration::from_millis(500)).await;
    let quiet = h.ns.get_by_name("quiet");
    let watched = h.ns.get_by_name("watched");
    for stub in [&quiet, &watched] {
        stub.call(Request::Emit {
            note: "unheard".into(),
        })
        .await
        .expect("emit");
    }
    assert_eq!(h.ns.event_channels(), 0);
    assert!(h.ns.is_live(watched.id()));
    let mut events = h.ns.subscribe(watched.id());
    watched
        .call(Request::Emit {
            note: "heard".into(),
        })
        .await
        .expect("emit");
    // The first event may still be on its way out (events leave after the reply).
    let mut note = events.recv().await.expect("event");
    if note == "unheard" {
        note = events.recv().await.expect("event");
    }
    assert_eq!(note, "heard");
    assert_eq!(h.ns.event_channels(), 1);
    drop(events);
    wait_until("both objects hibernate", || h.ns.live_count() == 0).await;
    assert_eq!(h.ns.event_channels(), 0);
}

/// A second runtime cannot open a data directory in use; after shutdown it can, and the data
/// is there.
#[tokio::test]
async fn data_directory_is_locked_while_in_use() {
    let h = harness(|_| {}).await;
    h.ns.get_by_name("a")
        .call(Request::Add {
            key: "k".into(),
            by: 5,
        })
        .await
        .expect("add");
    let second = Runtime::open(options(h.dir.path(), &h.clock)).await;
    assert!(second.is_err(), "two runtimes on one data directory");
    let h = h.restart(|_| {}).await;
    assert_eq!(
        h.ns.get_by_name("a")
            .call(Request::Get { key: "k".into() })
            .await,
        Ok(Reply::Value(5))
    );
}

/// Graceful shutdown lets the running event finish and commit; later calls are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_current_event() {
    let h = harness(|_| {}).await;
    let stub = h.ns.get_by_name("busy");
    let running = tokio::spawn({
        let stub = stub.clone();
        async move {
            stub.call(Request::Probe {
                hold: Duration::from_millis(100),
            })
            .await?;
            stub.call(Request::Add {
                key: "k".into(),
                by: 1,
            })
            .await
        }
    });
    wait_until("the probe runs", || {
        h.probes.running.load(Ordering::SeqCst) == 1
    })
    .await;
    let add = stub.call(Request::Add {
        key: "k".into(),
        by: 10,
    });
    let (add, ()) = tokio::join!(add, h.runtime.shutdown(Duration::from_secs(10)));
    // The Add queued behind the probe either ran before the shutdown or was refused.
    assert!(
        matches!(add, Ok(Reply::Value(10)) | Err(CallError::ShuttingDown)),
        "{add:?}"
    );
    let after = running.await.expect("task");
    assert!(
        matches!(after, Ok(_) | Err(CallError::ShuttingDown)),
        "{after:?}"
    );
    assert_eq!(
        stub.call(Request::Get { key: "k".into() }).await,
        Err(CallError::ShuttingDown)
    );
    let committed = match add {
        Ok(Reply::Value(v)) => v,
        _ => 0,
    } + i64::from(after.is_ok());
    let h = h.restart(|_| {}).await;
    assert_eq!(
        h.ns.get_by_name("busy")
            .call(Request::Get { key: "k".into() })
            .await,
        Ok(Reply::Value(committed))
    );
}

/// Every write acknowledged before a SIGKILL is on disk after reopening; unacknowledged
/// events are all-or-nothing.
#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("BERTH_CRASH_CHILD_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("child starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut acked = HashSet::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("child keeps writing")
        .expect("read")
    {
        if let Some(key) = line.strip_prefix("ack ") {
            acked.insert(key.to_owned());
            if acked.len() == 400 {
                child.start_kill().expect("SIGKILL");
            }
        }
    }
    let status = child.wait().await.expect("child exits");
    assert!(!status.success(), "the child was killed, it did not finish");
    assert!(acked.len() >= 400);

    let clock = ManualClock::new(T0);
    let runtime = Runtime::open(options(dir.path(), &clock))
        .await
        .expect("reopen");
    let ns = runtime.namespace::<Counter>(Arc::new(Probes::default()));
    for key in &acked {
        let object = crash_object(key);
        assert_eq!(
            inspect(&ns, &object, key).await.0,
            2,
            "acknowledged write {key} lost"
        );
    }
    // Nothing half-written: count every key's rows straight from the files.
    for object in 0..4 {
        let id = ns.id_from_name(&format!("crash-{object}"));
        let hex = id.to_hex();
        let path = dir
            .path()
            .join("objects/counter")
            .join(&hex[..2])
            .join(format!("{hex}.sqlite"));
        let url = format!("sqlite://{}?mode=ro", path.display());
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
            .await
            .expect("open");
        let counts: Vec<(String, i64)> =
            sqlx::query_as("SELECT key, count(*) FROM rows GROUP BY key")
                .fetch_all(&mut conn)
                .await
                .expect("query");
        for (key, count) in counts {
            assert_eq!(count, 2, "event for {key} half-applied");
        }
    }
}

/// Which of the four objects of the crash test holds `key` (`key-<n>`).
fn crash_object(key: &str) -> String {
    let n: usize = key
        .trim_start_matches("key-")
        .parse()
        .expect("numbered key");
    format!("crash-{}", n % 4)
}

/// Not a test of its own: the writer process of `acknowledged_writes_survive_sigkill`. It
/// writes until it is killed (or, as a bound, for 60 s), printing each acknowledged key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Some(dir) = std::env::var_os("BERTH_CRASH_CHILD_DIR") else {
        return;
    };
    let runtime = Runtime::open(Options::new(dir))
        .await
        .expect("child runtime");
    let ns = runtime.namespace::<Counter>(Arc::new(Probes::default()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut writers = Vec::new();
    for _ in 0..16 {
        let ns = ns.clone();
        let next = next.clone();
        writers.push(tokio::spawn(async move {
            while tokio::time::Instant::now() < deadline {
                let key = format!("key-{}", next.fetch_add(1, Ordering::Relaxed));
                let object = crash_object(&key);
                if ns
                    .get_by_name(&object)
                    .call(Request::Pair { key: key.clone() })
                    .await
                    .is_ok()
                {
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "ack {key}");
                    let _ = out.flush();
                }
            }
        }));
    }
    for writer in writers {
        let _ = writer.await;
    }
}
