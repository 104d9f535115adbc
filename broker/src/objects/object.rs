//! The [`Object`] trait a durable object implements, and the [`Ctx`] its handlers get.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::migrate::Migrator;

use super::session::{Bind, Session, Writes};
use super::sqlite::Db;
use super::storage;
use super::{Clock, Error, ObjectId};

/// A kind of durable object: one single-threaded instance per id, with its own SQLite
/// database and alarm.
///
/// Every method runs inside the object's task, one at a time. Methods read through
/// [`Ctx::db`] and queue their writes with [`Ctx::write`]; the runtime applies the writes of a
/// batch of events in one transaction and commits it before any reply leaves the object (the
/// output gate). A method that returns `Err` has its writes dropped, and the runtime rebuilds
/// the in-memory state with [`Object::load`], so memory never disagrees with the database.
///
/// Slow I/O never runs in these methods: an object records its intent, then hands the slow
/// part to [`Ctx::spawn`]; the runtime starts it after the commit and feeds its result back
/// through [`Object::complete`] as a new event.
pub trait Object: Sized + Send + 'static {
    /// The namespace's name: a short lowercase word, used in file paths and the directory.
    const NAMESPACE: &'static str;

    /// Shared, read-only environment every instance of the namespace gets (configuration,
    /// clients). Built once by the layer that opens the namespace.
    type Env: Send + Sync + 'static;
    /// A message a caller sends through a [`super::Stub`].
    type Request: Send + 'static;
    /// The answer to a request.
    type Reply: Send + 'static;
    /// The result of background work started with [`Ctx::spawn`].
    type Completion: Send + 'static;
    /// What subscribers of the object receive (see [`super::Namespace::subscribe`]).
    type Event: Clone + Send + 'static;

    /// The object's schema, embedded with `sqlx::migrate!`, applied when the object opens.
    fn migrator() -> &'static Migrator;

    /// Batched writers ([`Writer`](super::Writer)): tables whose rows [`Ctx::put`] queues as
    /// JSON arrays; a batch sends every writer's rows with one prepared statement each, so
    /// the hot writes of an object cost no SQL parsing however many events a batch holds. At
    /// most [`MAX_WRITERS`](super::session::MAX_WRITERS).
    ///
    /// Within a flush, writers run first, in this order, then ad-hoc [`Ctx::write`]
    /// statements: an object must not touch one row through both in one batch. The list is
    /// fixed for the object type (a function so that it may be built once, at first use).
    fn writers() -> &'static [super::Writer] {
        &[]
    }

    /// Builds the in-memory state from the database.
    ///
    /// Called when the object activates, and again after a failed event or a failed commit.
    /// It must not write.
    fn load(ctx: &mut Ctx<'_, Self>) -> impl Future<Output = Result<Self, Error>> + Send;

    /// Runs once per activation, right after `load`, as an event of its own (its writes commit
    /// like any other event's). Objects resume work that was in flight when the process
    /// stopped here.
    fn activated(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Handles one request.
    fn handle(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        request: Self::Request,
    ) -> impl Future<Output = Result<Self::Reply, Error>> + Send;

    /// Handles the result of background work this object started.
    ///
    /// If it returns `Err`, the completion is dropped with the event's writes: objects keep
    /// enough intent in their database to notice and redo the work (for example with a
    /// timeout on their alarm).
    fn complete(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        completion: Self::Completion,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Runs when the object's alarm is due. The runtime clears the alarm before calling it;
    /// set a new one with [`Ctx::set_alarm`]. An `Err` keeps the old alarm and retries with
    /// backoff.
    fn alarm(&mut self, ctx: &mut Ctx<'_, Self>) -> impl Future<Output = Result<(), Error>> + Send;
}

/// Background work handed to the runtime; see [`Ctx::spawn`].
pub(crate) type Work<C> = Pin<Box<dyn Future<Output = C> + Send + 'static>>;

/// What one event asked the runtime to do after its commit.
pub(crate) struct Effects<O: Object> {
    /// The object's alarm as this event leaves it.
    pub(crate) alarm: Option<i64>,
    /// Work to start after the commit.
    pub(crate) spawned: Vec<Work<O::Completion>>,
    /// Events to broadcast after the commit.
    pub(crate) events: Vec<O::Event>,
}

impl<O: Object> Effects<O> {
    pub(crate) fn new(alarm: Option<i64>) -> Self {
        Effects {
            alarm,
            spawned: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Appends the effects of a later event of the same batch.
    pub(crate) fn absorb(&mut self, later: Effects<O>) {
        self.alarm = later.alarm;
        self.spawned.extend(later.spawned);
        self.events.extend(later.events);
    }
}

/// What an object's methods can reach during one event.
pub struct Ctx<'a, O: Object> {
    pub(crate) conn: &'a mut Db,
    pub(crate) session: &'a mut Session,
    pub(crate) id: ObjectId,
    pub(crate) name: Option<&'a str>,
    pub(crate) env: &'a Arc<O::Env>,
    pub(crate) clock: &'a dyn Clock,
    pub(crate) now_ms: i64,
    /// In `alarm()`: the time the alarm was set for.
    pub(crate) firing: Option<i64>,
    pub(crate) effects: &'a mut Effects<O>,
    /// In `load()`: the key-value table as stored before the event, read in one statement
    /// (see [`Ctx::kv_get`]). `None` in every other method.
    pub(crate) kv: Option<&'a HashMap<String, String>>,
}

impl<O: Object> Ctx<'_, O> {
    /// The object's database connection, for reads. Statements run on the calling thread
    /// (`sqlite`): reads of an object's file are served from memory or the page cache.
    ///
    /// Writes queued by earlier events of the batch are sent first, so reads see them; this
    /// event's own queued writes are not (they are applied if the event succeeds). Never
    /// write through it: queue writes with [`Ctx::put`] or [`Ctx::write`] (a direct write
    /// outside the batch's transaction fails; inside it, it would escape the event's
    /// atomicity).
    ///
    /// # Errors
    ///
    /// Sending the earlier events' writes failed (the whole batch then fails).
    pub fn db(&mut self) -> Result<&mut Db, Error> {
        self.session.flush_before_read(self.conn, O::writers())?;
        Ok(self.conn)
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// The name the object is addressed by, if it was made with `id_from_name`.
    pub fn name(&self) -> Option<&str> {
        self.name
    }

    /// The namespace's environment.
    pub fn env(&self) -> &Arc<O::Env> {
        self.env
    }

    /// The time this event started, in Unix ms. Every decision of one event uses this one
    /// instant.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// The clock itself, for background work that needs time of its own.
    pub fn clock(&self) -> &dyn Clock {
        self.clock
    }

    /// Inside [`Object::alarm`]: the time the alarm that is running was set for (never later
    /// than [`Ctx::now_ms`]). `None` in every other method.
    pub fn firing_alarm(&self) -> Option<i64> {
        self.firing
    }

    /// The object's alarm, as this event sees it.
    pub fn alarm(&self) -> Option<i64> {
        self.effects.alarm
    }

    /// Sets the object's one alarm to `at_ms` (replacing any other). Stored with the event's
    /// commit; a failed event leaves the alarm as it was.
    pub fn set_alarm(&mut self, at_ms: i64) {
        self.effects.alarm = Some(at_ms);
    }

    /// Removes the object's alarm.
    pub fn delete_alarm(&mut self) {
        self.effects.alarm = None;
    }

    /// Starts `work` in the background once this event commits; its output comes back as a
    /// new event through [`Object::complete`]. If the event fails, the work never starts. The
    /// object does not hibernate while work is in flight; on shutdown the work is cancelled.
    pub fn spawn(&mut self, work: impl Future<Output = O::Completion> + Send + 'static) {
        self.effects.spawned.push(Box::pin(work));
    }

    /// Broadcasts `event` to the object's subscribers once this event commits.
    pub fn emit(&mut self, event: O::Event) {
        self.effects.events.push(event);
    }

    /// Reads a JSON value from the object's key-value table (as stored before this event:
    /// see [`Ctx::write`]).
    pub fn kv_get<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, Error> {
        let key = user_key(key);
        match self.kv {
            // The snapshot is what a read would see: it was taken after the batch's earlier
            // writes were sent, and this event's own writes are never visible to its reads.
            Some(kv) => storage::kv_value(kv, &key),
            None => storage::kv_get(self.db()?, &key),
        }
    }

    /// Writes a JSON value to the object's key-value table (a queued write, see
    /// [`Ctx::write`]).
    pub fn kv_put<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), Error> {
        let text = serde_json::to_string(value).map_err(Error::corrupt)?;
        self.session.pending.kv(user_key(key), Some(text));
        Ok(())
    }

    /// Deletes a key from the object's key-value table (a queued write).
    pub fn kv_delete(&mut self, key: &str) {
        self.session.pending.kv(user_key(key), None);
    }

    /// Queues `row` for batched writer `writer` (an index into [`Object::writers`]). The row
    /// is serialized as JSON, an array of the writer's columns in order. Queued like
    /// [`Ctx::write`], with the same contract.
    ///
    /// # Errors
    ///
    /// `writer` is out of range or `row` does not serialize; nothing is queued.
    pub fn put(&mut self, writer: usize, row: &impl Serialize) -> Result<(), Error> {
        if writer >= O::writers().len() {
            return Err(Error::Corrupt(format!(
                "{} has no batched writer {writer}",
                O::NAMESPACE
            )));
        }
        self.session.pending.row(writer, row)
    }

    /// Queues a write statement of this event. Bind its parameters with
    /// [`Statement::bind`], in order; use plain `?` placeholders (numbered ones would index
    /// the whole batch's parameter list).
    ///
    /// # Contract
    ///
    /// Queued writes are applied in order with the batch (see `session`): later events see
    /// them, this event's own reads do not. A handler that returns `Err` has its queued writes
    /// dropped; if applying a batch's writes fails, the whole batch fails and nothing of it is
    /// stored.
    pub fn write(&mut self, sql: &str) -> Statement<'_> {
        debug_assert!(
            !sql.contains("?1") && !sql.contains("?2"),
            "queued writes take plain `?` placeholders"
        );
        self.session.pending.push(sql);
        Statement {
            writes: &mut self.session.pending,
        }
    }
}

/// A queued write statement whose parameters are being bound; see [`Ctx::write`].
pub struct Statement<'a> {
    writes: &'a mut Writes,
}

impl Statement<'_> {
    /// Binds the next `?` parameter.
    pub fn bind(self, value: impl Bind) -> Self {
        self.writes.bind(value.into_value());
        self
    }
}

/// Object keys live beside the runtime's own rows; a prefix keeps them apart.
fn user_key(key: &str) -> String {
    format!("u:{key}")
}
