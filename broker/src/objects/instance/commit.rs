//! One batch of events: run each in turn against the object's memory, send their writes
//! to SQLite together, commit once (through the cluster's log in cluster mode), and only
//! then release replies, spawned work and events (the output gate).

use std::sync::Arc;

use tracing::Instrument;

use super::super::cluster::log::Append;
use super::super::cluster::{guard, snapshot};
use super::super::journal::{self, Journal};
use super::super::metrics::Metrics;
use super::super::object::Effects;
use super::super::record::{Record, SEQ_KEY};
use super::super::session::Session;
use super::super::sqlite::{self, Db};
use super::super::storage::{self, Durability};
use super::super::{CallError, Error, Object};
use super::{
    ALARM_KEY, Envelope, Instance, Job, Live, MIN_SNAPSHOT_LOG, Outcome, Owned, Payload, Reply,
    SLOW_BATCH, fail_jobs,
};

impl<O: Object> Instance<O> {
    /// Runs `jobs` as one batch: their writes go to SQLite together and commit once, and only
    /// then are replies, spawned work and events released. A batch that wrote nothing commits
    /// nothing.
    pub(super) async fn run_batch(&self, live: &mut Live<O>, jobs: Vec<Job<O>>) -> Outcome {
        let shared = &self.ns.shared;
        let started = std::time::Instant::now();
        let now = shared.clock().now_ms();
        let n_jobs = jobs.len();
        Metrics::add(&shared.metrics.events, n_jobs as u64);
        let mut outcome = Outcome::default();

        if live.dropped
            || live
                .owned
                .as_ref()
                .is_some_and(|owned| !owned.claim.membership.is_valid())
        {
            // Cluster mode: past its membership's validity this node may have been replaced
            // as the owner, so even a read could answer from a state someone moved past.
            live.dropped = true;
            fail_jobs(jobs, &CallError::Moved(None));
            return outcome;
        }

        if live.object.is_none() {
            match self.reload(live).await {
                Ok(object) => live.object = Some(object),
                Err(err) => {
                    tracing::error!(error = %err, "object state could not be loaded");
                    fail_jobs(jobs, &CallError::from_error(&err));
                    return outcome;
                }
            }
        }

        let mut replies = Vec::with_capacity(n_jobs);
        let mut batch = Effects::new(live.stored_alarm);
        let committed = self
            .transact(live, jobs, now, &mut replies, &mut batch, &mut outcome)
            .await;
        match committed {
            Ok(wrote) => {
                if wrote {
                    Metrics::add(&shared.metrics.commits, 1);
                    live.unsynced = true;
                }
                // The output gate under `Durability::Group`: nothing leaves the object before
                // the state behind it is durable. Writes without effects wait for no sync;
                // the next effects (of this object) cover them.
                // Under `Durability::Log` they wait for the journal to be durable up to the
                // object's last append, which covers its earlier ones too.
                let effects = !replies.is_empty()
                    || !batch.spawned.is_empty()
                    || (!batch.events.is_empty() && self.events.get().is_some());
                if let Some(barrier) = &shared.barrier
                    && live.unsynced
                    && effects
                {
                    barrier.sync().await;
                    live.unsynced = false;
                }
                if let Some(journal) = &shared.journal
                    && effects
                    && journal.synced() < live.journal_at
                {
                    journal.wait(live.journal_at).await;
                }
                let changed = live.stored_alarm != batch.alarm || outcome.alarm_ok == Some(true);
                live.stored_alarm = batch.alarm;
                if changed && live.alarm_retry_at.is_none() {
                    shared
                        .scheduler
                        .schedule(O::NAMESPACE, self.id, batch.alarm);
                }
                for (reply, result) in replies {
                    let _ = reply.send(result);
                }
                let membership = live
                    .owned
                    .as_ref()
                    .map(|owned| Arc::clone(&owned.claim.membership));
                for work in batch.spawned {
                    live.in_flight += 1;
                    let inbox = self.tx.clone();
                    let cancel = shared.cancel.clone();
                    // Cluster mode: work stops at its next step once this node may have been
                    // replaced as the object's owner.
                    let work = guard::guarded(work, membership.clone());
                    shared.tracker.spawn(async move {
                        // Cancelled work is redone from the object's stored intent when it
                        // next opens.
                        tokio::select! {
                            completion = work => {
                                if let Some(completion) = completion {
                                    let _ = inbox.send(Envelope::Completion(completion)).await;
                                }
                            }
                            () = cancel.cancelled() => {}
                        }
                    });
                }
                if let Some(tx) = self.events.get() {
                    for event in batch.events {
                        let _ = tx.send(event);
                    }
                }
            }
            Err(error) => {
                if outcome.alarm_ok == Some(true) {
                    outcome.alarm_ok = Some(false);
                }
                for (reply, result) in replies {
                    let _ = reply.send(result.and(Err(error.clone())));
                }
                // Memory may hold changes that never committed: rebuild it from storage.
                live.object = None;
                match self.reload(live).await {
                    Ok(object) => live.object = Some(object),
                    Err(err) => tracing::error!(error = %err, "reload after a failed batch failed"),
                }
            }
        }
        self.maybe_snapshot(live).await;
        let elapsed = started.elapsed();
        if elapsed > SLOW_BATCH {
            tracing::warn!(?elapsed, events = n_jobs, "slow batch");
        }
        outcome
    }

    /// The storage part of a batch: runs every job, queues the alarm, and commits. Replies
    /// are collected in `replies`, effects in `batch`; the caller releases them only if this
    /// returns `Ok` (`true` when something was committed).
    pub(super) async fn transact(
        &self,
        live: &mut Live<O>,
        jobs: Vec<Job<O>>,
        now: i64,
        replies: &mut Vec<Reply<O>>,
        batch: &mut Effects<O>,
        outcome: &mut Outcome,
    ) -> Result<bool, CallError> {
        let shared = &self.ns.shared;
        let Live {
            conn,
            gate,
            object,
            stored_alarm,
            dir_alarm,
            owned,
            dropped,
            seq,
            journal_at,
            ..
        } = live;
        let object = object
            .as_mut()
            .expect("BUG: run_batch loads the object first");
        let fail = |err: Error| {
            tracing::error!(error = %err, "commit failed; the batch is rolled back");
            Metrics::add(&shared.metrics.failed_commits, 1);
            CallError::from_error(&err)
        };
        let mut session = if owned.is_some() || shared.journal.is_some() {
            Session::recording(Arc::clone(gate))
        } else {
            Session::new(Arc::clone(gate))
        };
        for Job {
            payload,
            reply,
            span,
        } in jobs
        {
            let is_alarm = matches!(payload, Payload::Alarm { .. });
            let mut effects = Effects::new(batch.alarm);
            session.begin_event();
            let result = self
                .dispatch(object, conn, &mut session, payload, &mut effects, now)
                .instrument(span.clone())
                .await;
            if is_alarm {
                outcome.alarm_ok = Some(result.is_ok());
            }
            match result {
                Ok(value) => {
                    batch.absorb(effects);
                    if let (Some(reply), Some(value)) = (reply, value) {
                        replies.push((reply, Ok(value)));
                    }
                }
                Err(err) => {
                    span.in_scope(
                        || tracing::warn!(error = %err, "event failed; its writes are dropped"),
                    );
                    Metrics::add(&shared.metrics.failed_events, 1);
                    if let Some(reply) = reply {
                        replies.push((reply, Err(CallError::from_error(&err))));
                    }
                    session.abort_event();
                    // Later events must see memory that matches storage, including what the
                    // earlier events of this batch queued.
                    match self.load(conn, &mut session, batch.alarm, None).await {
                        Ok(fresh) => *object = fresh,
                        Err(err) => {
                            session.rollback(conn);
                            return Err(fail(err));
                        }
                    }
                }
            }
        }
        session.begin_event();
        if batch.alarm != *stored_alarm {
            let value = batch.alarm.map(|at| at.to_string());
            session.pending.kv(ALARM_KEY.to_owned(), value);
        }
        if let Some(owned) = owned {
            return self
                .commit_logged(conn, &mut session, owned, batch.alarm, dropped)
                .await;
        }
        if let Some(at) = batch.alarm
            && dir_alarm.is_none_or(|dir| at < dir)
        {
            // The directory first: its alarm must never be later than ours, even if we crash
            // right after our own commit.
            if let Err(err) = shared
                .directory
                .set_alarm(O::NAMESPACE, self.id, Some(at), now)
                .await
            {
                session.rollback(conn);
                return Err(fail(err));
            }
            *dir_alarm = Some(at);
        }
        if let Some(journal) = &shared.journal {
            return self.commit_journaled(journal, conn, &mut session, seq, journal_at);
        }
        self.durable(conn, |conn| session.commit(conn, O::writers()))
            .map_err(fail)
    }

    /// `Durability::Log`'s commit: the batch commits in SQLite (no fsync) with the object's
    /// next position, and its record is appended to the shared journal; `journal_at` is where
    /// the batch's effects wait for the journal to be durable. The record is encoded before
    /// the commit, so a commit is never without its record.
    fn commit_journaled(
        &self,
        journal: &Journal,
        conn: &mut Db,
        session: &mut Session,
        seq: &mut i64,
        journal_at: &mut u64,
    ) -> Result<bool, CallError> {
        let chunks = match session.prepare(conn, O::writers()) {
            Ok(Some(chunks)) => chunks,
            Ok(None) => return Ok(false),
            Err(err) => return Err(self.commit_failed(&err)),
        };
        let fingerprint = &self.ns.writers_fingerprint;
        let record = Record {
            writers: fingerprint.clone(),
            chunks,
        };
        let encoded = record.encode().and_then(|encoded| match encoded.len() {
            len if len <= journal::MAX_RECORD => Ok(encoded),
            len => Err(Error::Other(anyhow::anyhow!(
                "a batch of {len} bytes is too large for the commit journal"
            ))),
        });
        let encoded = match encoded {
            Ok(encoded) => encoded,
            Err(err) => {
                session.rollback(conn);
                return Err(self.commit_failed(&err));
            }
        };
        let next = *seq + 1;
        let position = vec![(SEQ_KEY.to_owned(), Some(next.to_string()))];
        if let Err(err) = self.durable(conn, |conn| session.finish(conn, O::writers(), position)) {
            return Err(self.commit_failed(&err));
        }
        *seq = next;
        match journal.append(
            O::NAMESPACE,
            self.id,
            next,
            fingerprint,
            &self.ns.writer_statements,
            &encoded,
        ) {
            Ok(at) => *journal_at = at,
            Err(err) => {
                // Committed in the file but not in the journal: a later record of this object
                // would follow a hole. Nothing of it has been acknowledged; stop here.
                tracing::error!(error = %err, "a committed batch could not be journaled; aborting");
                eprintln!("a committed batch could not be journaled: {err}; aborting");
                std::process::abort();
            }
        }
        Ok(true)
    }

    /// Cluster mode's commit: the batch goes to SQLite inside its transaction, then to the
    /// object's log in PostgreSQL (fenced by the claim's epoch, with the alarm), and only
    /// then is the SQLite transaction committed. A batch the log refused, or whose append
    /// failed, is rolled back and the object dropped: it never reports success, and the next
    /// activation rebuilds it from the log.
    pub(super) async fn commit_logged(
        &self,
        conn: &mut Db,
        session: &mut Session,
        owned: &mut Owned,
        alarm: Option<i64>,
        dropped: &mut bool,
    ) -> Result<bool, CallError> {
        let shared = &self.ns.shared;
        let cluster = shared
            .cluster()
            .expect("BUG: an owned object runs in cluster mode");
        let chunks = match session.prepare(conn, O::writers()) {
            Ok(Some(chunks)) => chunks,
            Ok(None) => return Ok(false),
            Err(err) => return Err(self.commit_failed(&err)),
        };
        let record = Record {
            writers: owned.writers.clone(),
            chunks,
        };
        let appended = match record.encode() {
            Ok(record) => {
                owned.log_bytes += record.len() as u64;
                cluster
                    .append(Append {
                        namespace: O::NAMESPACE,
                        id: self.id,
                        owner: owned.claim.membership.incarnation.clone(),
                        epoch: owned.claim.epoch,
                        alarm_at: alarm,
                        record,
                    })
                    .await
            }
            Err(err) => Err(err),
        };
        let seq = match appended {
            Ok(seq) => seq,
            Err(err) => {
                session.rollback(conn);
                *dropped = true;
                if matches!(err, Error::Moved(_)) {
                    tracing::warn!("commit refused: another node claimed this object");
                    Metrics::add(&shared.metrics.failed_commits, 1);
                    return Err(CallError::Moved(None));
                }
                return Err(self.commit_failed(&err));
            }
        };
        owned.seq = seq;
        let position = vec![(SEQ_KEY.to_owned(), Some(seq.to_string()))];
        if let Err(err) = self.durable(conn, |conn| session.finish(conn, O::writers(), position)) {
            // PostgreSQL holds the batch, so it is committed and its replies are true; this
            // file fell behind, so the object reloads from the log.
            tracing::warn!(error = %err, "local commit after the log append failed; the object reloads from the log");
            *dropped = true;
        }
        Ok(true)
    }

    /// Runs `commit`, a `COMMIT` of the object's connection `conn`: off tokio's workers
    /// whenever it may wait for the disk, right here when it cannot; then the checkpoint
    /// SQLite would have run after it, if due (`sqlite/wal.rs`: object connections checkpoint
    /// through their owner).
    ///
    /// Under `full` every commit syncs. Under `normal`, `group` and `log` no commit does
    /// (`synchronous=OFF` with ordered checkpoints, `sqlite/wal.rs`) but one that finds the WAL
    /// due for a checkpoint (the WAL hook's own may run), and a checkpoint syncs. Run on a
    /// worker, a sync stalled that worker's other tasks (W2 on `log` made 16–36 % more pairs
    /// per second once every syncing commit ran off it); moving the others off too cost a
    /// thread hand-off each (BENCHMARKS).
    fn durable<R>(&self, conn: &mut Db, commit: impl FnOnce(&mut Db) -> R) -> R {
        let durability = self.ns.shared.object_durability();
        let out = match durability {
            Durability::Off => commit(conn),
            Durability::Full => sqlite::blocking(|| commit(conn)),
            Durability::Normal | Durability::Group | Durability::Log => {
                if conn.commit_may_sync() {
                    sqlite::blocking(|| commit(conn))
                } else {
                    commit(conn)
                }
            }
        };
        if conn.checkpoint_due() {
            let checkpoint = match durability {
                Durability::Off => conn.checkpoint(),
                _ => sqlite::blocking(|| conn.checkpoint()),
            };
            if let Err(err) = checkpoint {
                tracing::warn!(error = %err, "checkpointing an object's WAL");
            }
        }
        out
    }

    pub(super) fn commit_failed(&self, err: &Error) -> CallError {
        tracing::error!(error = %err, "commit failed; the batch is rolled back");
        Metrics::add(&self.ns.shared.metrics.failed_commits, 1);
        CallError::from_error(err)
    }

    /// Cluster mode: stores a snapshot once the object's log holds as many bytes as the
    /// database itself (so snapshots cost, amortised, a constant per byte logged, and a move
    /// reads at most about twice the database), or `snapshot_every` commits. Runs between
    /// batches: it holds the object for a `VACUUM INTO` and an upload.
    pub(super) async fn maybe_snapshot(&self, live: &mut Live<O>) {
        let shared = &self.ns.shared;
        let (Some(cluster), Some(owned)) = (shared.cluster(), live.owned.as_mut()) else {
            return;
        };
        if live.dropped {
            return;
        }
        let due_by_count = owned.seq - owned.snapshot_seq >= cluster.options.snapshot_every;
        let due_by_size = owned.log_bytes >= MIN_SNAPSHOT_LOG
            && storage::size(&mut live.conn).is_ok_and(|size| owned.log_bytes >= size);
        if !due_by_count && !due_by_size {
            return;
        }
        let path = shared.object_path(O::NAMESPACE, self.id);
        match snapshot::store(
            cluster,
            &mut live.conn,
            &live.gate,
            &path,
            O::NAMESPACE,
            self.id,
            &owned.claim.membership.incarnation,
            owned.claim.epoch,
            owned.seq,
        )
        .await
        {
            Ok(true) => {
                owned.snapshot_seq = owned.seq;
                owned.log_bytes = 0;
            }
            // Only a new owner's claim makes the fenced update miss.
            Ok(false) => live.dropped = true,
            Err(err) => {
                tracing::warn!(error = %err, "storing a snapshot failed; retrying after the next commit")
            }
        }
    }
}
