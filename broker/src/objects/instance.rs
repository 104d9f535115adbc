//! One live object: the task that owns its SQLite connection and handles its events one at a
//! time.
//!
//! # The event loop
//!
//! The task waits on four things (one `select!`, in this order of priority): shutdown, a
//! nudge from the alarm scheduler, its inbox, and its idle timer. Inbox messages that are
//! already waiting are taken together (up to `max_batch`) and run in one transaction, each in
//! its own savepoint, then committed
//! once: that is group commit, and it is how one object does more writes per second than the
//! disk does fsyncs. Replies, spawned work and broadcast events are held back until the
//! commit returns (the output gate).
//!
//! # Alarm bookkeeping, worked through
//!
//! The object's alarm is stored in its own database (`_berth_kv`, key `berth.alarm`). The
//! directory holds a copy that must never be later. Say the stored alarm is 10:05 and the
//! directory says 10:05. An event sets it to 10:01: before committing, the object writes 10:01
//! to the directory and waits for that commit; a crash in between leaves the directory at
//! 10:01 and the object at 10:05, which only causes an early, harmless wake. Later an event
//! moves the alarm to 10:30: the object commits without touching the directory (10:01 is still
//! not later than 10:30) and updates the directory lazily when it hibernates.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use sqlx::{Connection, SqliteConnection};
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument;

use super::cluster::log::Append;
use super::cluster::{Claim, guard, restore, snapshot};
use super::metrics::Metrics;
use super::namespace::{Events, NsInner};
use super::object::Effects;
use super::record::{Record, SEQ_KEY};
use super::session::{self, Session};
use super::storage;
use super::warm::Parked;
use super::{CallError, Ctx, Error, Object, ObjectId};

/// The runtime's key for the object's alarm in `_berth_kv`.
const ALARM_KEY: &str = "berth.alarm";
/// The runtime's key for the object's name in `_berth_kv`.
const NAME_KEY: &str = "berth.name";
/// First retry of a failed alarm; each further retry waits twice as long.
const ALARM_RETRY_BASE: Duration = Duration::from_secs(2);
/// Retries of a failed alarm before the runtime logs an error and starts a new cycle.
const ALARM_MAX_RETRIES: u32 = 6;
/// How long an activation waits for an evicted object to close before asking another.
const EVICT_RETRY: Duration = Duration::from_millis(50);
/// Cluster mode: an object's log is not snapshotted for less than this many bytes.
const MIN_SNAPSHOT_LOG: u64 = 1 << 20;
/// A batch slower than this is logged.
const SLOW_BATCH: Duration = Duration::from_millis(500);

/// A message in an object's inbox.
pub(crate) enum Envelope<O: Object> {
    /// A request from a stub, with the channel for its reply.
    Call {
        request: O::Request,
        reply: oneshot::Sender<Result<O::Reply, CallError>>,
        /// The caller's span (an HTTP request's, with its request id): the event runs in it,
        /// so the object's log lines about this request carry the id too.
        span: tracing::Span,
    },
    /// The result of background work the object spawned.
    Completion(O::Completion),
    /// The live-object cap was reached and this object is among the least recently used.
    Evict,
    /// Activation by the alarm scheduler: look at the alarm.
    Wake,
}

/// What one unit of work inside a batch does.
enum Payload<O: Object> {
    Call(O::Request),
    Completion(O::Completion),
    Alarm { due: i64 },
    Activated,
}

/// One unit of work inside a batch, with the channel its reply goes to (requests only).
struct Job<O: Object> {
    payload: Payload<O>,
    reply: Option<oneshot::Sender<Result<O::Reply, CallError>>>,
    /// The caller's span for requests; none for the object's own work.
    span: tracing::Span,
}

impl<O: Object> Job<O> {
    fn internal(payload: Payload<O>) -> Self {
        Job {
            payload,
            reply: None,
            span: tracing::Span::none(),
        }
    }
}

/// An object between activation and its first open: identity and channels.
pub(crate) struct Instance<O: Object> {
    ns: Arc<NsInner<O>>,
    id: ObjectId,
    name: Option<String>,
    generation: u64,
    rx: mpsc::Receiver<Envelope<O>>,
    /// A sender to the object's own inbox, for background work to report back.
    tx: mpsc::Sender<Envelope<O>>,
    wake: Arc<Notify>,
    events: Events<O::Event>,
}

/// An open object: its connection and the state that lives as long as it is open.
struct Live<O: Object> {
    conn: SqliteConnection,
    /// The connection's commit gate (see `session::install_gate`).
    gate: Arc<AtomicBool>,
    /// One of the runtime's open-object permits; released when the object closes.
    _permit: OwnedSemaphorePermit,
    /// `None` only after a `load` failed; the next event tries again.
    object: Option<O>,
    /// The alarm as committed in the object's database.
    stored_alarm: Option<i64>,
    /// The alarm as committed in the directory (never later than `stored_alarm`).
    dir_alarm: Option<i64>,
    /// Failed runs of the current alarm, and when the next retry is due.
    alarm_failures: u32,
    alarm_retry_at: Option<i64>,
    /// Background tasks started and not yet reported back.
    in_flight: usize,
    /// The registry asked this object to hibernate.
    evict_requested: bool,
    /// `Durability::Group`: the database holds commits the shared barrier has not yet made
    /// durable, so the next effects to leave wait for it first.
    unsynced: bool,
    /// Cluster mode: the claim this activation owns the object under, and where its log is.
    owned: Option<Owned>,
    /// Cluster mode: the object may no longer act (a commit was fenced or failed ambiguously,
    /// or the membership lapsed). It closes without answering anything else.
    dropped: bool,
}

/// An object's ownership in cluster mode.
struct Owned {
    claim: Claim,
    /// The fingerprint of the object type's writer statements.
    writers: String,
    /// The last log position committed (locally and in PostgreSQL).
    seq: i64,
    /// The last position a stored snapshot covers.
    snapshot_seq: i64,
    /// Bytes this activation appended to the log since the last snapshot.
    log_bytes: u64,
}

/// Why an object's event loop ended.
enum Exit {
    /// Idle or evicted: close, keeping the object's alarm with the scheduler.
    Hibernate(watch::Sender<bool>),
    /// The runtime stops.
    Shutdown,
    /// Cluster mode: the object may no longer act as its owner.
    Dropped,
}

/// What a batch reports back to the loop.
#[derive(Default)]
struct Outcome {
    /// `Some(true)` if an alarm job ran and committed, `Some(false)` if it failed.
    alarm_ok: Option<bool>,
}

impl<O: Object> Instance<O> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ns: Arc<NsInner<O>>,
        id: ObjectId,
        name: Option<String>,
        generation: u64,
        rx: mpsc::Receiver<Envelope<O>>,
        tx: mpsc::Sender<Envelope<O>>,
        wake: Arc<Notify>,
        events: Events<O::Event>,
    ) -> Self {
        Instance {
            ns,
            id,
            name,
            generation,
            rx,
            tx,
            wake,
            events,
        }
    }

    /// The object's task: open, serve events until idle, evicted or shut down, close.
    pub(crate) async fn run(mut self) {
        let span = tracing::info_span!("object", ns = O::NAMESPACE, id = %&self.id.to_hex()[..12]);
        async move {
            let path = self.ns.shared.object_path(O::NAMESPACE, self.id);
            let opened = match self.ns.shared.warm.take(&path) {
                Some(parked) => {
                    self.open(parked.permit, Some((parked.conn, parked.gate)))
                        .await
                }
                None => match self.permit().await {
                    Some(permit) => self.open(permit, None).await,
                    None => Err(Error::Other(anyhow::anyhow!("shutting down"))),
                },
            };
            let mut live = match opened {
                Ok(live) => live,
                Err(err) => {
                    let error = if self.ns.shared.cancel.is_cancelled() {
                        CallError::ShuttingDown
                    } else {
                        tracing::error!(error = %err, "object failed to open");
                        CallError::from_error(&err)
                    };
                    let done = self.ns.begin_close(self.id, self.generation, || true);
                    self.fail_inbox(&error);
                    self.ns.end_close(self.id, self.generation, done);
                    return;
                }
            };
            match self.serve(&mut live).await {
                Exit::Hibernate(done) => self.close(live, Some(done), true).await,
                Exit::Shutdown => {
                    // Shutdown: close the slot to new messages, drop what is queued (callers
                    // see `ShuttingDown`), then close the files.
                    let done = self.ns.begin_close(self.id, self.generation, || true);
                    self.rx.close();
                    while self.rx.try_recv().is_ok() {}
                    self.close(live, done, false).await;
                }
                Exit::Dropped => {
                    // Cluster mode: someone else may own the object now. Close the slot,
                    // answer what is queued with `Moved` (callers retry and find the owner),
                    // and leave its alarm to whoever owns it.
                    tracing::info!("object dropped: this node no longer owns it");
                    let done = self.ns.begin_close(self.id, self.generation, || true);
                    self.fail_inbox(&CallError::Moved(None));
                    live.stored_alarm = None;
                    live.alarm_retry_at = None;
                    self.close(live, done, false).await;
                }
            }
        }
        .instrument(span)
        .await;
    }

    /// Waits for one of the runtime's open-object permits, asking the least recently used
    /// objects to hibernate while there is none. `None` if the runtime shuts down first.
    async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        let shared = &self.ns.shared;
        if let Ok(permit) = shared.open_permits.clone().try_acquire_owned() {
            return Some(permit);
        }
        loop {
            // A hibernated object's parked connection goes first: closing it costs no one
            // anything but a slower next wake.
            if let Some(parked) = shared.warm.take_oldest() {
                parked.close().await;
                Metrics::add(&shared.metrics.parked_closes, 1);
                if let Ok(permit) = shared.open_permits.clone().try_acquire_owned() {
                    return Some(permit);
                }
                continue;
            }
            self.ns.evict_lru(self.id);
            tokio::select! {
                biased;
                () = shared.cancel.cancelled() => return None,
                permit = shared.open_permits.clone().acquire_owned() => return permit.ok(),
                // The object asked may be busy with background work; ask another one.
                () = tokio::time::sleep(EVICT_RETRY) => {}
            }
        }
    }

    /// Opens the object: its database (or, `warm`, the connection and commit gate it parked
    /// when it last hibernated), its name and alarm, and its memory (`load`).
    async fn open(
        &mut self,
        permit: OwnedSemaphorePermit,
        warm: Option<(SqliteConnection, Arc<AtomicBool>)>,
    ) -> Result<Live<O>, Error> {
        let shared = &self.ns.shared;
        let path = shared.object_path(O::NAMESPACE, self.id);
        let now = shared.clock().now_ms();
        let mut gate = None;
        let (mut conn, owned) = match (shared.cluster(), warm) {
            (None, Some((conn, parked_gate))) => {
                // Migrated and gated when it was first opened; its statements are prepared.
                Metrics::add(&shared.metrics.warm_activations, 1);
                gate = Some(parked_gate);
                (conn, None)
            }
            (None, None) => {
                let mut conn = storage::open(&path, shared.object_durability()).await?;
                storage::prepare_object(&mut conn, O::migrator()).await?;
                (conn, None)
            }
            (Some(cluster), _) => {
                let writers = cluster.register_writers(O::writers()).await?;
                let claim = cluster
                    .claim(O::NAMESPACE, self.id, self.name.as_deref(), now)
                    .await?;
                let conn = restore::restore(
                    cluster,
                    &path,
                    shared.object_durability(),
                    O::NAMESPACE,
                    self.id,
                    &claim,
                    O::migrator(),
                )
                .await?;
                let owned = Owned {
                    seq: claim.seq,
                    snapshot_seq: claim.snapshot_seq,
                    log_bytes: 0,
                    claim,
                    writers,
                };
                (conn, Some(owned))
            }
        };
        // The whole key-value table in one statement: the runtime's rows here, the object's
        // for its load.
        let kv = storage::kv_all(&mut conn).await?;
        let stored_name: Option<String> = storage::kv_value(&kv, NAME_KEY)?;
        match (&stored_name, &self.name) {
            (Some(stored), _) => self.name = Some(stored.clone()),
            (None, Some(name)) => {
                // A parked connection is gated already: this one write is the open's own.
                let open_gate = gate.as_ref().map(|gate| session::Opened::new(gate));
                storage::kv_put(&mut conn, NAME_KEY, name).await?;
                drop(open_gate);
            }
            (None, None) => {}
        }
        let stored_alarm: Option<i64> = storage::kv_value(&kv, ALARM_KEY)?;
        let dir_alarm = if owned.is_some() {
            // The cluster's directory alarm is written with every commit: always exact.
            stored_alarm
        } else {
            match shared.directory.object(O::NAMESPACE, self.id) {
                Some(row) => row.alarm_at,
                None => {
                    shared
                        .directory
                        .register(O::NAMESPACE, self.id, self.name.clone(), now)
                        .await?;
                    None
                }
            }
        };
        let mut live = Live {
            conn,
            gate: Arc::default(),
            _permit: permit,
            object: None,
            stored_alarm,
            dir_alarm,
            alarm_failures: 0,
            alarm_retry_at: None,
            in_flight: 0,
            evict_requested: false,
            // What the open itself wrote (migrations, the name) and whatever an earlier
            // process left unsynced before it was killed: the first effects wait for a sync.
            unsynced: true,
            owned,
            dropped: false,
        };
        // From here on every write goes through a session; a stray direct commit fails.
        live.gate = match gate {
            Some(gate) => gate,
            None => session::install_gate(&mut live.conn).await?,
        };
        let mut session = Session::new(Arc::clone(&live.gate));
        live.object = Some(
            self.load(&mut live.conn, &mut session, stored_alarm, Some(kv))
                .await?,
        );
        Ok(live)
    }

    /// Builds the object's memory from storage (through `session`, so writes queued by the
    /// batch's earlier events are sent first and seen). `kv`: the key-value table if the
    /// caller has just read it (the open has); otherwise it is read here, after that send.
    async fn load(
        &self,
        conn: &mut SqliteConnection,
        session: &mut Session,
        alarm: Option<i64>,
        kv: Option<HashMap<String, String>>,
    ) -> Result<O, Error> {
        let shared = &self.ns.shared;
        let mut effects = Effects::new(alarm);
        session.begin_event();
        let kv = match kv {
            Some(kv) => kv,
            None => {
                session.flush_before_read(conn, O::writers()).await?;
                storage::kv_all(conn).await?
            }
        };
        let mut ctx = Ctx {
            conn,
            session,
            id: self.id,
            name: self.name.as_deref(),
            env: &self.ns.env,
            clock: shared.clock(),
            now_ms: shared.clock().now_ms(),
            firing: None,
            effects: &mut effects,
            kv: Some(&kv),
        };
        O::load(&mut ctx).await
    }

    /// Serves events until the object hibernates, the runtime shuts down, or (cluster mode)
    /// the object may no longer act as its owner.
    async fn serve(&mut self, live: &mut Live<O>) -> Exit {
        let options = self.ns.shared.options.clone();
        let cancel = self.ns.shared.cancel.clone();
        let lost = live
            .owned
            .as_ref()
            .map(|owned| owned.claim.membership.lost.clone());
        let lost = async {
            match lost {
                Some(lost) => lost.cancelled_owned().await,
                None => std::future::pending().await,
            }
        };
        let mut lost = pin!(lost);
        self.run_batch(live, vec![Job::internal(Payload::Activated)])
            .await;
        self.on_wake(live).await;

        let mut idle = pin!(tokio::time::sleep(options.object_idle));
        let mut inbox = Vec::with_capacity(options.max_batch.max(1));
        loop {
            if live.dropped {
                return Exit::Dropped;
            }
            tokio::select! {
                biased;
                // Cancel-safe: we are between events, everything committed is committed.
                () = cancel.cancelled() => break,
                // The membership this object was claimed under lapsed: others may own it.
                () = &mut lost => live.dropped = true,
                // Before the inbox: a due alarm runs between two batches, so a steady stream of
                // messages cannot starve the object's deadlines. Cancel-safe: a notification
                // not taken stays stored in the `Notify`.
                () = self.wake.notified() => self.on_wake(live).await,
                // Cancel-safe: `recv_many` loses nothing when it is not polled to completion.
                n = self.rx.recv_many(&mut inbox, options.max_batch.max(1)) => {
                    if n == 0 {
                        break;
                    }
                    self.process(live, &mut inbox).await;
                    idle.as_mut().reset(Instant::now() + options.object_idle);
                    if live.evict_requested && live.in_flight == 0 && !live.dropped {
                        live.evict_requested = false;
                        if let Some(done) = self.try_close(live) {
                            return Exit::Hibernate(done);
                        }
                    }
                }
                () = &mut idle, if live.in_flight == 0 => {
                    if let Some(done) = self.try_close(live) {
                        return Exit::Hibernate(done);
                    }
                    idle.as_mut().reset(Instant::now() + options.object_idle);
                }
            }
        }
        Exit::Shutdown
    }

    /// Turns a drained inbox into jobs and runs them.
    async fn process(&mut self, live: &mut Live<O>, inbox: &mut Vec<Envelope<O>>) {
        let mut jobs = Vec::with_capacity(inbox.len());
        let mut woken = false;
        for envelope in inbox.drain(..) {
            match envelope {
                Envelope::Call {
                    request,
                    reply,
                    span,
                } => {
                    jobs.push(Job {
                        payload: Payload::Call(request),
                        reply: Some(reply),
                        span,
                    });
                }
                Envelope::Completion(completion) => {
                    live.in_flight = live.in_flight.saturating_sub(1);
                    jobs.push(Job::internal(Payload::Completion(completion)));
                }
                Envelope::Evict => live.evict_requested = true,
                Envelope::Wake => woken = true,
            }
        }
        if !jobs.is_empty() {
            self.run_batch(live, jobs).await;
        }
        if woken {
            self.on_wake(live).await;
        }
    }

    /// Runs `jobs` as one batch: their writes go to SQLite together and commit once, and only
    /// then are replies, spawned work and events released. A batch that wrote nothing commits
    /// nothing.
    async fn run_batch(&self, live: &mut Live<O>, jobs: Vec<Job<O>>) -> Outcome {
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
            match self
                .load(
                    &mut live.conn,
                    &mut Session::default(),
                    live.stored_alarm,
                    None,
                )
                .await
            {
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
                if let Some(barrier) = &shared.barrier
                    && live.unsynced
                    && (!replies.is_empty()
                        || !batch.spawned.is_empty()
                        || (!batch.events.is_empty() && self.events.get().is_some()))
                {
                    barrier.sync().await;
                    live.unsynced = false;
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
                match self
                    .load(
                        &mut live.conn,
                        &mut Session::default(),
                        live.stored_alarm,
                        None,
                    )
                    .await
                {
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
    async fn transact(
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
        let mut session = match owned {
            Some(_) => Session::recording(Arc::clone(gate)),
            None => Session::new(Arc::clone(gate)),
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
                            session.rollback(conn).await;
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
                session.rollback(conn).await;
                return Err(fail(err));
            }
            *dir_alarm = Some(at);
        }
        session.commit(conn, O::writers()).await.map_err(fail)
    }

    /// Cluster mode's commit: the batch goes to SQLite inside its transaction, then to the
    /// object's log in PostgreSQL (fenced by the claim's epoch, with the alarm), and only
    /// then is the SQLite transaction committed. A batch the log refused, or whose append
    /// failed, is rolled back and the object dropped: it never reports success, and the next
    /// activation rebuilds it from the log.
    async fn commit_logged(
        &self,
        conn: &mut SqliteConnection,
        session: &mut Session,
        owned: &mut Owned,
        alarm: Option<i64>,
        dropped: &mut bool,
    ) -> Result<bool, CallError> {
        let shared = &self.ns.shared;
        let cluster = shared
            .cluster()
            .expect("BUG: an owned object runs in cluster mode");
        let chunks = match session.prepare(conn, O::writers()).await {
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
                session.rollback(conn).await;
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
        if let Err(err) = session.finish(conn, O::writers(), position).await {
            // PostgreSQL holds the batch, so it is committed and its replies are true; this
            // file fell behind, so the object reloads from the log.
            tracing::warn!(error = %err, "local commit after the log append failed; the object reloads from the log");
            *dropped = true;
        }
        Ok(true)
    }

    fn commit_failed(&self, err: &Error) -> CallError {
        tracing::error!(error = %err, "commit failed; the batch is rolled back");
        Metrics::add(&self.ns.shared.metrics.failed_commits, 1);
        CallError::from_error(err)
    }

    /// Cluster mode: stores a snapshot once the object's log holds as many bytes as the
    /// database itself (so snapshots cost, amortised, a constant per byte logged, and a move
    /// reads at most about twice the database), or `snapshot_every` commits. Runs between
    /// batches: it holds the object for a `VACUUM INTO` and an upload.
    async fn maybe_snapshot(&self, live: &mut Live<O>) {
        let shared = &self.ns.shared;
        let (Some(cluster), Some(owned)) = (shared.cluster(), live.owned.as_mut()) else {
            return;
        };
        if live.dropped {
            return;
        }
        let due_by_count = owned.seq - owned.snapshot_seq >= cluster.options.snapshot_every;
        let due_by_size = owned.log_bytes >= MIN_SNAPSHOT_LOG
            && storage::size(&mut live.conn)
                .await
                .is_ok_and(|size| owned.log_bytes >= size);
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

    async fn dispatch(
        &self,
        object: &mut O,
        conn: &mut SqliteConnection,
        session: &mut Session,
        payload: Payload<O>,
        effects: &mut Effects<O>,
        now: i64,
    ) -> Result<Option<O::Reply>, Error> {
        let shared = &self.ns.shared;
        let mut firing = None;
        if let Payload::Alarm { due } = payload {
            firing = Some(due);
            // The alarm is consumed by running; the handler sets the next one.
            effects.alarm = None;
            Metrics::add(&shared.metrics.alarms, 1);
            shared
                .metrics
                .alarm_lateness
                .observe_ms(u64::try_from(now - due).unwrap_or(0));
        }
        let mut ctx = Ctx {
            conn,
            session,
            id: self.id,
            name: self.name.as_deref(),
            env: &self.ns.env,
            clock: shared.clock(),
            now_ms: now,
            firing,
            effects,
            kv: None,
        };
        match payload {
            Payload::Call(request) => object.handle(&mut ctx, request).await.map(Some),
            Payload::Completion(completion) => {
                object.complete(&mut ctx, completion).await.map(|()| None)
            }
            Payload::Alarm { .. } => object.alarm(&mut ctx).await.map(|()| None),
            Payload::Activated => object.activated(&mut ctx).await.map(|()| None),
        }
    }

    /// The scheduler (or the object itself) says the alarm may be due: run it if it is,
    /// otherwise make sure the scheduler holds it.
    async fn on_wake(&self, live: &mut Live<O>) {
        let shared = &self.ns.shared;
        let now = shared.clock().now_ms();
        let Some(at) = live.stored_alarm else { return };
        if let Some(retry_at) = live.alarm_retry_at
            && now < retry_at
        {
            shared
                .scheduler
                .schedule(O::NAMESPACE, self.id, Some(retry_at));
            return;
        }
        if at > now {
            // Early or spurious: never run an alarm before its time.
            shared.scheduler.schedule(O::NAMESPACE, self.id, Some(at));
            return;
        }
        let outcome = self
            .run_batch(live, vec![Job::internal(Payload::Alarm { due: at })])
            .await;
        if outcome.alarm_ok == Some(true) {
            live.alarm_failures = 0;
            live.alarm_retry_at = None;
            shared
                .scheduler
                .schedule(O::NAMESPACE, self.id, live.stored_alarm);
            return;
        }
        Metrics::add(&shared.metrics.alarm_failures, 1);
        live.alarm_failures += 1;
        let exponent = live.alarm_failures.min(ALARM_MAX_RETRIES + 1) - 1;
        let delay = ALARM_RETRY_BASE * 2u32.pow(exponent);
        if live.alarm_failures > ALARM_MAX_RETRIES {
            tracing::error!(
                failures = live.alarm_failures,
                "alarm keeps failing; starting a new retry cycle in {delay:?}"
            );
            live.alarm_failures = 0;
        } else {
            tracing::warn!(
                failures = live.alarm_failures,
                "alarm failed; retrying in {delay:?}"
            );
        }
        let retry_at = now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        live.alarm_retry_at = Some(retry_at);
        shared
            .scheduler
            .schedule(O::NAMESPACE, self.id, Some(retry_at));
    }

    /// Asks the registry to close this object's slot. Returns the "closed" signal to fire
    /// once the files are closed, or `None` if the object must stay (messages are waiting, or
    /// its alarm is due).
    fn try_close(&self, live: &Live<O>) -> Option<watch::Sender<bool>> {
        let now = self.ns.shared.clock().now_ms();
        let due = live.stored_alarm.is_some_and(|at| at <= now)
            && live.alarm_retry_at.is_none_or(|retry| retry <= now);
        if due {
            // Run the alarm first; the loop picks up the nudge.
            self.wake.notify_one();
            return None;
        }
        let rx = &self.rx;
        self.ns
            .begin_close(self.id, self.generation, || rx.is_empty())
    }

    /// Closes the database, leaves the directory and the scheduler with the object's alarm,
    /// and frees the registry slot.
    async fn close(&mut self, live: Live<O>, done: Option<watch::Sender<bool>>, hibernating: bool) {
        let shared = &self.ns.shared;
        let Live {
            conn,
            gate,
            _permit: permit,
            dir_alarm,
            stored_alarm,
            alarm_retry_at,
            ..
        } = live;
        // No parking when every permit is taken: an activation may be waiting for this one
        // (the live-object cap asked us to hibernate), and parking would keep it waiting.
        let park =
            hibernating && shared.warm.enabled() && shared.open_permits.available_permits() > 0;
        let permit = if park {
            // The warm tier: the connection stays open (with its permit) for the next wake,
            // without its page cache (the pages stay in the kernel's cache). Measured: ~0.5
            // MiB per parked connection with it, ~0.4 MiB without (its worker thread and
            // prepared statements are the rest).
            let mut conn = conn;
            if let Err(err) = sqlx::query("PRAGMA shrink_memory").execute(&mut conn).await {
                tracing::warn!(error = %err, "shrinking a parked connection's cache");
            }
            let path = shared.object_path(O::NAMESPACE, self.id);
            let parked = Parked { conn, gate, permit };
            if let Some(oldest) = shared.warm.park(path, parked) {
                oldest.close().await;
                Metrics::add(&shared.metrics.parked_closes, 1);
            }
            None
        } else {
            if let Err(err) = conn.close().await {
                tracing::warn!(error = %err, "closing the object's database");
            }
            Some(permit)
        };
        // A later directory alarm is only a tidy-up (an earlier one wakes us harmlessly), so
        // a failure here is logged and nothing more. Hibernating, the tidy-up waits until the
        // directory's alarm is due: until then it costs nothing (the scheduler in memory has
        // the real time), and an object woken every few seconds would otherwise write (and
        // fsync) the directory twice per wake, here and before its next commit.
        let now = shared.clock().now_ms();
        let tidy = !hibernating || dir_alarm.is_some_and(|at| at <= now);
        if dir_alarm != stored_alarm
            && tidy
            && shared.cluster().is_none()
            && let Err(err) = shared
                .directory
                .set_alarm(O::NAMESPACE, self.id, stored_alarm, now)
                .await
        {
            tracing::warn!(error = %err, "updating the directory alarm");
        }
        let wake_at = alarm_retry_at.or(stored_alarm);
        shared.scheduler.schedule(O::NAMESPACE, self.id, wake_at);
        if hibernating {
            Metrics::add(&shared.metrics.hibernations, 1);
        }
        // The open-object permit goes back before the slot leaves the registry, so an object
        // that is no longer live never still counts as open.
        drop(permit);
        self.ns.end_close(self.id, self.generation, done);
    }

    /// Answers every queued request with `error` (the object could not open).
    fn fail_inbox(&mut self, error: &CallError) {
        self.rx.close();
        while let Ok(envelope) = self.rx.try_recv() {
            if let Envelope::Call { reply, .. } = envelope {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

type Reply<O> = (
    oneshot::Sender<Result<<O as Object>::Reply, CallError>>,
    Result<<O as Object>::Reply, CallError>,
);

fn fail_jobs<O: Object>(jobs: Vec<Job<O>>, error: &CallError) {
    for job in jobs {
        if let Some(reply) = job.reply {
            let _ = reply.send(Err(error.clone()));
        }
    }
}
