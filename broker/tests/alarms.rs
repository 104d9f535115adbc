//! The durable-object runtime's alarms, through its public API, real SQLite files and a
//! manual clock: on time after hibernation and after a restart, never early (also under
//! random schedules), retried with backoff, run before a busy object's queue, and the
//! directory's copy tidied only once due.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::harness::{T0, harness, inspect};
use support::{Request, wait_until};

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
