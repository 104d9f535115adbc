//! The output gate under `--durability group` and `--durability log`: a batch's commit
//! reaches SQLite without an fsync, and nothing leaves the object — the reply, the provider's
//! create, the webhook delivery — until the shared durability barrier (`group`) or the
//! commit journal's sync (`log`) has made it durable.
//!
//! The real binary runs with the failpoint `durability.barrier.hold`, which holds every
//! barrier and every journal sync while the file `failpoint-hold-barrier` exists in the data
//! directory. While it is held, a lease request's write is committed (the test reads it from
//! the tenant's SQLite file) but the client has no answer, the fake cloud no runner and the
//! webhook receiver no delivery; once released, all three arrive. Then the same again, killed
//! with SIGKILL while held: after the restart the data directory opens and answers, and
//! nothing of the unacknowledged lease was seen outside before the kill.
//!
//! Under `log`, a power loss may take from an object file every commit since its last sync;
//! the journal puts them back. `acknowledged_writes_survive_losing_the_object_files_tail`
//! rewinds the tenant's file to an earlier state after SIGKILL, crashes the next start in
//! the middle of its replay, and finds every acknowledged write after the start after that.
//! 127.0.0.1 only, every wait bounded.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use serde_json::{Value, json};
use sqlx::{Connection, SqliteConnection};
use support::Server;

const TENANT: &str = "gate";
const HOLD_FILE: &str = "failpoint-hold-barrier";
/// How long a held barrier is watched for anything leaking out after the write committed.
const WATCH: Duration = Duration::from_millis(1_500);

/// Webhook deliveries received: the `type` of each.
#[derive(Clone, Default)]
struct Deliveries(Arc<Mutex<Vec<String>>>);

impl Deliveries {
    fn lease_events(&self) -> usize {
        self.0
            .lock()
            .expect("deliveries lock")
            .iter()
            .filter(|kind| kind.starts_with("lease."))
            .count()
    }
}

/// A webhook receiver on 127.0.0.1 that answers 200 and records each delivery's type.
async fn receiver() -> (String, Deliveries) {
    let deliveries = Deliveries::default();
    let seen = deliveries.clone();
    let handler = move |body: Bytes| {
        let seen = seen.clone();
        async move {
            let message: Value = serde_json::from_slice(&body).unwrap_or_default();
            let kind = message["type"].as_str().unwrap_or_default().to_owned();
            seen.0.lock().expect("deliveries lock").push(kind);
            axum::http::StatusCode::OK
        }
    };
    let app = axum::Router::new().route("/hook", axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, deliveries)
}

/// The flags every server here runs with under `durability`: the fake provider, webhooks to
/// the local receiver, and no reconciliation round starting background work behind the
/// test's back.
fn flags(durability: &'static str) -> [&'static str; 6] {
    [
        "--durability",
        durability,
        "--enable-fake",
        "--allow-private-webhooks",
        "--reconcile-interval",
        "1h",
    ]
}

fn start(data: &Path, durability: &'static str) -> Server {
    Server::start_with_env(
        data,
        &flags(durability),
        &[("BERTH_FAILPOINTS", "durability.barrier.hold")],
    )
}

/// Every object database under the data directory.
fn object_files(data: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![data.join("objects")];
    for _ in 0..10_000 {
        let Some(dir) = stack.pop() else { break };
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "sqlite") {
                files.push(path);
            }
        }
    }
    files
}

/// Whether lease `id` (or, without an id, any lease but those in `known`) is committed in
/// some object's database, read from outside the server.
async fn committed_lease(data: &Path, known: &[String]) -> Option<String> {
    for file in object_files(data) {
        let url = format!("sqlite://{}?mode=ro", file.display());
        let Ok(mut conn) = SqliteConnection::connect(&url).await else {
            continue;
        };
        let rows: Vec<(String,)> = sqlx::query_as("SELECT id FROM leases")
            .fetch_all(&mut conn)
            .await
            .unwrap_or_default();
        let _ = conn.close().await;
        if let Some((id,)) = rows.into_iter().find(|(id,)| !known.contains(id)) {
            return Some(id);
        }
    }
    None
}

/// Waits (bounded) until a lease not in `known` is committed; returns its id.
async fn wait_committed(data: &Path, known: &[String]) -> String {
    for _ in 0..300 {
        if let Some(id) = committed_lease(data, known).await {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the lease request's write was not committed within 15 s");
}

async fn setup(server: &Server, hook: &str, cloud: &Path) {
    let (status, body) = server
        .call("POST", "/v1/tenants", Some(json!({ "name": TENANT })))
        .await;
    assert_eq!(status, 201, "{body}");
    let account = json!({ "kind": "fake", "config": { "state_dir": cloud } });
    let path = format!("/v1/tenants/{TENANT}/providers/fake");
    let (status, body) = server.call("PUT", &path, Some(account)).await;
    assert_eq!(status, 200, "{body}");
    let pool = json!({ "provider": "fake", "machine_type": "m", "hourly_price_micros": 1_000 });
    let path = format!("/v1/tenants/{TENANT}/pools/small");
    let (status, body) = server.call("PUT", &path, Some(pool)).await;
    assert_eq!(status, 200, "{body}");
    let path = format!("/v1/tenants/{TENANT}/webhooks/main");
    let (status, body) = server
        .call("PUT", &path, Some(json!({ "url": hook })))
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Waits (bounded) until the tenant has nothing in flight: no webhook delivery pending and no
/// new delivery for a while. A held barrier stops the whole object (it is serial), so the
/// request under test must not queue behind background work that is itself held.
async fn settle(server: &Server, deliveries: &Deliveries) {
    let path = format!("/v1/tenants/{TENANT}/webhooks/main");
    let mut seen = usize::MAX;
    for _ in 0..100 {
        let (status, webhook) = server.call("GET", &path, None).await;
        assert_eq!(status, 200, "{webhook}");
        let now = deliveries.0.lock().expect("deliveries lock").len();
        if webhook["pending"].as_i64() == Some(0) && now == seen {
            return;
        }
        seen = now;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("the tenant did not settle within 30 s");
}

fn runners(cloud: &Path) -> usize {
    providers::fake::read_state_dir(cloud)
        .expect("cloud dir")
        .len()
}

/// Sends a lease request in the background; its answer comes through the handle.
fn request_lease(server: &Server) -> tokio::task::JoinHandle<Option<(u16, Value)>> {
    let url = format!("{}/v1/tenants/{TENANT}/leases", server.url);
    let token = server.admin_token();
    tokio::spawn(async move {
        let response = reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .json(&json!({ "pool": "small", "ttl_s": 600 }))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or_default();
        Some((status, body))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_leaves_an_object_before_the_durability_barrier() {
    nothing_leaves_before_it_is_durable("group").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_leaves_an_object_before_the_journal_is_synced() {
    nothing_leaves_before_it_is_durable("log").await;
}

async fn nothing_leaves_before_it_is_durable(durability: &'static str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let cloud = dir.path().join("berth-runners").join("cloud");
    let hold = data.join(HOLD_FILE);
    let (hook, deliveries) = receiver().await;
    let server = start(&data, durability);
    setup(&server, &hook, &cloud).await;
    assert_eq!(runners(&cloud), 0);
    settle(&server, &deliveries).await;

    // Held: the write commits, nothing of it is seen outside.
    std::fs::write(&hold, b"").expect("hold the barrier");
    let answer = request_lease(&server);
    let id = wait_committed(&data, &[]).await;
    tokio::time::sleep(WATCH).await;
    assert!(
        !answer.is_finished(),
        "the lease request was answered before its write was durable"
    );
    assert_eq!(
        runners(&cloud),
        0,
        "the provider created a runner before the lease was durable"
    );
    assert_eq!(
        deliveries.lease_events(),
        0,
        "a webhook was delivered before the lease was durable"
    );

    // Released: the answer, the runner and the delivery all arrive.
    std::fs::remove_file(&hold).expect("release the barrier");
    let (status, lease) = answer
        .await
        .expect("request task")
        .expect("berth answers once released");
    assert!(matches!(status, 201 | 202), "{status} {lease}");
    assert_eq!(lease["id"].as_str(), Some(id.as_str()), "{lease}");
    server.wait_lease(TENANT, &id, "ready").await;
    assert_eq!(runners(&cloud), 1);
    for _ in 0..300 {
        if deliveries.lease_events() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        deliveries.lease_events() > 0,
        "no webhook after the barrier"
    );

    // Held again, then killed: nothing of the second lease was seen outside, and the data
    // directory opens and answers consistently after the restart.
    settle(&server, &deliveries).await;
    let delivered = deliveries.lease_events();
    std::fs::write(&hold, b"").expect("hold the barrier");
    let answer = request_lease(&server);
    let second = wait_committed(&data, std::slice::from_ref(&id)).await;
    tokio::time::sleep(WATCH).await;
    assert!(!answer.is_finished(), "answered while the barrier was held");
    assert_eq!(runners(&cloud), 1, "a runner was created while held");
    assert_eq!(deliveries.lease_events(), delivered, "delivered while held");
    server.kill();
    let escaped = answer.await.expect("request task");
    assert!(
        escaped.is_none(),
        "an answer escaped before the kill: {escaped:?}"
    );
    std::fs::remove_file(&hold).expect("release the barrier");

    let server = start(&data, durability);
    let (status, first) = server
        .call("GET", &format!("/v1/tenants/{TENANT}/leases/{id}"), None)
        .await;
    assert_eq!(status, 200, "the acknowledged lease survives: {first}");
    // The unacknowledged lease may or may not be there; if it is, it goes on normally.
    let (status, body) = server
        .call(
            "GET",
            &format!("/v1/tenants/{TENANT}/leases/{second}"),
            None,
        )
        .await;
    assert!(matches!(status, 200 | 404), "{status} {body}");
    if status == 200 {
        server.wait_lease(TENANT, &second, "ready").await;
    }
    let (status, list) = server
        .call("GET", &format!("/v1/tenants/{TENANT}/leases"), None)
        .await;
    assert_eq!(status, 200, "{list}");
    server.terminate();
}

/// Every file of the object databases under the data directory (databases and WALs), with
/// its bytes (`None`: absent).
fn object_state(data: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let mut state = Vec::new();
    for file in object_files(data) {
        let mut wal = file.clone().into_os_string();
        wal.push("-wal");
        for path in [file, PathBuf::from(wal)] {
            let bytes = std::fs::read(&path).ok();
            state.push((path, bytes));
        }
    }
    state
}

/// Puts the object files back as `saved` held them (a missing file is deleted).
fn rewind(saved: &[(PathBuf, Option<Vec<u8>>)]) {
    for (path, bytes) in saved {
        match bytes {
            Some(bytes) => std::fs::write(path, bytes).expect("rewind a file"),
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

async fn release(server: &Server, id: &str) {
    let path = format!("/v1/tenants/{TENANT}/leases/{id}/release");
    let (status, body) = server.call("POST", &path, None).await;
    assert_eq!(status, 200, "{body}");
}

async fn lease(server: &Server, id: &str) -> (u16, Value) {
    server
        .call("GET", &format!("/v1/tenants/{TENANT}/leases/{id}"), None)
        .await
}

/// The journal tests' [`flags`]: no hibernation either, whose checkpoint would sync (or
/// close) the files the tests look at.
fn journal_args(durability: &'static str) -> [&'static str; 8] {
    let [a, b, c, d, e, f] = flags(durability);
    [a, b, c, d, e, f, "--object-idle", "1h"]
}

/// Acknowledged writes: two leases granted and made ready, the first released. Returns their
/// ids.
async fn ready_then_release_one(server: &Server) -> [String; 2] {
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, body) = server
            .call(
                "POST",
                &format!("/v1/tenants/{TENANT}/leases"),
                Some(json!({ "pool": "small", "ttl_s": 600 })),
            )
            .await;
        assert!(matches!(status, 201 | 202), "{status} {body}");
        let id = body["id"].as_str().expect("lease id").to_owned();
        server.wait_lease(TENANT, &id, "ready").await;
        ids.push(id);
    }
    release(server, &ids[0]).await;
    ids.try_into().expect("two ids")
}

/// The writes of [`ready_then_release_one`] are back: the first lease released (or on its
/// way), the second ready; `what` names the case in failures.
async fn assert_back(server: &Server, ids: &[String; 2], what: &str) {
    let (status, body) = lease(server, &ids[0]).await;
    assert_eq!(status, 200, "{what}: the released lease is back: {body}");
    assert!(
        matches!(body["state"].as_str(), Some("releasing" | "released")),
        "{what}: released before the kill, so still released: {body}"
    );
    let (status, body) = lease(server, &ids[1]).await;
    assert_eq!(status, 200, "{what}: the ready lease is back: {body}");
    assert_eq!(body["state"], "ready", "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_losing_the_object_files_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let cloud = dir.path().join("berth-runners").join("cloud");
    let (hook, deliveries) = receiver().await;
    let server = Server::start(&data, &journal_args("log"));
    setup(&server, &hook, &cloud).await;
    settle(&server, &deliveries).await;
    // A graceful stop closes every object file and retires the journal: this is the state
    // the disk holds for sure.
    assert!(server.terminate().success());
    let journal = data.join("journal");
    let segments = || std::fs::read_dir(&journal).map_or(0, |dir| dir.count());
    assert_eq!(segments(), 0, "a graceful stop leaves no journal to replay");
    let saved = object_state(&data);
    assert!(!saved.is_empty());

    // Acknowledged writes after it: a lease granted and made ready, one released.
    let server = Server::start(&data, &journal_args("log"));
    let ids = ready_then_release_one(&server).await;
    let (_, ready) = lease(&server, &ids[1]).await;
    server.kill();

    // A power loss that took every unsynced page of the object files; the journal, synced
    // before each answer, is what is left of those writes.
    rewind(&saved);
    assert!(
        segments() > 0,
        "the journal holds the writes after the rewind"
    );

    // The next start crashes after replaying one record...
    let mut crashed = support::berth()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(journal_args("log"))
        .env("BERTH_FAILPOINTS", "journal.replay.applied")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("berth starts");
    let status = support::wait_bounded(&mut crashed);
    assert!(
        !status.success(),
        "the failpoint stops the replay: {status}"
    );

    // ...and the one after it finishes the replay, whatever durability it now runs with.
    let server = Server::start(&data, &journal_args("full"));
    assert_eq!(segments(), 0, "a finished replay deletes the journal");
    // Without the replay the rewound file would hold neither lease.
    assert_eq!(ready["state"], "ready", "{ready}");
    assert_back(&server, &ids, "after the replay").await;
    // The replayed file goes on committing.
    release(&server, &ids[1]).await;
    server.terminate();
}

/// A kill inside a close's ordered checkpoint (`sqlite/wal.rs`) loses nothing: after the WAL
/// was copied into the database but before the database was synced, and after the WAL was
/// emptied but before that was synced. Two closes die there: the graceful stop's, which syncs
/// its own files, and an idle tenant's hibernation, a background close whose syncs are shared
/// (`objects/closing.rs`). The next start serves every acknowledged write, goes on
/// committing, and leaves every object file whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_inside_an_ordered_checkpoint_loses_nothing() {
    // No hibernation, or (`idle`) hibernation a second after the last event, in the background.
    let args = journal_args("log");
    let idle = [
        &flags("log")[..],
        &["--object-idle", "1s", "--warm-objects", "0"],
    ]
    .concat();
    for failpoint in ["objects.checkpoint.copied", "objects.checkpoint.emptied"] {
        for hibernating in [false, true] {
            let what = format!("{failpoint}, hibernating: {hibernating}");
            let dir = tempfile::tempdir().expect("tempdir");
            let data = dir.path().join("data");
            let cloud = dir.path().join("berth-runners").join("cloud");
            let (hook, deliveries) = receiver().await;
            let server = Server::start(&data, &args);
            setup(&server, &hook, &cloud).await;
            settle(&server, &deliveries).await;
            assert!(server.terminate().success(), "{what}: set up");

            // Either the stop's close dies at the failpoint, or (hibernating within a second
            // of its last event, with no warm tier to park in) the tenant's background close.
            let armed = [("BERTH_FAILPOINTS", failpoint)];
            let server = if hibernating {
                Server::start_with_env(&data, &idle, &armed)
            } else {
                Server::start_with_env(&data, &args, &armed)
            };
            let ids = ready_then_release_one(&server).await;
            let status = if hibernating {
                server.wait_exit()
            } else {
                server.terminate()
            };
            assert!(
                !status.success(),
                "{what}: the close dies at the failpoint: {status}"
            );

            let server = Server::start(&data, &args);
            assert_back(&server, &ids, &what).await;
            release(&server, &ids[1]).await;
            assert!(server.terminate().success(), "{what}: a clean stop");
            assert_whole(&data, &what).await;
        }
    }
}

/// Every object file under `data` passes SQLite's `integrity_check`.
async fn assert_whole(data: &Path, what: &str) {
    for file in object_files(data) {
        let url = format!("sqlite://{}?mode=ro", file.display());
        let mut conn = SqliteConnection::connect(&url).await.expect("open");
        let (check,): (String,) = sqlx::query_as("PRAGMA integrity_check")
            .fetch_one(&mut conn)
            .await
            .expect("integrity_check");
        assert_eq!(check, "ok", "{what}: {}", file.display());
        conn.close().await.expect("close");
    }
}
