//! An object's SQLite file has one connection, its object's: no other connection of the
//! process opens it beside (not even a backup's), so SQLite runs it without locks and without a
//! shared-memory WAL index (`storage::Access::Sole`). A second connection would leave a `-shm`
//! file beside the database; none ever appears.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use broker::objects::backup::{self, Secrets};
use broker::objects::{Namespace, Options, Runtime};
use sqlx::Connection as _;
use support::{Counter, Probes, Reply, Request, add, files_with_suffix, wait_until};

/// The file of object `name` in a backup.
fn copy_path(
    to: &Path,
    manifest: &backup::Manifest,
    ns: &Namespace<Counter>,
    name: &str,
) -> std::path::PathBuf {
    let id = ns.id_from_name(name).to_hex();
    let entry = manifest
        .files
        .iter()
        .find(|entry| entry.id.as_deref() == Some(id.as_str()))
        .unwrap_or_else(|| panic!("{name} is in the backup"));
    to.join(&entry.path)
}

/// The one integer `sql` reads from the SQLite file at `path`, on a read-only connection of
/// its own (the file is a copy, or closed).
async fn read_integer(path: &Path, sql: &str) -> i64 {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .immutable(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .expect("the file opens");
    let (value,): (i64,) = sqlx::query_as(sql)
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
    conn.close().await.expect("closes");
    value
}

/// Counter `k` in a backup's copy of object `name`.
async fn copied_value(
    to: &Path,
    manifest: &backup::Manifest,
    ns: &Namespace<Counter>,
    name: &str,
) -> i64 {
    read_integer(
        &copy_path(to, manifest, ns, name),
        "SELECT value FROM counters WHERE key = 'k'",
    )
    .await
}

/// The page size of the SQLite file at `path`.
async fn page_size(path: &Path) -> i64 {
    read_integer(path, "PRAGMA page_size").await
}

/// A backup copies a closed object, a parked one (warm tier) and a live one busy in a batch,
/// each with every write acknowledged before the backup began, and never opens an object's
/// file beside its connection: no `-shm` file appears, while objects are live, parked,
/// closed, or copied. It fails if object files were opened with SQLite's shared defaults or
/// if the backup read them on a connection of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_files_have_one_connection_and_backups_go_through_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = Options::new(dir.path());
    options.object_idle = Duration::from_millis(30);
    options.warm_objects = 1;
    options.warm_idle = Duration::from_secs(600);
    let runtime = Runtime::open(options).await.expect("runtime opens");
    let probes = Arc::new(Probes::default());
    let ns = runtime.namespace::<Counter>(probes.clone());
    let objects = dir.path().join("objects");

    // `closed` hibernates first and is pushed out of the one-place tier by `parked`.
    assert_eq!(add(&ns, "closed", 1).await, 1);
    wait_until("closed hibernates", || ns.live_count() == 0).await;
    assert_eq!(add(&ns, "parked", 2).await, 2);
    wait_until("parked hibernates", || ns.live_count() == 0).await;
    wait_until("the tier holds parked", || runtime.warm_objects() == 1).await;
    // `live` is acknowledged, then busy in a batch the test holds open.
    assert_eq!(add(&ns, "live", 3).await, 3);
    let busy = {
        let stub = ns.get_by_name("live");
        tokio::spawn(async move { stub.call(Request::Hold).await })
    };
    wait_until("live is holding", || {
        probes.running.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    assert!(
        files_with_suffix(&objects, "-shm").is_empty(),
        "no shared-memory file"
    );

    let to = dir.path().join("backup");
    let backup = {
        let runtime = &runtime;
        let to = to.clone();
        async move {
            backup::backup(
                runtime,
                &to,
                Secrets {
                    fingerprint: "test".to_owned(),
                    master_key: None,
                },
            )
            .await
        }
    };
    let live = ns.id_from_name("live");
    let release = async {
        // The live object copies itself after the batch it is in: once the copy waits in its
        // inbox, let that batch end.
        wait_until("the copy waits for live", || ns.queued(live) == 1).await;
        probes.gate.add_permits(1);
    };
    let (manifest, ()) = tokio::join!(backup, release);
    let manifest = manifest.expect("the backup succeeds");
    assert_eq!(
        busy.await.expect("joins"),
        Ok(Reply::Done),
        "the held request finishes"
    );

    assert_eq!(copied_value(&to, &manifest, &ns, "closed").await, 1);
    assert_eq!(copied_value(&to, &manifest, &ns, "parked").await, 2);
    assert_eq!(copied_value(&to, &manifest, &ns, "live").await, 3);
    assert!(
        files_with_suffix(&objects, "-shm").is_empty(),
        "the backup opened an object file beside its connection: {:?}",
        files_with_suffix(&objects, "-shm")
    );
    // Every object still serves, from its own state.
    assert_eq!(add(&ns, "closed", 10).await, 11);
    assert_eq!(add(&ns, "parked", 10).await, 12);
    assert_eq!(add(&ns, "live", 10).await, 13);
    runtime.shutdown(Duration::from_secs(10)).await;
}

/// New object files are made with 2 KiB pages (a wake reads and writes whole pages, and most
/// of an object's tables hold a few rows: BENCHMARKS.md, W2), and a file an earlier build
/// made with SQLite's default 4 KiB keeps its pages and serves its state as before, and its
/// backup copy has the new pages. Fails if new files get the default size, if opening an
/// older file changed or refused it, or if backups kept the old size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_object_files_have_small_pages_and_older_files_keep_theirs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = Options::new(dir.path());
    options.object_idle = Duration::from_millis(30);
    options.warm_objects = 0;
    let runtime = Runtime::open(options).await.expect("runtime opens");
    let ns = runtime.namespace::<Counter>(Arc::new(Probes::default()));
    let objects = dir.path().join("objects");

    assert_eq!(add(&ns, "object", 1).await, 1);
    wait_until("the object hibernates", || ns.live_count() == 0).await;
    let files = files_with_suffix(&objects, ".sqlite");
    assert_eq!(files.len(), 1, "one object file: {files:?}");
    let file = &files[0];
    assert_eq!(
        page_size(file).await,
        2048,
        "a new object file has 2 KiB pages"
    );

    // Rewrite the closed file with 4 KiB pages, as builds before this one made every file.
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(file);
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .expect("the closed file opens");
        for statement in [
            "PRAGMA journal_mode = DELETE",
            "PRAGMA page_size = 4096",
            "VACUUM",
            "PRAGMA journal_mode = WAL",
        ] {
            sqlx::query(statement)
                .execute(&mut conn)
                .await
                .unwrap_or_else(|error| panic!("{statement}: {error}"));
        }
        conn.close().await.expect("closes");
    }
    assert_eq!(page_size(file).await, 4096, "the file now has 4 KiB pages");

    assert_eq!(
        add(&ns, "object", 2).await,
        3,
        "the older file serves its state"
    );
    wait_until("the object hibernates again", || ns.live_count() == 0).await;
    assert_eq!(page_size(file).await, 4096, "an older file keeps its pages");

    // A backup's copy is written with the new pages (`VACUUM INTO` takes the connection's
    // page size), so backing up and restoring converts older files.
    let to = dir.path().join("backup");
    let manifest = backup::backup(
        &runtime,
        &to,
        Secrets {
            fingerprint: "test".to_owned(),
            master_key: None,
        },
    )
    .await
    .expect("the backup succeeds");
    assert_eq!(copied_value(&to, &manifest, &ns, "object").await, 3);
    assert_eq!(
        page_size(&copy_path(&to, &manifest, &ns, "object")).await,
        2048,
        "the copy has 2 KiB pages"
    );
    runtime.shutdown(Duration::from_secs(10)).await;
}
