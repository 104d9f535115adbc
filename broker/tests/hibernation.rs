//! The durable-object runtime's hibernation, through its public API and real SQLite files:
//! idle objects close their files, the warm tier keeps a bounded number of connections for a
//! bounded time, and the live-object cap holds under 10,000 ids, with and without the tier.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use broker::objects::{Durability, Metrics};
use support::harness::{Harness, harness};
use support::{Reply, Request, add, files_with_suffix, wait_until};

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
    // A connection pushed out of the full tier closes in the background.
    wait_until(
        "the tier is full and the pushed-out connections closed",
        || h.runtime.warm_objects() == 3 && h.runtime.open_objects() == 3,
    )
    .await;
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

/// While alarms run late, idle objects put off hibernating (closing costs a checkpoint and
/// fsyncs that would compete with the deadlines) and keep serving; once alarms are on time
/// they hibernate. Putting it off never holds a permit an activation needs: at the
/// live-object cap a new object still opens (an idle one is evicted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_objects_put_off_hibernating_while_alarms_run_late() {
    let h = harness(|o| {
        o.object_idle = Duration::from_millis(30);
        o.max_live_objects = 16;
    })
    .await;
    let lateness = &h.runtime.metrics().alarm_lateness;
    lateness.observe_ms(100);
    for i in 0..4 {
        add(&h.ns, &format!("late-{i}"), 1).await;
    }
    // Ten idle times pass (bounded: 30 rounds of 10 ms) while alarms keep running late.
    for _ in 0..30 {
        lateness.observe_ms(100);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        h.ns.live_count(),
        4,
        "idle objects hibernated while alarms were late"
    );
    // They still serve at once.
    assert_eq!(add(&h.ns, "late-1", 1).await, 2);
    // More objects than the cap allows still open, one after another: objects stop putting
    // hibernation off before the cap is near, and the cap evicts idle ones.
    for i in 0..20 {
        lateness.observe_ms(100);
        assert_eq!(add(&h.ns, &format!("more-{i}"), 1).await, 1);
        assert!(h.ns.live_count() <= 16, "the cap holds");
    }
    // On time again (the window passes without a late alarm): they hibernate.
    lateness.observe_ms(0);
    wait_until("every object hibernates", || h.ns.live_count() == 0).await;
    assert_eq!(add(&h.ns, "late-2", 1).await, 2, "state survives");
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
