//! How an object comes alive and goes back to sleep: the open-object permit, opening its
//! database (cold, from the warm tier, or restored from the cluster's log), loading its
//! memory, and closing or parking the connection when it hibernates.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, watch};

use super::super::closing::Queue;
use super::super::cluster::restore;
use super::super::metrics::Metrics;
use super::super::object::Effects;
use super::super::record::SEQ_KEY;
use super::super::session::{self, Session};
use super::super::sqlite::Db;
use super::super::storage;
use super::super::warm::Parked;
use super::super::{CallError, Ctx, Error, Object};
use super::{ALARM_KEY, EVICT_RETRY, Envelope, Instance, Live, NAME_KEY, Owned};

/// How long an idle object that put off hibernating waits before it asks again.
pub(super) const DEFER_STEP: Duration = Duration::from_millis(100);
/// The longest an idle object puts off hibernating for late alarms.
const MAX_DEFER: Duration = Duration::from_secs(30);
/// Alarms late within this window put hibernation off.
const LATE_WINDOW: Duration = Duration::from_millis(500);

impl<O: Object> Instance<O> {
    /// Waits for one of the runtime's open-object permits, asking the least recently used
    /// objects to hibernate while there is none. `None` if the runtime shuts down first.
    pub(super) async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        let shared = &self.ns.shared;
        if let Ok(permit) = shared.open_permits.clone().try_acquire_owned() {
            return Some(permit);
        }
        loop {
            // A hibernated object's parked connection goes first: closing it costs no one
            // anything but a slower next wake.
            if let Some(evicted) = shared.warm.take_oldest() {
                evicted.close(&shared.closer, Queue::Now).await;
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
    pub(super) async fn open(
        &mut self,
        permit: OwnedSemaphorePermit,
        warm: Option<(Db, Arc<AtomicBool>)>,
    ) -> Result<Live<O>, Error> {
        let shared = &self.ns.shared;
        let path = shared.object_path(O::NAMESPACE, self.id);
        let now = shared.clock().now_ms();
        let mut gate = None;
        let mut kv = None;
        let (mut conn, owned) = match (shared.cluster(), warm) {
            (None, Some((conn, parked_gate))) => {
                // Migrated and gated when it was first opened; its statements are prepared.
                Metrics::add(&shared.metrics.warm_activations, 1);
                gate = Some(parked_gate);
                (conn, None)
            }
            (None, None) => {
                // Opening reads the file's header and schema (and may create the file): off
                // tokio's workers.
                let durability = shared.object_durability();
                let (conn, new_gate, stored) =
                    storage::on_blocking_pool("opening an object file", move || {
                        storage::open_object(&path, durability, O::migrator())
                    })
                    .await?;
                gate = Some(new_gate);
                kv = Some(stored);
                (conn, None)
            }
            (Some(cluster), _) => {
                let writers = cluster.register_writers(&self.ns.writer_statements).await?;
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
        // The whole key-value table in one statement (a cold open has read it already): the
        // runtime's rows here, the object's for its load.
        let kv = match kv {
            Some(kv) => kv,
            None => storage::kv_all(&mut conn)?,
        };
        let stored_name: Option<String> = storage::kv_value(&kv, NAME_KEY)?;
        match (&stored_name, &self.name) {
            (Some(stored), _) => self.name = Some(stored.clone()),
            (None, Some(name)) => {
                // A gated connection (parked, or opened just now): this write is the open's own.
                let open_gate = gate.as_ref().map(|gate| session::Opened::new(gate));
                storage::kv_put(&mut conn, NAME_KEY, name)?;
                drop(open_gate);
            }
            (None, None) => {}
        }
        let stored_alarm: Option<i64> = storage::kv_value(&kv, ALARM_KEY)?;
        let seq: i64 = storage::kv_value(&kv, SEQ_KEY)?.unwrap_or(0);
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
            seq,
            journal_at: 0,
            owned,
            dropped: false,
        };
        // From here on every write goes through a session; a stray direct commit fails.
        live.gate = match gate {
            Some(gate) => gate,
            None => session::install_gate(&mut live.conn),
        };
        let mut session = Session::new(Arc::clone(&live.gate));
        live.object = Some(
            self.load(&mut live.conn, &mut session, stored_alarm, Some(kv))
                .await?,
        );
        Ok(live)
    }

    /// The object's memory rebuilt from what is committed (nothing of a batch is queued).
    pub(super) async fn reload(&self, live: &mut Live<O>) -> Result<O, Error> {
        self.load(
            &mut live.conn,
            &mut Session::default(),
            live.stored_alarm,
            None,
        )
        .await
    }

    /// Builds the object's memory from storage (through `session`, so writes queued by the
    /// batch's earlier events are sent first and seen). `kv`: the key-value table if the
    /// caller has just read it (the open has); otherwise it is read here, after that send.
    pub(super) async fn load(
        &self,
        conn: &mut Db,
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
                session.flush_before_read(conn, O::writers())?;
                storage::kv_all(conn)?
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

    /// Whether this idle object stays live a while longer instead of hibernating now (then
    /// `deferred` grows by [`DEFER_STEP`], after which it asks again).
    ///
    /// Hibernating costs a checkpoint, two `fsync`s and a thread's exit, and after a burst of
    /// traffic to many tenants thousands of them come due within seconds: work that competes
    /// with alarms for the CPU and the disk. So while alarms run late (in the last
    /// [`LATE_WINDOW`]) an idle object waits — as long as the live-object cap has an eighth
    /// of its permits free (no activation waits for a permit this object holds) and it has
    /// not waited [`MAX_DEFER`] already. It stays fully live meanwhile: a message is served
    /// at once.
    pub(super) fn defer_hibernation(&self, deferred: &mut Duration) -> bool {
        let shared = &self.ns.shared;
        // Room to spare, not just room: objects that put hibernation off must not bring the
        // cap close enough that activations start waiting for evictions.
        let room = shared.options.max_live_objects.max(1) / 8;
        let defer = *deferred < MAX_DEFER
            && shared.open_permits.available_permits() > room
            && shared.metrics.alarm_lateness.late_within(LATE_WINDOW);
        if defer {
            *deferred += DEFER_STEP;
        }
        defer
    }

    /// Asks the registry to close this object's slot. Returns the "closed" signal to fire
    /// once the files are closed, or `None` if the object must stay (messages are waiting, or
    /// its alarm is due).
    pub(super) fn try_close(&self, live: &Live<O>) -> Option<watch::Sender<bool>> {
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
    pub(super) async fn close(
        &mut self,
        live: Live<O>,
        done: Option<watch::Sender<bool>>,
        hibernating: bool,
    ) {
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
        // The same test tells a close nothing waits for, which queues behind other such
        // closes (`closing::BACKGROUND_CLOSES`).
        let unhurried = hibernating && shared.open_permits.available_permits() > 0;
        let park = unhurried && shared.warm.enabled();
        let permit = if park {
            // The warm tier: the connection stays open (with its permit) for the next wake,
            // without its page cache (the pages stay in the kernel's cache). Measured on
            // berth's own connection, 5,051 parked after W2: ~0.19 MiB each (~0.29 MiB before
            // the smaller lookaside and the tenant's load statements no longer kept); its
            // prepared statements are most of it.
            let mut conn = conn;
            if let Err(err) = conn.execute_batch("PRAGMA shrink_memory") {
                tracing::warn!(error = %err, "shrinking a parked connection's cache");
            }
            let path = shared.object_path(O::NAMESPACE, self.id);
            let parked = Parked { conn, gate, permit };
            if let Some(oldest) = shared.warm.park(path, parked) {
                // Another object's connection: closed in the background, so this object's
                // slot is free now.
                let closer = Arc::clone(&shared.closer);
                let metrics = Arc::clone(&shared.metrics);
                shared.tracker.spawn(async move {
                    oldest.close(&closer, Queue::Background).await;
                    Metrics::add(&metrics.parked_closes, 1);
                });
            }
            None
        } else {
            let queue = if unhurried {
                Queue::Background
            } else {
                Queue::Now
            };
            if let Err(err) = shared.closer.close(conn, queue).await {
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
    pub(super) fn fail_inbox(&mut self, error: &CallError) {
        self.rx.close();
        while let Ok(envelope) = self.rx.try_recv() {
            if let Envelope::Call { reply, .. } = envelope {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
