//! Cluster mode at the runtime's level (DESIGN.md §10): two runtimes in one process are two
//! nodes sharing one PostgreSQL database (a fresh one per test, from `BERTH_TEST_POSTGRES`),
//! each with its own data directory. A node "dies" when the test moves its membership
//! deadline into the past in PostgreSQL, which is what a killed or paused node looks like to
//! the others.

mod support;

use std::sync::Arc;
use std::time::Duration;

use broker::objects::cluster::testing;
use broker::objects::{
    CallError, Cluster, ClusterOptions, ManualClock, Namespace, Options, Runtime,
};
use sqlx::PgPool;
use support::{Counter, Probes, Reply, Request};

const T0: i64 = 1_800_000_000_000;

struct Node {
    _dir: tempfile::TempDir,
    cluster: Arc<Cluster>,
    runtime: Runtime,
    ns: Namespace<Counter>,
}

/// A node called `name`. `renew` is how often it renews its membership: a node that renews
/// rarely (and has a long TTL) keeps believing it is the owner after the test lapsed it,
/// which is exactly a paused node that resumes — a zombie.
async fn node(
    db: &str,
    name: &str,
    clock: &ManualClock,
    renew: Duration,
    tune: impl FnOnce(&mut ClusterOptions),
) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = ClusterOptions::new(db, name, format!("http://{name}.invalid"));
    options.heartbeat_every = renew;
    options.membership_ttl = renew * 5;
    tune(&mut options);
    let cluster = Cluster::join(options).await.expect("joins the cluster");
    let mut runtime_options = Options::new(dir.path());
    runtime_options.clock = Arc::new(clock.clone());
    runtime_options.cluster = Some(Arc::clone(&cluster));
    let runtime = Runtime::open(runtime_options).await.expect("runtime opens");
    let ns = runtime.namespace::<Counter>(Arc::new(Probes::default()));
    Node {
        _dir: dir,
        cluster,
        runtime,
        ns,
    }
}

/// Makes the node called `name` look dead to the others: its membership deadline passed.
async fn lapse(pool: &PgPool, name: &str) {
    sqlx::query("UPDATE berth_nodes SET deadline = now() - interval '1 second' WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await
        .expect("lapse");
}

async fn add(ns: &Namespace<Counter>, by: i64) -> Result<i64, CallError> {
    match ns
        .get_by_name("acme")
        .call(Request::Add {
            key: "k".into(),
            by,
        })
        .await?
    {
        Reply::Value(v) => Ok(v),
        other => panic!("unexpected reply {other:?}"),
    }
}

async fn get(ns: &Namespace<Counter>) -> Result<i64, CallError> {
    match ns
        .get_by_name("acme")
        .call(Request::Get { key: "k".into() })
        .await?
    {
        Reply::Value(v) => Ok(v),
        other => panic!("unexpected reply {other:?}"),
    }
}

async fn log_rows(pool: &PgPool) -> Vec<(i64, i64)> {
    sqlx::query_as("SELECT seq, epoch FROM berth_log ORDER BY seq")
        .fetch_all(pool)
        .await
        .expect("log")
}

/// A node that was replaced while it was paused still believes it owns the object; its next
/// commit is refused by the epoch fence, answers `Moved` (never success), and changes nothing
/// the new owner sees. Without the fence the stale write would land in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_owners_commit_is_refused() {
    let db = testing::fresh_database().await;
    let pool = PgPool::connect(&db).await.expect("pool");
    let clock = ManualClock::new(T0);
    let a = node(&db, "a", &clock, Duration::from_secs(3_600), |_| {}).await;
    assert_eq!(add(&a.ns, 1).await, Ok(1));
    assert_eq!(add(&a.ns, 1).await, Ok(2));

    lapse(&pool, "a").await;
    let b = node(&db, "b", &clock, Duration::from_millis(200), |_| {}).await;
    // B claims the object (epoch 2), replays A's two batches and goes on.
    assert_eq!(add(&b.ns, 10).await, Ok(12));

    // A, resumed, still holds the object in memory and a valid-looking membership.
    assert!(a.cluster.membership().is_valid());
    assert_eq!(add(&a.ns, 100).await, Err(CallError::Moved(None)));
    // A dropped the object; asked again (after the dropped instance answered what it still
    // had queued with `Moved`), it finds B as the owner.
    let mut answer = add(&a.ns, 100).await;
    for _ in 0..100 {
        if answer != Err(CallError::Moved(None)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        answer = add(&a.ns, 100).await;
    }
    match answer {
        Err(CallError::Moved(Some(url))) => assert_eq!(url, "http://b.invalid"),
        other => panic!("expected the owner's URL, got {other:?}"),
    }
    assert_eq!(get(&b.ns).await, Ok(12));
    let log = log_rows(&pool).await;
    assert_eq!(
        log,
        vec![(1, 1), (2, 1), (3, 2)],
        "A's refused batch is not in the log"
    );

    b.runtime.shutdown(Duration::from_secs(10)).await;
    a.runtime.shutdown(Duration::from_secs(10)).await;
    pool.close().await;
    testing::drop_database(&db).await;
}

/// An object moves to another node with every acknowledged write: the new owner has no file
/// of its own, so it starts from the latest snapshot and replays the log after it. Snapshots
/// trim the log behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_object_keeps_every_acknowledged_write() {
    let db = testing::fresh_database().await;
    let pool = PgPool::connect(&db).await.expect("pool");
    let clock = ManualClock::new(T0);
    let a = node(&db, "a", &clock, Duration::from_millis(200), |o| {
        o.snapshot_every = 4
    })
    .await;
    let mut expected = 0;
    for by in 1..=10 {
        expected += by;
        assert_eq!(add(&a.ns, by).await, Ok(expected));
    }
    // 10 batches, a snapshot after the 4th and the 8th: the log holds 9 and 10.
    let (snapshot_seq, seq): (i64, i64) =
        sqlx::query_as("SELECT snapshot_seq, seq FROM berth_objects")
            .fetch_one(&pool)
            .await
            .expect("object row");
    assert_eq!((snapshot_seq, seq), (8, 10));
    assert_eq!(
        log_rows(&pool)
            .await
            .iter()
            .map(|(s, _)| *s)
            .collect::<Vec<_>>(),
        [9, 10]
    );

    // A dies (it never renews again); B takes the object over.
    a.runtime.shutdown(Duration::from_secs(0)).await;
    lapse(&pool, "a").await;
    let b = node(&db, "b", &clock, Duration::from_millis(200), |_| {}).await;
    assert_eq!(get(&b.ns).await, Ok(expected));
    assert_eq!(add(&b.ns, 1).await, Ok(expected + 1));

    b.runtime.shutdown(Duration::from_secs(10)).await;
    pool.close().await;
    testing::drop_database(&db).await;
}

/// A node that shuts down hands its objects over: another node claims them at once, without
/// waiting for the membership to lapse, and a node coming back replays what it missed onto
/// its own older file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_move_back_and_forth_through_clean_shutdowns() {
    let db = testing::fresh_database().await;
    let clock = ManualClock::new(T0);
    let a = node(&db, "a", &clock, Duration::from_millis(200), |_| {}).await;
    assert_eq!(add(&a.ns, 1).await, Ok(1));
    let b = node(&db, "b", &clock, Duration::from_millis(200), |_| {}).await;
    match add(&b.ns, 1).await {
        Err(CallError::Moved(Some(url))) => assert_eq!(url, "http://a.invalid"),
        other => panic!("A owns it: {other:?}"),
    }
    // A's runtime stops; its directory stays, so the next "a" starts from its own file.
    let a_dir = a._dir;
    a.runtime.shutdown(Duration::from_secs(10)).await;
    assert_eq!(add(&b.ns, 1).await, Ok(2));
    assert_eq!(add(&b.ns, 1).await, Ok(3));
    b.runtime.shutdown(Duration::from_secs(10)).await;

    let cluster = Cluster::join(ClusterOptions::new(&db, "a", "http://a.invalid"))
        .await
        .expect("joins again");
    let mut options = Options::new(a_dir.path());
    options.clock = Arc::new(clock.clone());
    options.cluster = Some(cluster);
    let runtime = Runtime::open(options).await.expect("reopens");
    let ns = runtime.namespace::<Counter>(Arc::new(Probes::default()));
    assert_eq!(get(&ns).await, Ok(3));
    runtime.shutdown(Duration::from_secs(10)).await;
    testing::drop_database(&db).await;
}

/// The alarm of an object whose owner died fires on another node: that node's poll finds it
/// due and unowned, claims the object and runs the alarm — not before it is due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_alarm_fires_on_another_node() {
    let db = testing::fresh_database().await;
    let pool = PgPool::connect(&db).await.expect("pool");
    let clock = ManualClock::new(T0);
    let a = node(&db, "a", &clock, Duration::from_millis(100), |_| {}).await;
    let stub = a.ns.get_by_name("acme");
    stub.call(Request::SetAlarm { at: T0 + 60_000 })
        .await
        .expect("alarm set");
    let (alarm_at,): (Option<i64>,) = sqlx::query_as("SELECT alarm_at FROM berth_objects")
        .fetch_one(&pool)
        .await
        .expect("row");
    assert_eq!(
        alarm_at,
        Some(T0 + 60_000),
        "the alarm is in PostgreSQL with the commit"
    );
    a.runtime.shutdown(Duration::from_secs(0)).await;
    lapse(&pool, "a").await;

    let probes = Arc::new(Probes::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster_options = ClusterOptions::new(&db, "b", "http://b.invalid");
    cluster_options.heartbeat_every = Duration::from_millis(100);
    let cluster = Cluster::join(cluster_options).await.expect("joins");
    let mut options = Options::new(dir.path());
    options.clock = Arc::new(clock.clone());
    options.cluster = Some(cluster);
    let runtime = Runtime::open(options).await.expect("opens");
    let _ns = runtime.namespace::<Counter>(probes.clone());
    let id = broker::objects::ObjectId::from_name("counter", "acme");
    // Not due yet: polls come and go, nothing runs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(probes.alarm_runs_of(id).is_empty());
    clock.advance(Duration::from_secs(61));
    for _ in 0..2_000 {
        if !probes.alarm_runs_of(id).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let runs = probes.alarm_runs_of(id);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(runs[0].1 >= T0 + 60_000, "never early: {runs:?}");
    runtime.shutdown(Duration::from_secs(10)).await;
    pool.close().await;
    testing::drop_database(&db).await;
}

/// A single node's data directory is not taken for a cluster node's cache: its objects hold
/// state the cluster's log has never seen, which would be lost the first time one moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_nodes_data_directory_is_refused_in_cluster_mode() {
    let db = testing::fresh_database().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let mut options = Options::new(dir.path());
    options.clock = Arc::new(clock.clone());
    let single = Runtime::open(options).await.expect("single node");
    let ns = single.namespace::<Counter>(Arc::new(Probes::default()));
    assert_eq!(add(&ns, 1).await, Ok(1));
    single.shutdown(Duration::from_secs(10)).await;

    let cluster = Cluster::join(ClusterOptions::new(&db, "a", "http://a.invalid"))
        .await
        .expect("joins");
    let mut options = Options::new(dir.path());
    options.clock = Arc::new(clock.clone());
    options.cluster = Some(Arc::clone(&cluster));
    let refused = Runtime::open(options).await.err().expect("refused");
    assert!(
        refused.to_string().contains("single-node berth's data"),
        "{refused}"
    );
    cluster.leave().await;
    testing::drop_database(&db).await;
}
