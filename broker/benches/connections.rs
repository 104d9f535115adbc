//! What a cold wake's SQLite work costs under two connection models, side by side:
//! `cargo bench -p berth-broker --bench connections`.
//!
//! Both models do the same work per wake, on files with the tenant schema (`TenantBroker`'s
//! migrations): open the file with berth's settings, read the version and the key-value
//! table (one list), read every table once (one list, as a load touches each table's root
//! page), commit four small batches (`BEGIN; upsert; COMMIT`, each fsynced), close (a
//! checkpoint). Wakes run 64 at a time over `BENCH_FILES` files in turn.
//!
//! - **sqlx**: as the runtime ran object files until issue 19's sixth session: a
//!   `SqliteConnection` (a thread per connection; every statement list a round trip to it).
//! - **own**: [`broker::objects::sqlite::Db`] on the wake's own task for reads and the
//!   statements before each `COMMIT`; opening, each `COMMIT` and the close on tokio's
//!   blocking pool (the parts that wait on the disk).
//! - **in place**: as the runtime runs object files now: as **own**, but each `COMMIT` in
//!   `block_in_place` on the wake's own task (the worker's other tasks move to another
//!   thread meanwhile) instead of a round trip to the blocking pool.
//!
//! Rounds alternate (sqlx, own, sqlx, own, …) so drift in the machine lands on both. Printed
//! per round: wakes per second and process CPU per wake. Knobs: `BENCH_SECONDS` (per round,
//! default 5), `BENCH_ROUNDS` (default 3), `BENCH_FILES` (default 2,000). Every loop is
//! bounded by time and count.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use broker::objects::schema;
use broker::objects::storage::{self, Access, Durability};
use broker::objects::{Error, Object as _};
use broker::tenant::TenantBroker;
use sqlx::Connection as _;

const CONCURRENCY: usize = 64;
const COMMITS: usize = 4;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User and system CPU of this process so far, in seconds (`/proc/self/stat`, 100 Hz ticks).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    broker::objects::storage::configure_sqlite();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let seconds = knob("BENCH_SECONDS", 5);
    let rounds = knob("BENCH_ROUNDS", 3);
    let files = knob("BENCH_FILES", 2_000);
    std::fs::create_dir_all("target").expect("target dir");
    let dir = tempfile::tempdir_in("target").expect("bench dir");
    let paths = setup(dir.path(), files).await;
    let tables = tables(&paths[0]).await;
    let reads = tables
        .iter()
        .map(|t| format!("SELECT COUNT(*) FROM \"{t}\""))
        .collect::<Vec<_>>()
        .join(";\n");
    println!(
        "connection models: {files} files with the tenant schema ({} tables), {CONCURRENCY} wakes at a time, {seconds} s per round",
        tables.len()
    );
    println!("| round | model | wakes/s | CPU ms per wake |");
    println!("|---:|---|---:|---:|");
    let reads = Arc::new(reads);
    let paths = Arc::new(paths);
    for round in 1..=rounds {
        for model in [Model::Sqlx, Model::Own, Model::InPlace, Model::Inline] {
            let (wakes, cpu) =
                measure(model, &paths, &reads, Duration::from_secs(seconds as u64)).await;
            println!(
                "| {round} | {} | {:.0} | {:.2} |",
                model.name(),
                wakes,
                cpu * 1000.0
            );
        }
    }
}

#[derive(Clone, Copy)]
enum Model {
    Sqlx,
    Own,
    InPlace,
    Inline,
}

impl Model {
    fn name(self) -> &'static str {
        match self {
            Model::Sqlx => "sqlx (thread per connection)",
            Model::Own => "own (caller's thread, blocking pool for disk waits)",
            Model::InPlace => "own, each COMMIT in block_in_place (the runtime's)",
            Model::Inline => "own, everything on the caller's thread",
        }
    }
}

/// Creates `n` object files with the tenant schema.
async fn setup(dir: &Path, n: usize) -> Vec<PathBuf> {
    let mut paths = Vec::with_capacity(n);
    for i in 0..n {
        let path = dir.join(format!("t{i}.sqlite"));
        let mut db = storage::open_db(&path, Durability::Full, Access::Sole, true).expect("create");
        schema::prepare_object(&mut db, TenantBroker::migrator()).expect("schema");
        db.close().expect("close");
        paths.push(path);
    }
    paths
}

/// The tables of the schema, to read each once per wake.
async fn tables(path: &Path) -> Vec<String> {
    let mut db = storage::open_db(path, Durability::Full, Access::Sole, false).expect("open");
    let rows: Vec<(String,)> = db
        .query("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .fetch_all()
        .expect("tables");
    db.close().expect("close");
    rows.into_iter().map(|(name,)| name).collect()
}

/// Wakes per second and CPU seconds per wake of `model` over `duration`.
async fn measure(
    model: Model,
    paths: &Arc<Vec<PathBuf>>,
    reads: &Arc<String>,
    duration: Duration,
) -> (f64, f64) {
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let cpu = cpu_seconds();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (paths, reads, next, stop) = (
            Arc::clone(paths),
            Arc::clone(reads),
            Arc::clone(&next),
            Arc::clone(&stop),
        );
        tasks.push(tokio::spawn(async move {
            let mut wakes = 0usize;
            // Bounded by time and by count.
            while !stop.load(Ordering::Relaxed) && wakes < 100_000 {
                // Each file is woken by one task at a time: files outnumber tasks, and the
                // counter hands them out in turn.
                let path = &paths[next.fetch_add(1, Ordering::Relaxed) % paths.len()];
                let woke = match model {
                    Model::Sqlx => wake_sqlx(path, &reads).await,
                    Model::Own => wake_own(path, &reads, false).await,
                    Model::InPlace => wake_own(path, &reads, true).await,
                    Model::Inline => wake_inline(path, &reads),
                };
                woke.expect("wake");
                wakes += 1;
                // The inline model never awaits: yield, or the timer ending the round would
                // never run.
                tokio::task::yield_now().await;
            }
            wakes
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut wakes = 0;
    for task in tasks {
        wakes += task.await.expect("task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    (wakes as f64 / elapsed, cpu / wakes.max(1) as f64)
}

const UPSERT: &str = "INSERT INTO _berth_kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value";
const OPEN_READ: &str = "PRAGMA user_version;\nSELECT key, value FROM _berth_kv";

async fn wake_sqlx(path: &Path, reads: &str) -> Result<(), Error> {
    let mut conn = storage::open(path, Durability::Full, Access::Sole).await?;
    // Every statement's rows in one round trip, as the runtime read them.
    sqlx::query(OPEN_READ).fetch_all(&mut conn).await?;
    sqlx::query(reads).fetch_all(&mut conn).await?;
    for i in 0..COMMITS {
        sqlx::query(&format!("BEGIN;\n{UPSERT};\nCOMMIT;"))
            .bind("bench")
            .bind(i.to_string())
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    Ok(())
}

/// A wake on the own connection; each `COMMIT` in `block_in_place` (`in_place`) or as a
/// round trip to the blocking pool.
async fn wake_own(path: &Path, reads: &str, in_place: bool) -> Result<(), Error> {
    let path = path.to_owned();
    let mut db =
        blocking(move || storage::open_db(&path, Durability::Full, Access::Sole, false)).await?;
    let mut sets = db.query(OPEN_READ).fetch_sets()?;
    let _: (i64,) = sets.one()?;
    let _: Vec<(String, String)> = sets.rows()?;
    db.query(reads).fetch_sets()?;
    for i in 0..COMMITS {
        db.query(&format!("BEGIN;\n{UPSERT}"))
            .bind("bench")
            .bind(i.to_string())
            .execute()?;
        if in_place {
            tokio::task::block_in_place(|| db.execute_batch("COMMIT"))?;
        } else {
            db = blocking(move || {
                db.execute_batch("COMMIT")?;
                Ok(db)
            })
            .await?;
        }
    }
    blocking(move || Ok(db.close()?)).await
}

fn wake_inline(path: &Path, reads: &str) -> Result<(), Error> {
    let mut db = storage::open_db(path, Durability::Full, Access::Sole, false)?;
    let mut sets = db.query(OPEN_READ).fetch_sets()?;
    let _: (i64,) = sets.one()?;
    let _: Vec<(String, String)> = sets.rows()?;
    db.query(reads).fetch_sets()?;
    for i in 0..COMMITS {
        db.query(&format!("BEGIN;\n{UPSERT};\nCOMMIT"))
            .bind("bench")
            .bind(i.to_string())
            .execute()?;
    }
    Ok(db.close()?)
}

/// Runs `work` on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| Error::Other(anyhow::anyhow!("blocking task: {err}")))?
}
