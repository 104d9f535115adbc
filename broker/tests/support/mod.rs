//! A small example object for the runtime's tests and benchmarks: a counter with a few
//! requests that exercise every part of the runtime (writes, failures, alarms, background
//! work, events).

#![allow(dead_code)]

pub mod harness;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use broker::objects::{Ctx, Error, Object, ObjectId};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("tests/support/migrations");

/// What every counter instance shares: probes the tests read.
pub struct Probes {
    /// Handlers running right now, and the most ever seen at once (per process).
    pub running: AtomicUsize,
    pub max_running: AtomicUsize,
    /// `activated()` calls per object.
    pub activations: Mutex<HashMap<ObjectId, usize>>,
    /// Alarm handlers still to fail before one succeeds.
    pub failing_alarms: AtomicUsize,
    /// (object, due, ran) of every alarm handler start, failing ones included.
    pub alarm_runs: Mutex<Vec<(ObjectId, i64, i64)>>,
    /// `Hold` requests wait for a permit here.
    pub gate: tokio::sync::Semaphore,
}

impl Default for Probes {
    fn default() -> Self {
        Probes {
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
            activations: Mutex::default(),
            failing_alarms: AtomicUsize::new(0),
            alarm_runs: Mutex::default(),
            gate: tokio::sync::Semaphore::new(0),
        }
    }
}

impl Probes {
    pub fn activations_of(&self, id: ObjectId) -> usize {
        self.activations
            .lock()
            .expect("probe lock")
            .get(&id)
            .copied()
            .unwrap_or(0)
    }

    pub fn alarm_runs_of(&self, id: ObjectId) -> Vec<(i64, i64)> {
        self.alarm_runs
            .lock()
            .expect("probe lock")
            .iter()
            .filter(|(of, _, _)| *of == id)
            .map(|(_, due, ran)| (*due, *ran))
            .collect()
    }
}

pub struct Counter {
    /// In-memory copy of the `counters` table.
    values: HashMap<String, i64>,
}

pub enum Request {
    /// Adds `by` to `key`; replies with the new value.
    Add { key: String, by: i64 },
    /// Reads `key` (read-only).
    Get { key: String },
    /// Writes two rows for `key` in one event.
    Pair { key: String },
    /// Writes a row for `key`, then fails.
    Fail { key: String },
    /// Writes a row for `key` straight through `ctx.db()` instead of queuing it (a bug the
    /// runtime must refuse).
    Stray { key: String },
    /// Holds the object for `hold`, recording overlap in the probes.
    Probe { hold: Duration },
    /// Holds the object until the test adds a permit to the gate.
    Hold,
    /// Sets the alarm.
    SetAlarm { at: i64 },
    /// Starts background work that sleeps `delay`, then records `key` as a row.
    Spawn { key: String, delay: Duration },
    /// Emits an event carrying `note`.
    Emit { note: String },
    /// Counts rows of `key`, and runs of the versioned migration.
    Inspect { key: String },
}

#[derive(Debug, PartialEq)]
pub enum Reply {
    Value(i64),
    Done,
    Rows {
        rows: i64,
        migration_runs: i64,
        alarm: Option<i64>,
    },
}

impl Object for Counter {
    const NAMESPACE: &'static str = "counter";
    type Env = Probes;
    type Request = Request;
    type Reply = Reply;
    type Completion = String;
    type Event = String;

    fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }

    async fn load(ctx: &mut Ctx<'_, Self>) -> Result<Self, Error> {
        let rows: Vec<(String, i64)> = ctx
            .db()?
            .query("SELECT key, value FROM counters")
            .fetch_all()?;
        Ok(Counter {
            values: rows.into_iter().collect(),
        })
    }

    async fn activated(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<(), Error> {
        *ctx.env()
            .activations
            .lock()
            .expect("probe lock")
            .entry(ctx.id())
            .or_default() += 1;
        Ok(())
    }

    async fn handle(&mut self, ctx: &mut Ctx<'_, Self>, request: Request) -> Result<Reply, Error> {
        match request {
            Request::Add { key, by } => {
                let value = self.values.get(&key).copied().unwrap_or(0) + by;
                ctx.write("INSERT INTO counters (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
                    .bind(key.clone())
                    .bind(value);
                self.values.insert(key, value);
                Ok(Reply::Value(value))
            }
            Request::Get { key } => Ok(Reply::Value(self.values.get(&key).copied().unwrap_or(0))),
            Request::Pair { key } => {
                for part in ["a", "b"] {
                    ctx.write("INSERT INTO rows (key, part) VALUES (?, ?)")
                        .bind(key.clone())
                        .bind(part);
                }
                Ok(Reply::Done)
            }
            Request::Fail { key } => {
                ctx.write("INSERT INTO rows (key, part) VALUES (?, 'a')")
                    .bind(key.clone());
                // Memory changed too: the runtime must reload it.
                self.values.insert(key, 999);
                Err(Error::Other(anyhow::anyhow!("this event fails on purpose")))
            }
            Request::Stray { key } => {
                ctx.db()?
                    .query("INSERT INTO rows (key, part) VALUES (?1, 'stray')")
                    .bind(key)
                    .execute()?;
                Ok(Reply::Done)
            }
            Request::Probe { hold } => {
                let probes = ctx.env();
                let now = probes.running.fetch_add(1, Ordering::SeqCst) + 1;
                probes.max_running.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(hold).await;
                probes.running.fetch_sub(1, Ordering::SeqCst);
                Ok(Reply::Done)
            }
            Request::Hold => {
                let probes = ctx.env();
                probes.running.fetch_add(1, Ordering::SeqCst);
                probes.gate.acquire().await.expect("gate open").forget();
                probes.running.fetch_sub(1, Ordering::SeqCst);
                Ok(Reply::Done)
            }
            Request::SetAlarm { at } => {
                ctx.set_alarm(at);
                Ok(Reply::Done)
            }
            Request::Spawn { key, delay } => {
                ctx.spawn(async move {
                    tokio::time::sleep(delay).await;
                    key
                });
                Ok(Reply::Done)
            }
            Request::Emit { note } => {
                ctx.emit(note);
                Ok(Reply::Done)
            }
            Request::Inspect { key } => {
                let (rows,): (i64,) = ctx
                    .db()?
                    .query("SELECT count(*) FROM rows WHERE key = ?1")
                    .bind(&key)
                    .fetch_one()?;
                let (migration_runs,): (i64,) = ctx
                    .db()?
                    .query("SELECT count(*) FROM migration_runs")
                    .fetch_one()?;
                Ok(Reply::Rows {
                    rows,
                    migration_runs,
                    alarm: ctx.alarm(),
                })
            }
        }
    }

    async fn complete(&mut self, ctx: &mut Ctx<'_, Self>, key: String) -> Result<(), Error> {
        ctx.write("INSERT INTO rows (key, part) VALUES (?, 'done')")
            .bind(key);
        Ok(())
    }

    async fn alarm(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<(), Error> {
        let now = ctx.now_ms();
        let id = ctx.id();
        let probes = ctx.env();
        let due = ctx.firing_alarm().expect("alarm() knows its due time");
        probes
            .alarm_runs
            .lock()
            .expect("probe lock")
            .push((id, due, now));
        let failing = probes.failing_alarms.load(Ordering::SeqCst);
        if failing > 0 {
            probes.failing_alarms.store(failing - 1, Ordering::SeqCst);
            return Err(Error::Other(anyhow::anyhow!("alarm fails on purpose")));
        }
        ctx.write("INSERT INTO alarms_fired (due_at, ran_at) VALUES (?, ?)")
            .bind(due)
            .bind(now);
        Ok(())
    }
}

// Helpers the runtime's suites share.

/// Polls `done` until it holds; panics after ten seconds (a bound, not a timing claim).
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Adds `by` to counter `k` of object `name`; returns the new value.
pub async fn add(ns: &broker::objects::Namespace<Counter>, name: &str, by: i64) -> i64 {
    match ns
        .get_by_name(name)
        .call(Request::Add {
            key: "k".into(),
            by,
        })
        .await
        .expect("add")
    {
        Reply::Value(value) => value,
        other => panic!("unexpected reply {other:?}"),
    }
}

/// Files under `dir` (recursively) whose names end with `suffix`.
pub fn files_with_suffix(dir: &std::path::Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found
}
