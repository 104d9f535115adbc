//! Stopping a runner: every process of its group and every process the environment scan finds
//! gets SIGTERM, then `grace_ms` to exit, then SIGKILL (see "Destroy" in the module docs of
//! `process`). Zombies count as exited.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::ownership::Record;
use super::procfs::{alive, is_foreign_group, proc_stat, scan, signal_all};
use super::{KILL_WAIT, POLL, Process, blocking};
use crate::Error;

impl Process {
    /// Signals, waits and kills until no process of the runner is left.
    pub(super) async fn terminate(
        &self,
        dir: &Path,
        lease_id: &str,
        record: Option<&Record>,
    ) -> Result<(), Error> {
        let mut groups = BTreeSet::new();
        // A record of another boot (or of a build that did not write the boot) names pids of
        // a machine that no longer runs: its group, if one exists, is someone else's. Only
        // the environment scan below finds what is left of such a runner.
        if let Some(record) = record.filter(|record| record.this_boot()) {
            match proc_stat(record.pid) {
                // Our leader, alive or a zombie: its group is ours.
                Some(stat) if stat.start_time == record.start_time => {
                    groups.insert(record.pid);
                }
                // The pid was reused. Linux does not reuse a pid while a process group of that
                // id exists, so our group is gone.
                Some(_) => {}
                // The leader is gone; members of its group may remain, and any process whose
                // group id is that pid is one of ours (same reason, within one boot).
                None => {
                    groups.insert(record.pid);
                }
            }
        }
        let found = scan(dir, lease_id).await;
        let mut pids: BTreeSet<i32> = BTreeSet::new();
        for pid in found {
            pids.insert(pid);
            if let Some(stat) = proc_stat(pid)
                && is_foreign_group(stat.pgrp)
            {
                groups.insert(stat.pgrp);
            }
        }
        if groups.is_empty() && pids.is_empty() {
            return Ok(());
        }

        signal_all(&groups, &pids, Signal::SIGTERM);
        if self.wait_gone(&groups, &pids, self.grace).await.is_empty() {
            return Ok(());
        }
        // Anything that got the lease's environment since the first scan goes too.
        let late = scan(dir, lease_id).await;
        pids.extend(late);
        signal_all(&groups, &pids, Signal::SIGKILL);
        let left = self.wait_gone(&groups, &pids, KILL_WAIT).await;
        if left.is_empty() {
            Ok(())
        } else {
            Err(Error::transient(format!(
                "runner processes {left:?} survived SIGKILL"
            )))
        }
    }

    /// Polls until no live (non-zombie) process is in `groups` or `pids`, or `limit` passed.
    /// Returns what is still alive.
    async fn wait_gone(
        &self,
        groups: &BTreeSet<i32>,
        pids: &BTreeSet<i32>,
        limit: Duration,
    ) -> Vec<i32> {
        let deadline = Instant::now() + limit;
        loop {
            let (groups_now, pids_now) = (groups.clone(), pids.clone());
            let alive = blocking(move || Ok(alive(&groups_now, &pids_now)))
                .await
                .unwrap_or_default();
            let now = Instant::now();
            if alive.is_empty() || now >= deadline {
                return alive;
            }
            tokio::time::sleep(POLL.min(deadline - now)).await;
        }
    }
}
