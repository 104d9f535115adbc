//! The durable-object runtime, through its public API and real SQLite files.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use broker::objects::{CallError, Durability, ManualClock, Metrics, Namespace, Options, Runtime};
use support::{Counter, Probes, Reply, Request, add, files_with_suffix, wait_until};
use tokio::io::{AsyncBufReadExt, BufReader};

const T0: i64 = 1_800_000_000_000;

struct Harness {
    dir: tempfile::TempDir,
    clock: ManualClock,
    runtime: Runtime,
    ns: Namespace<Counter>,
    probes: Arc<Probes>,
}

fn options(dir: &Path, clock: &ManualClock) -> Options {
    let mut options = Options::new(dir);
    options.clock = Arc::new(clock.clone());
    options
}

async fn harness(tune: impl FnOnce(&mut Options)) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut options = options(dir.path(), &clock);
    tune(&mut options);
    let runtime = Runtime::open(options).await.expect("runtime opens");
    let probes = Arc::new(Probes::default());
    let ns = runtime.namespace::<Counter>(probes.clone());
    Harness {
        dir,
        clock,
        runtime,
        ns,
        probes,
    }
}

impl Harness {
    /// Shuts the runtime down and opens a new one on the same directory and clock.
    async fn restart(self, tune: impl FnOnce(&mut Options)) -> Harness {
        self.runtime.shutdown(Duration::from_secs(10)).await;
        let Harness {
            dir,
            clock,
            runtime,
            probes,
            ..
        } = self;
        drop(runtime);
        let mut options = options(dir.path(), &clock);
        tune(&mut options);
        let runtime = Runtime::open(options).await.expect("runtime reopens");
        let ns = runtime.namespace::<Counter>(probes.clone());
        Harness {
            dir,
            clock,
            runtime,
            ns,
            probes,
        }
    }
}

async fn inspect(ns: &Namespace<Counter>, name: &str, key: &str) -> (i64, i64, Option<i64>) {
    match ns
        .get_by_name(name)
        .call(Request::Inspect { key: key.into() })
        .await
        .expect("inspect")
    {
        Reply::Rows {
            rows,
            migration_runs,
            alarm,
        } => (rows, migration_runs, alarm),
        other => panic!("unexpected reply {other:?}"),
    }
}

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

/// An alarm set on an object that then hibernates fires on time (not a millisecond early),
/// waking the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_fires_on_time_after_hibernation() {
    let h = harness(|o| o.object_idle = Duration::from_millis(30)).await;
    let stub = h.ns.get_by_name("sleeper");
    stub.call(Request::SetAlarm { at: T0 + 10_000 })
        .await
        .expect("set alarm");
    wait_until("the object hibernates", || !h.ns.is_live(stub.id())).await;
    assert_eq!(
        h.runtime
            .directory()
            .object("counter", stub.id())
            .and_then(|r| r.alarm_at),
        Some(T0 + 10_000)
    );
    h.clock.set(T0 + 9_999);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(h.probes.alarm_runs_of(stub.id()).is_empty(), "fired early");
    h.clock.set(T0 + 10_000);
    wait_until("the alarm runs", || {
        !h.probes.alarm_runs_of(stub.id()).is_empty()
    })
    .await;
    assert_eq!(
        h.probes.alarm_runs_of(stub.id()),
        vec![(T0 + 10_000, T0 + 10_000)]
    );
    assert_eq!(
        inspect(&h.ns, "sleeper", "-").await.2,
        None,
        "a fired alarm is cleared"
    );
}

/// A due alarm runs between batches even while the inbox never empties: a steady stream of
/// messages cannot starve an object's deadlines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_object_still_runs_its_due_alarm() {
    let h = harness(|_| {}).await;
    let stub = h.ns.get_by_name("busy");
    stub.call(Request::SetAlarm { at: T0 + 1_000 })
        .await
        .expect("set alarm");
    let done = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Many more callers than one batch takes, each sending again as soon as it is answered;
    // bounded in count.
    let senders: Vec<_> = (0..64)
        .map(|_| {
            let (stub, done, finished, stop) =
                (stub.clone(), done.clone(), finished.clone(), stop.clone());
            tokio::spawn(async move {
                for _ in 0..2_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    stub.call(Request::Add {
                        key: "k".into(),
                        by: 1,
                    })
                    .await
                    .expect("add");
                    done.fetch_add(1, Ordering::SeqCst);
                }
                finished.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    wait_until("the load runs", || done.load(Ordering::SeqCst) >= 500).await;
    h.clock.set(T0 + 1_000);
    wait_until("the alarm runs", || {
        !h.probes.alarm_runs_of(stub.id()).is_empty() || finished.load(Ordering::SeqCst) == 64
    })
    .await;
    let ran = !h.probes.alarm_runs_of(stub.id()).is_empty();
    let senders_done = finished.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.await.expect("sender");
    }
    assert!(
        ran && senders_done == 0,
        "the alarm waited for the load to end (ran: {ran}, senders done: {senders_done})"
    );
}

/// An alarm that came due while the process was down fires right after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_due_while_down_fires_after_restart() {
    let h = harness(|_| {}).await;
    let stub = h.ns.get_by_name("down");
    stub.call(Request::SetAlarm { at: T0 + 5_000 })
        .await
        .expect("set alarm");
    let id = stub.id();
    h.clock.set(T0 + 60_000);
    let h = h.restart(|_| {}).await;
    wait_until("the alarm runs", || !h.probes.alarm_runs_of(id).is_empty()).await;
    assert_eq!(h.probes.alarm_runs_of(id), vec![(T0 + 5_000, T0 + 60_000)]);
}

/// A failing `alarm()` is retried with exponential backoff: 2 s, then 4 s, then 8 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_alarm_is_retried_with_backoff() {
    let h = harness(|_| {}).await;
    h.probes.failing_alarms.store(3, Ordering::SeqCst);
    let stub = h.ns.get_by_name("flaky");
    let id = stub.id();
    stub.call(Request::SetAlarm { at: T0 + 1_000 })
        .await
        .expect("set alarm");
    let runs = || h.probes.alarm_runs_of(id).len();
    for (n, at) in [(1, 1_000), (2, 3_000), (3, 7_000), (4, 15_000)] {
        h.clock.set(T0 + at - 1);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(runs(), n - 1, "retry {n} ran early");
        h.clock.set(T0 + at);
        wait_until("the next attempt", || runs() == n).await;
    }
    let attempts: Vec<i64> = h
        .probes
        .alarm_runs_of(id)
        .iter()
        .map(|(_, ran)| ran - T0)
        .collect();
    assert_eq!(attempts, vec![1_000, 3_000, 7_000, 15_000]);
    assert_eq!(
        inspect(&h.ns, "flaky", "-").await.2,
        None,
        "the successful run consumed the alarm"
    );
}

/// Hibernation does not rewrite a directory alarm that is earlier than the object's but not
/// yet due (an object woken every few seconds would pay two directory commits per wake:
/// the tidy-up here and the earlier alarm again before its next commit); once it is due, the
/// next hibernation tidies it up. The scheduler in memory has the object's own time all
/// along: nothing wakes it at the directory's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hibernation_tidies_the_directory_alarm_only_once_it_is_due() {
    let h = harness(|o| o.object_idle = Duration::from_millis(30)).await;
    let stub = h.ns.get_by_name("lazy");
    let id = stub.id();
    let directory_alarm = || {
        h.runtime
            .directory()
            .object("counter", id)
            .and_then(|r| r.alarm_at)
    };
    stub.call(Request::SetAlarm { at: T0 + 100 })
        .await
        .expect("set alarm");
    stub.call(Request::SetAlarm { at: T0 + 10_000 })
        .await
        .expect("move it later");
    wait_until("the object hibernates", || !h.ns.is_live(id)).await;
    assert_eq!(directory_alarm(), Some(T0 + 100), "not due: left alone");
    let activations = h.probes.activations_of(id);
    h.clock.set(T0 + 100);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        h.probes.activations_of(id),
        activations,
        "the scheduler wakes the object at its own alarm, not the directory's"
    );
    // Woken by a call, it hibernates again: the directory's alarm is due now, so it goes.
    stub.call(Request::Get { key: "n".into() })
        .await
        .expect("get");
    wait_until("the object hibernates again", || !h.ns.is_live(id)).await;
    assert_eq!(directory_alarm(), Some(T0 + 10_000));
    assert!(h.probes.alarm_runs_of(id).is_empty());
}

/// An early wake (the directory holds an earlier alarm than the object's own, as a crash can
/// leave it) never runs the alarm before its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_wake_never_fires_an_alarm_early() {
    let h = harness(|o| o.object_idle = Duration::from_millis(30)).await;
    let stub = h.ns.get_by_name("moved");
    let id = stub.id();
    stub.call(Request::SetAlarm { at: T0 + 100 })
        .await
        .expect("set alarm");
    stub.call(Request::SetAlarm { at: T0 + 10_000 })
        .await
        .expect("move it later");
    // Moving later does not rewrite the directory at once: it still says T0 + 100.
    assert_eq!(
        h.runtime
            .directory()
            .object("counter", id)
            .and_then(|r| r.alarm_at),
        Some(T0 + 100)
    );
    // A graceful stop tidies the directory up; put back what a crash would have left.
    h.runtime.shutdown(Duration::from_secs(10)).await;
    let url = format!(
        "sqlite://{}",
        h.dir.path().join("directory.sqlite").display()
    );
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("open");
    sqlx::query("UPDATE objects SET alarm_at = ?1")
        .bind(T0 + 100)
        .execute(&mut conn)
        .await
        .expect("update");
    drop(conn);
    let h = h
        .restart(|o| o.object_idle = Duration::from_millis(30))
        .await;
    h.clock.set(T0 + 200);
    wait_until("the early wake activates the object", || {
        h.probes.activations_of(id) >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(h.probes.alarm_runs_of(id).is_empty(), "the alarm ran early");
    h.clock.set(T0 + 10_000);
    wait_until("the alarm runs", || !h.probes.alarm_runs_of(id).is_empty()).await;
    assert_eq!(h.probes.alarm_runs_of(id), vec![(T0 + 10_000, T0 + 10_000)]);
}

/// Many objects with random alarms and random clock steps: every alarm runs exactly once,
/// never before its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_never_fire_early_under_random_schedules() {
    let h = harness(|o| o.object_idle = Duration::from_millis(20)).await;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound
    };
    let mut expected = BTreeMap::new();
    for i in 0..40 {
        let at = T0 + 1 + next(5_000) as i64;
        let stub = h.ns.get_by_name(&format!("rand-{i}"));
        stub.call(Request::SetAlarm { at })
            .await
            .expect("set alarm");
        expected.insert(stub.id(), at);
    }
    let mut now = T0;
    while now < T0 + 5_100 {
        now += 1 + next(400) as i64;
        h.clock.set(now);
        tokio::time::sleep(Duration::from_millis(5 + next(20))).await;
    }
    wait_until("every alarm runs", || {
        expected
            .keys()
            .all(|id| !h.probes.alarm_runs_of(*id).is_empty())
    })
    .await;
    for (id, at) in &expected {
        let runs = h.probes.alarm_runs_of(*id);
        assert_eq!(runs.len(), 1, "{id:?} ran {runs:?}");
        assert_eq!(runs[0].0, *at);
        assert!(
            runs[0].1 >= *at,
            "{id:?} ran at {} before {}",
            runs[0].1,
            at
        );
    }
}

/// Idle objects leave memory and close their files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_objects_hibernate_and_close_files() {
    let h = harness(|o| o.object_idle = Duration::from_millis(30)).await;
    for i in 0..20 {
        h.ns.get_by_name(&format!("idle-{i}"))
            .call(Request::Add {
                key: "k".into(),
                by: 1,
            })
            .await
            .expect("add");
    }
    assert!(
        open_object_files(h.dir.path()) > 0,
        "files are open while objects are live"
    );
    wait_until("every object hibernates", || h.ns.live_count() == 0).await;
    assert_eq!(h.runtime.open_objects(), 0);
    assert_eq!(
        open_object_files(h.dir.path()),
        0,
        "a hibernated object left a file open"
    );
    // Hibernation checkpoints everything into the database file and keeps the WAL file,
    // empty, for the next wake (creating and deleting it at every wake is costly).
    let wals = files_with_suffix(&h.dir.path().join("objects"), ".sqlite-wal");
    assert_eq!(wals.len(), 20, "every object keeps its WAL file: {wals:?}");
    for wal in &wals {
        let len = std::fs::metadata(wal).expect("wal metadata").len();
        assert_eq!(
            len,
            0,
            "{} still holds {len} bytes after hibernation",
            wal.display()
        );
    }
    // And they come back with their state.
    let value =
        h.ns.get_by_name("idle-3")
            .call(Request::Get { key: "k".into() })
            .await;
    assert_eq!(value, Ok(Reply::Value(1)));
}

/// The warm tier: hibernated objects keep their connection, at most `warm_objects` of them
/// (the oldest closed first), each counted as an open database; the next activation takes it
/// back instead of opening the file, with the object's state; shutdown closes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_tier_keeps_a_bounded_number_of_hibernated_connections() {
    let h = harness(|o| {
        o.object_idle = Duration::from_millis(30);
        o.warm_objects = 3;
        o.warm_idle = Duration::from_secs(600);
    })
    .await;
    for i in 0..5 {
        let name = format!("warm-{i}");
        add(&h.ns, &name, 1).await;
        // One at a time, so that the tier's order is the names' order.
        wait_until("the object hibernates", || h.ns.live_count() == 0).await;
    }
    wait_until("the tier is full", || h.runtime.warm_objects() == 3).await;
    assert_eq!(h.runtime.open_objects(), 3, "parked connections are open");
    let warm = |h: &Harness| Metrics::get(&h.runtime.metrics().warm_activations);
    let before = warm(&h);
    // The newest hibernated object comes back from the tier, with its state.
    assert_eq!(add(&h.ns, "warm-4", 1).await, 2);
    assert_eq!(warm(&h), before + 1, "warm-4 was taken from the tier");
    // The oldest was closed when the tier was full: it opens its file again.
    assert_eq!(add(&h.ns, "warm-0", 1).await, 2);
    assert_eq!(warm(&h), before + 1, "warm-0 was opened cold");
    h.runtime.shutdown(Duration::from_secs(10)).await;
    assert_eq!(
        open_object_files(h.dir.path()),
        0,
        "shutdown closes parked connections"
    );
}

/// A parked connection is closed once it stayed in the warm tier for `warm_idle`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_tier_closes_connections_after_its_idle_time() {
    let h = harness(|o| {
        o.object_idle = Duration::from_millis(30);
        o.warm_objects = 100;
        o.warm_idle = Duration::from_millis(50);
    })
    .await;
    for i in 0..5 {
        add(&h.ns, &format!("cool-{i}"), 1).await;
    }
    wait_until("every object hibernates", || h.ns.live_count() == 0).await;
    // Taken out of the tier first, then closed: each holds its permit until it is closed.
    wait_until("the tier empties and closes", || {
        h.runtime.warm_objects() == 0 && h.runtime.open_objects() == 0
    })
    .await;
    assert_eq!(
        open_object_files(h.dir.path()),
        0,
        "a parked file is still open"
    );
    assert_eq!(add(&h.ns, "cool-2", 1).await, 2, "state survives the tier");
}

/// Files under `<dir>/objects` this process has open.
fn open_object_files(dir: &Path) -> usize {
    let objects = dir.join("objects");
    std::fs::read_dir("/proc/self/fd")
        .expect("procfs")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.starts_with(&objects))
        .count()
}

/// The live-object cap holds while 10,000 distinct objects are addressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_object_cap_holds_under_10000_ids() {
    live_object_cap_holds(0, 10_000).await;
}

/// The same with the warm tier on (fewer ids: it runs beside the other): parked connections
/// count against the cap, and an object the cap evicts closes for real (an activation waits
/// for its permit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_object_cap_holds_with_a_warm_tier() {
    live_object_cap_holds(20, 2_000).await;
}

async fn live_object_cap_holds(warm_objects: usize, ids: usize) {
    const CAP: usize = 50;
    let h = harness(|o| {
        o.max_live_objects = CAP;
        o.warm_objects = warm_objects;
        o.object_idle = Duration::from_secs(600);
        // The cap is about memory and files, not durability: skip the fsyncs.
        o.durability = Durability::Off;
    })
    .await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn({
        let runtime = h.runtime.clone();
        let dir = h.dir.path().to_owned();
        let stop = stop.clone();
        async move {
            let (mut max_open, mut max_files) = (0, 0);
            // Bounded: at most 100,000 samples.
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                max_open = max_open.max(runtime.open_objects());
                max_files = max_files.max(open_object_files(&dir));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (max_open, max_files)
        }
    });
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let ns = h.ns.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ids {
                    return;
                }
                let stub = ns.get_by_name(&format!("many-{i}"));
                stub.call(Request::Add {
                    key: "k".into(),
                    by: 1,
                })
                .await
                .expect("add");
            }
        }));
    }
    for worker in workers {
        worker.await.expect("worker");
    }
    stop.store(true, Ordering::Relaxed);
    let (max_open, max_files) = sampler.await.expect("sampler");
    assert!(max_open <= CAP, "{max_open} objects open at once");
    assert!(
        max_files <= 3 * CAP,
        "{max_files} files open: database, WAL and SHM per object at most"
    );
    assert_eq!(h.runtime.directory().object_count("counter"), ids);
    // Every object kept its write.
    for i in [0, ids / 2, ids - 1] {
        let value =
            h.ns.get_by_name(&format!("many-{i}"))
                .call(Request::Get { key: "k".into() })
                .await;
        assert_eq!(value, Ok(Reply::Value(1)));
    }
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
