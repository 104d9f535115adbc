//! The runtime suites' harness: a runtime on a temporary directory with a manual clock and
//! the counter namespace, restartable on the same directory.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use broker::objects::{ManualClock, Namespace, Options, Runtime};

use super::{Counter, Probes, Reply, Request};

/// Where the manual clock starts.
pub const T0: i64 = 1_800_000_000_000;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub clock: ManualClock,
    pub runtime: Runtime,
    pub ns: Namespace<Counter>,
    pub probes: Arc<Probes>,
}

pub fn options(dir: &Path, clock: &ManualClock) -> Options {
    let mut options = Options::new(dir);
    options.clock = Arc::new(clock.clone());
    options
}

pub async fn harness(tune: impl FnOnce(&mut Options)) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    Harness::open(dir, clock, Arc::new(Probes::default()), tune).await
}

impl Harness {
    /// A runtime on `dir` and `clock`, `tune`d, with the counter namespace.
    async fn open(
        dir: tempfile::TempDir,
        clock: ManualClock,
        probes: Arc<Probes>,
        tune: impl FnOnce(&mut Options),
    ) -> Harness {
        let mut options = options(dir.path(), &clock);
        tune(&mut options);
        let runtime = Runtime::open(options).await.expect("runtime opens");
        let ns = runtime.namespace::<Counter>(probes.clone());
        Harness {
            dir,
            clock,
            runtime,
            ns,
            probes,
        }
    }

    /// Shuts the runtime down and opens a new one on the same directory and clock.
    pub async fn restart(self, tune: impl FnOnce(&mut Options)) -> Harness {
        self.runtime.shutdown(Duration::from_secs(10)).await;
        let Harness {
            dir,
            clock,
            runtime,
            probes,
            ..
        } = self;
        drop(runtime);
        Harness::open(dir, clock, probes, tune).await
    }
}

pub async fn inspect(ns: &Namespace<Counter>, name: &str, key: &str) -> (i64, i64, Option<i64>) {
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
