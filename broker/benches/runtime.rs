//! Runtime microbenchmark: `cargo bench -p berth-broker --bench runtime`.
//!
//! Measures, in one run and on one disk (a temporary directory under `target/`):
//!
//! 1. the baseline: raw `write + fdatasync` per second on a plain file, and single-row SQLite
//!    commits per second on one connection (WAL, `synchronous=FULL`) with no runtime at all;
//! 2. events per second and p50/p99 latency for one object with 1, 16 and 64 concurrent
//!    callers, group commit on and off, with commits (fsyncs) per acknowledged write;
//! 3. the cost of the first request to a hibernated object, next to a request to a live one;
//! 4. the alarm scheduler with 1,000,000 pending alarms.
//!
//! Knobs: `BENCH_SECONDS` (per measurement, default 3), `BENCH_ACTIVATIONS` (default 500).
//! Every loop is bounded by time and count.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use broker::objects::scheduler::{Scheduler, Target};
use broker::objects::{ManualClock, Namespace, ObjectId, Options, Runtime};
use support::{Counter, Probes, Request};

fn seconds() -> Duration {
    let s: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(s)
}

fn bench_dir() -> tempfile::TempDir {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp");
    std::fs::create_dir_all(&root).expect("bench dir");
    tempfile::tempdir_in(root).expect("tempdir")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    runtime.block_on(run());
}

async fn run() {
    let duration = seconds();
    println!("# berth runtime benchmark");
    println!();
    println!(
        "{} s per measurement; {} cores",
        duration.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();

    println!("## Baseline: the disk and SQLite alone");
    println!();
    let fsyncs = fsync_rate(duration);
    let sqlite = sqlite_commit_rate(duration).await;
    println!("| what | per second |");
    println!("|---|---:|");
    println!("| `write(4 KiB) + fdatasync` on a plain file | {fsyncs:.0} |");
    println!("| SQLite single-row commits, one connection, WAL, synchronous=FULL | {sqlite:.0} |");
    println!();

    println!("## One object: events/s and latency");
    println!();
    println!("Each caller loops `Add` (one UPSERT per event) on the same object.");
    println!();
    println!(
        "| callers | group commit | events/s | p50 ms | p99 ms | commits per event | vs SQLite commits/s |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for callers in [1, 16, 64] {
        for group in [true, false] {
            let r = one_object(callers, group, duration).await;
            println!(
                "| {callers} | {} | {:.0} | {} | {} | {:.3} | {:.1}× |",
                if group { "on" } else { "off" },
                r.events_per_s,
                ms(r.p50),
                ms(r.p99),
                r.commits_per_event,
                r.events_per_s / sqlite
            );
        }
    }
    println!();

    println!("## Activation of a hibernated object");
    println!();
    let n: usize = std::env::var("BENCH_ACTIVATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let (cold, warm) = activation(n).await;
    println!("| request | n | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| first request to a hibernated object (open file, check migrations, load) | {n} | {} | {} | {} |",
        ms(percentile(&cold, 0.5)),
        ms(percentile(&cold, 0.99)),
        ms(*cold.last().unwrap_or(&Duration::ZERO))
    );
    println!(
        "| read on a live object | {n} | {} | {} | {} |",
        ms(percentile(&warm, 0.5)),
        ms(percentile(&warm, 0.99)),
        ms(*warm.last().unwrap_or(&Duration::ZERO))
    );
    println!();

    println!("## Alarm scheduler with 1,000,000 pending alarms");
    println!();
    scheduler_bench();
    let _ = std::io::stdout().flush();
}

fn fsync_rate(duration: Duration) -> f64 {
    let dir = bench_dir();
    let mut file = std::fs::File::create(dir.path().join("fsync")).expect("file");
    let block = [7u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration && n < 10_000_000 {
        file.write_all(&block).expect("write");
        file.sync_data().expect("fdatasync");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn sqlite_commit_rate(duration: Duration) -> f64 {
    use sqlx::{ConnectOptions, Connection};
    let dir = bench_dir();
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("baseline.sqlite"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
        .connect()
        .await
        .expect("sqlite");
    sqlx::query("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
        .execute(&mut conn)
        .await
        .expect("create");
    let start = Instant::now();
    let mut n = 0i64;
    while start.elapsed() < duration && n < 10_000_000 {
        let mut tx = conn.begin().await.expect("begin");
        sqlx::query(
            "INSERT INTO t (k, v) VALUES ('n', ?1) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
        )
        .bind(n)
        .execute(&mut *tx)
        .await
        .expect("upsert");
        tx.commit().await.expect("commit");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

struct Throughput {
    events_per_s: f64,
    p50: Duration,
    p99: Duration,
    commits_per_event: f64,
}

async fn open(
    dir: &std::path::Path,
    tune: impl FnOnce(&mut Options),
) -> (Runtime, Namespace<Counter>) {
    let mut options = Options::new(dir);
    tune(&mut options);
    let runtime = Runtime::open(options).await.expect("runtime");
    let ns = runtime.namespace::<Counter>(Arc::new(Probes::default()));
    (runtime, ns)
}

async fn one_object(callers: usize, group_commit: bool, duration: Duration) -> Throughput {
    let dir = bench_dir();
    let (runtime, ns) = open(dir.path(), |o| {
        if !group_commit {
            o.max_batch = 1;
        }
    })
    .await;
    let stub = ns.get_by_name("bench");
    stub.call(Request::Add {
        key: "n".into(),
        by: 0,
    })
    .await
    .expect("warm up");
    let events_before = runtime.metrics().events.load(Ordering::Relaxed);
    let commits_before = runtime.metrics().commits.load(Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let stub = stub.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            while !stop.load(Ordering::Relaxed) && latencies.len() < 5_000_000 {
                let t = Instant::now();
                stub.call(Request::Add {
                    key: "n".into(),
                    by: 1,
                })
                .await
                .expect("add");
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("caller"));
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let events = runtime.metrics().events.load(Ordering::Relaxed) - events_before;
    let commits = runtime.metrics().commits.load(Ordering::Relaxed) - commits_before;
    runtime.shutdown(Duration::from_secs(10)).await;
    Throughput {
        events_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        commits_per_event: commits as f64 / events.max(1) as f64,
    }
}

async fn activation(n: usize) -> (Vec<Duration>, Vec<Duration>) {
    let dir = bench_dir();
    let (runtime, ns) = open(dir.path(), |o| o.object_idle = Duration::from_millis(50)).await;
    for i in 0..n {
        ns.get_by_name(&format!("cold-{i}"))
            .call(Request::Add {
                key: "k".into(),
                by: 1,
            })
            .await
            .expect("create");
    }
    // Bounded wait for every object to hibernate.
    for _ in 0..2_000 {
        if ns.live_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ns.live_count(), 0, "objects did not hibernate");
    let mut cold = Vec::with_capacity(n);
    let mut warm = Vec::with_capacity(n);
    for i in 0..n {
        let stub = ns.get_by_name(&format!("cold-{i}"));
        let t = Instant::now();
        stub.call(Request::Get { key: "k".into() })
            .await
            .expect("cold get");
        cold.push(t.elapsed());
        let t = Instant::now();
        stub.call(Request::Get { key: "k".into() })
            .await
            .expect("warm get");
        warm.push(t.elapsed());
    }
    runtime.shutdown(Duration::from_secs(10)).await;
    cold.sort_unstable();
    warm.sort_unstable();
    (cold, warm)
}

struct Sink(std::sync::atomic::AtomicUsize);
impl Target for Sink {
    fn wake(self: Arc<Self>, _: ObjectId) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn scheduler_bench() {
    const N: usize = 1_000_000;
    let clock = ManualClock::new(0);
    let scheduler = Scheduler::new(Arc::new(clock));
    let sink = Arc::new(Sink(std::sync::atomic::AtomicUsize::new(0)));
    scheduler.register("bench", sink.clone());
    let ids: Vec<ObjectId> = (0..N).map(|_| ObjectId::new_unique()).collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let start = Instant::now();
    for id in &ids {
        scheduler.schedule("bench", *id, Some(1 + (next() % 3_600_000) as i64));
    }
    let insert = start.elapsed();
    // Move 100,000 existing alarms (the common case: a lease ends, the next deadline moves).
    let start = Instant::now();
    for id in ids.iter().take(100_000) {
        scheduler.schedule("bench", *id, Some(1 + (next() % 3_600_000) as i64));
    }
    let moves = start.elapsed();
    // Fire the first 1% (36 s of a one-hour spread).
    let start = Instant::now();
    let (fired, _) = scheduler.fire_due(36_000);
    let fire = start.elapsed();
    let pending = scheduler.pending();
    let rss = resident_mib();
    println!("| operation | count | total ms | per op µs |");
    println!("|---|---:|---:|---:|");
    println!(
        "| schedule (empty → 1,000,000 pending) | {N} | {} | {:.3} |",
        ms(insert),
        insert.as_secs_f64() * 1e6 / N as f64
    );
    println!(
        "| move an alarm, 1,000,000 pending | 100000 | {} | {:.3} |",
        ms(moves),
        moves.as_secs_f64() * 1e6 / 100_000.0
    );
    println!(
        "| fire due alarms, 1,000,000 pending | {fired} | {} | {:.3} |",
        ms(fire),
        fire.as_secs_f64() * 1e6 / fired.max(1) as f64
    );
    println!();
    println!("{pending} alarms still pending; process resident memory {rss:.0} MiB.");
}

fn resident_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
