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
//!
//! # Map
//!
//! This file: the object's task, its event loop and the dispatch of one event.
//! `activation.rs`: the open-object permit, opening (cold, warm or restored) and loading, and
//! closing or parking at hibernation. `commit.rs`: a batch, its commit and the output gate.

mod activation;
mod commit;

use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument;

use super::cluster::Claim;
use super::metrics::Metrics;
use super::namespace::{Events, NsInner};
use super::object::Effects;
use super::session::Session;
use super::sqlite::{self, Db};
use super::storage;
use super::{CallError, Ctx, Error, Object, ObjectId};
use activation::DEFER_STEP;

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
    /// Write the committed state of the object's database to `to` (a backup), on the
    /// object's own connection: its file has no other reader (`storage::Access::Sole`).
    Copy {
        to: PathBuf,
        reply: oneshot::Sender<Result<(), Error>>,
    },
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
    conn: Db,
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
    /// `Durability::Log`: the position the object's file holds (`berth.seq`), and the
    /// journal position its last commit was appended at: the next effects to leave wait
    /// until the journal is durable that far.
    seq: i64,
    journal_at: u64,
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
            let opened = match self.ns.shared.warm.take(&path).await {
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
        // How long this object has put off hibernating for late alarms (see
        // `defer_hibernation`).
        let mut deferred = Duration::ZERO;
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
                    deferred = Duration::ZERO;
                    if live.evict_requested && live.in_flight == 0 && !live.dropped {
                        live.evict_requested = false;
                        if let Some(done) = self.try_close(live) {
                            return Exit::Hibernate(done);
                        }
                    }
                }
                () = &mut idle, if live.in_flight == 0 => {
                    if self.defer_hibernation(&mut deferred) {
                        idle.as_mut().reset(Instant::now() + DEFER_STEP);
                        continue;
                    }
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
        let mut copies = Vec::new();
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
                Envelope::Copy { to, reply } => copies.push((to, reply)),
            }
        }
        if !jobs.is_empty() {
            self.run_batch(live, jobs).await;
        }
        // After the batch: a copy holds everything acknowledged before it was asked for.
        for (to, reply) in copies {
            let copied = sqlite::blocking(|| storage::vacuum_into(&mut live.conn, &live.gate, &to));
            let _ = reply.send(copied);
        }
        if woken {
            self.on_wake(live).await;
        }
    }

    async fn dispatch(
        &self,
        object: &mut O,
        conn: &mut Db,
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
