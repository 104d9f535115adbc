//! Namespaces, stubs, and the registry of live objects.
//!
//! The registry maps each live object's id to its inbox. It sits behind one
//! `std::sync::Mutex`, never held across an `.await`; everything done under it is O(log n)
//! at most.
//!
//! # One instance per id
//!
//! A caller delivers a message with `try_send` *while holding the registry lock*. An object
//! that wants to hibernate takes the same lock, checks that its inbox is empty and turns its
//! slot into `Closing`. So once a slot is `Closing`, no caller can add to its inbox, and a
//! caller that finds `Closing` waits until the old instance has closed its database before it
//! activates a new one. Two instances of one object therefore never run at once, and a message
//! is never left in the inbox of an instance that is going away.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use futures::future::BoxFuture;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};

use super::closing::Queue;
use super::instance::{Envelope, Instance};
use super::metrics::Metrics;
use super::runtime::Shared;
use super::scheduler::Target;
use super::{CallError, Error, Object, ObjectId};
use super::{sqlite, storage};

/// Capacity of each object's event broadcast; a subscriber that falls further behind gets
/// `Lagged` and should resynchronise from the object's storage.
const EVENT_CAPACITY: usize = 1024;

/// Where a live instance broadcasts its events: empty until someone subscribes. A channel
/// preallocates its whole ring, so objects nobody watches (nearly all of them) get none.
pub(crate) type Events<E> = Arc<OnceLock<broadcast::Sender<E>>>;

/// The objects of one type. Cheap to clone.
pub struct Namespace<O: Object> {
    pub(crate) inner: Arc<NsInner<O>>,
}

impl<O: Object> Clone for Namespace<O> {
    fn clone(&self) -> Self {
        Namespace {
            inner: self.inner.clone(),
        }
    }
}

/// A way to send messages to one object. Cheap to clone; holding one keeps nothing alive.
pub struct Stub<O: Object> {
    ns: Arc<NsInner<O>>,
    id: ObjectId,
    name: Option<Arc<str>>,
}

impl<O: Object> Clone for Stub<O> {
    fn clone(&self) -> Self {
        Stub {
            ns: self.ns.clone(),
            id: self.id,
            name: self.name.clone(),
        }
    }
}

pub(crate) struct NsInner<O: Object> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) env: Arc<O::Env>,
    registry: Mutex<Registry<O>>,
    /// The statements of `O::writers()` (`Writer::statement`), which records are written for.
    pub(crate) writer_statements: Vec<&'static str>,
    /// Their fingerprint (`record::fingerprint`), which names them in the commit journal's
    /// records.
    pub(crate) writers_fingerprint: String,
}

struct Registry<O: Object> {
    slots: HashMap<ObjectId, Slot<O>>,
    /// Live objects by last use, oldest first: `tick → id`.
    lru: BTreeMap<u64, ObjectId>,
    tick: u64,
    generation: u64,
    /// Event channels of the objects someone subscribed to, kept here rather than in the
    /// instance so subscribers stay connected while their object hibernates. Dropped when
    /// the object hibernates with no subscriber left.
    subscribers: HashMap<ObjectId, broadcast::Sender<O::Event>>,
}

enum Slot<O: Object> {
    Live {
        inbox: mpsc::Sender<Envelope<O>>,
        wake: Arc<Notify>,
        events: Events<O::Event>,
        generation: u64,
        tick: u64,
    },
    /// The instance is closing its database; `done` changes (or its sender drops) when it has.
    Closing {
        done: watch::Receiver<bool>,
        generation: u64,
    },
}

impl<O: Object> Namespace<O> {
    /// The deterministic id of the object called `name`.
    pub fn id_from_name(&self, name: &str) -> ObjectId {
        ObjectId::from_name(O::NAMESPACE, name)
    }

    /// A fresh random id.
    pub fn new_unique_id(&self) -> ObjectId {
        ObjectId::new_unique()
    }

    /// A stub for the object called `name`. The object stores its name on first activation.
    pub fn get_by_name(&self, name: &str) -> Stub<O> {
        Stub {
            ns: self.inner.clone(),
            id: self.id_from_name(name),
            name: Some(name.into()),
        }
    }

    /// A stub for the object with id `id`.
    pub fn get(&self, id: ObjectId) -> Stub<O> {
        Stub {
            ns: self.inner.clone(),
            id,
            name: None,
        }
    }

    /// Subscribes to the events of object `id`. The subscription survives the object's
    /// hibernation and reactivation; it does not activate the object.
    pub fn subscribe(&self, id: ObjectId) -> broadcast::Receiver<O::Event> {
        let mut registry = self.inner.registry();
        let Registry {
            subscribers, slots, ..
        } = &mut *registry;
        // Channels nobody listens to and whose object is gone are dropped here, so a stream
        // of short-lived subscriptions does not grow the map.
        subscribers.retain(|id, tx| tx.receiver_count() > 0 || slots.contains_key(id));
        let tx = subscribers
            .entry(id)
            .or_insert_with(|| broadcast::channel(EVENT_CAPACITY).0);
        if let Some(Slot::Live { events, .. }) = slots.get(&id) {
            // Already set if the instance started after an earlier subscription.
            let _ = events.set(tx.clone());
        }
        tx.subscribe()
    }

    /// How many event channels exist: one per object someone subscribed to, kept while the
    /// object is live or a subscriber remains.
    pub fn event_channels(&self) -> usize {
        self.inner.registry().subscribers.len()
    }

    /// How many objects of this namespace are live.
    pub fn live_count(&self) -> usize {
        self.inner.registry().slots.len()
    }

    /// How many messages wait in the inbox of object `id` (0 if it is not live).
    pub fn queued(&self, id: ObjectId) -> usize {
        match self.inner.registry().slots.get(&id) {
            Some(Slot::Live { inbox, .. }) => inbox.max_capacity() - inbox.capacity(),
            _ => 0,
        }
    }

    /// Whether object `id` is live (its task is running and its database open).
    pub fn is_live(&self, id: ObjectId) -> bool {
        self.inner.registry().slots.contains_key(&id)
    }

    /// The namespace's environment.
    pub fn env(&self) -> &Arc<O::Env> {
        &self.inner.env
    }
}

impl<O: Object> Stub<O> {
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// Sends `request` to the object, activating it if needed, and waits for the reply. The
    /// reply leaves the object only after the writes of its event are committed.
    ///
    /// # Errors
    ///
    /// [`CallError::Overloaded`] at once when the object's inbox is full;
    /// [`CallError::ShuttingDown`] when the runtime stops before the event ran;
    /// [`CallError::Storage`] or [`CallError::Failed`] when the event or its commit failed
    /// (its writes are rolled back).
    pub async fn call(&self, request: O::Request) -> Result<O::Reply, CallError> {
        let (reply, answer) = oneshot::channel();
        self.ns
            .deliver(
                self.id,
                self.name.as_ref(),
                Envelope::Call {
                    request,
                    reply,
                    span: tracing::Span::current(),
                },
            )
            .await?;
        answer.await.unwrap_or(Err(CallError::ShuttingDown))
    }
}

impl<O: Object> Stub<O> {
    /// Sends a typed message and awaits its reply (see [`super::message`]): the reply's type
    /// is the message's, checked when compiling.
    ///
    /// # Errors
    ///
    /// As [`Stub::call`].
    pub async fn ask<M>(&self, message: M) -> Result<M::Reply, CallError>
    where
        M: super::Message,
        O: super::Handler<M>,
    {
        let answer = self.call(super::Call::new(message)).await?;
        Ok(answer.take::<M::Reply>())
    }
}

impl<O: Object> NsInner<O> {
    pub(crate) fn new(shared: Arc<Shared>, env: Arc<O::Env>) -> Self {
        let writer_statements = super::writer::statements(O::writers());
        NsInner {
            shared,
            env,
            writers_fingerprint: super::record::fingerprint(&writer_statements),
            writer_statements,
            registry: Mutex::new(Registry {
                slots: HashMap::new(),
                lru: BTreeMap::new(),
                tick: 0,
                generation: 0,
                subscribers: HashMap::new(),
            }),
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry<O>> {
        // Every critical section leaves the maps consistent between statements that could
        // panic, so a poisoned lock is still safe to use.
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Delivers `envelope` to object `id`, activating it if needed.
    async fn deliver(
        self: &Arc<Self>,
        id: ObjectId,
        name: Option<&Arc<str>>,
        mut envelope: Envelope<O>,
    ) -> Result<(), CallError> {
        loop {
            if self.shared.cancel.is_cancelled() {
                return Err(CallError::ShuttingDown);
            }
            let mut done = {
                let mut registry = self.registry();
                if !registry.slots.contains_key(&id) {
                    self.activate(&mut registry, id, name.map(|n| n.to_string()));
                }
                match registry.slots.get(&id) {
                    Some(Slot::Live { inbox, .. }) => match inbox.try_send(envelope) {
                        Ok(()) => {
                            registry.touch(id);
                            return Ok(());
                        }
                        Err(TrySendError::Full(_)) => return Err(CallError::Overloaded),
                        Err(TrySendError::Closed(returned)) => {
                            // The instance's task ended without closing its slot (it
                            // panicked). Forget it; the next turn activates a new one.
                            tracing::error!(namespace = O::NAMESPACE, %id, "object task died; reactivating");
                            envelope = returned;
                            registry.remove(id);
                            continue;
                        }
                    },
                    Some(Slot::Closing { done, .. }) => done.clone(),
                    None => return Err(CallError::ShuttingDown),
                }
            };
            // Wait outside the lock for the old instance to close its files.
            let _ = done.wait_for(|closed| *closed).await;
        }
    }

    /// Starts a new instance of `id` and puts it in the registry. Called under the lock.
    fn activate(self: &Arc<Self>, registry: &mut Registry<O>, id: ObjectId, name: Option<String>) {
        let options = &self.shared.options;
        let (inbox, rx) = mpsc::channel(options.inbox_capacity.max(1));
        let wake = Arc::new(Notify::new());
        registry.generation += 1;
        let generation = registry.generation;
        let events = Events::default();
        if let Some(tx) = registry.subscribers.get(&id) {
            let _ = events.set(tx.clone());
        }
        let instance = Instance::new(
            self.clone(),
            id,
            name,
            generation,
            rx,
            inbox.clone(),
            wake.clone(),
            events.clone(),
        );
        self.shared.tracker.spawn(instance.run());
        registry.slots.insert(
            id,
            Slot::Live {
                inbox,
                wake,
                events,
                generation,
                tick: 0,
            },
        );
        registry.touch(id);
        self.shared
            .metrics
            .live_objects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Metrics::add(&self.shared.metrics.activations, 1);
    }

    /// Asks the least recently used live object (other than `keep`) to hibernate, because an
    /// activation is waiting for an open-object permit.
    pub(crate) fn evict_lru(&self, keep: ObjectId) {
        let mut registry = self.registry();
        let victim = registry.lru.values().copied().find(|id| *id != keep);
        if let Some(victim) = victim {
            if let Some(Slot::Live { inbox, .. }) = registry.slots.get(&victim) {
                // A full inbox means the object is busy; another one is asked next time.
                let _ = inbox.try_send(Envelope::Evict);
                Metrics::add(&self.shared.metrics.evictions, 1);
            }
            // Move it to the young end so the next request asks someone else.
            registry.touch(victim);
        }
    }

    /// Called by an instance that wants to hibernate. Under the lock: if its inbox is empty,
    /// its slot becomes `Closing` and the returned sender must be dropped (or set) once its
    /// files are closed. Returns `None` if messages are waiting.
    pub(crate) fn begin_close(
        &self,
        id: ObjectId,
        generation: u64,
        inbox_empty: impl FnOnce() -> bool,
    ) -> Option<watch::Sender<bool>> {
        let mut registry = self.registry();
        match registry.slots.get(&id) {
            Some(Slot::Live { generation: g, .. }) if *g == generation => {}
            _ => return None,
        }
        if !inbox_empty() {
            return None;
        }
        let (done_tx, done_rx) = watch::channel(false);
        registry.remove_lru(id);
        registry.slots.insert(
            id,
            Slot::Closing {
                done: done_rx,
                generation,
            },
        );
        Some(done_tx)
    }

    /// Called by an instance whose files are closed: removes its slot and wakes callers
    /// waiting to activate it again.
    pub(crate) fn end_close(
        &self,
        id: ObjectId,
        generation: u64,
        done: Option<watch::Sender<bool>>,
    ) {
        let mut registry = self.registry();
        let ours = match registry.slots.get(&id) {
            Some(Slot::Closing { generation: g, .. }) | Some(Slot::Live { generation: g, .. }) => {
                *g == generation
            }
            None => false,
        };
        if ours {
            registry.remove(id);
        }
        if registry
            .subscribers
            .get(&id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            registry.subscribers.remove(&id);
        }
        drop(registry);
        self.shared
            .metrics
            .live_objects
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(done) = done {
            let _ = done.send(true);
        }
    }
}

/// The generation of a slot pinned by [`NsInner::pin`]: instances count from 1.
const PINNED: u64 = 0;

/// What [`NsInner::hold`] found.
enum Held<T> {
    /// The object was closed and is pinned now; unpin with this.
    Closed(watch::Sender<bool>),
    /// The object was live, and the live step finished with this.
    Live(T),
}

/// Reads the files of one namespace's objects, whatever state the objects are in; what a
/// backup needs from a namespace it knows only by name.
pub(crate) trait ObjectFiles: Send + Sync + 'static {
    /// [`NsInner::copy_file`].
    fn copy_file<'a>(
        self: Arc<Self>,
        id: ObjectId,
        to: &'a Path,
        within: std::time::Duration,
    ) -> BoxFuture<'a, Result<bool, Error>>;
}

impl<O: Object> ObjectFiles for NsInner<O> {
    fn copy_file<'a>(
        self: Arc<Self>,
        id: ObjectId,
        to: &'a Path,
        within: std::time::Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move { NsInner::copy_file(&self, id, to, within).await })
    }
}

impl<O: Object> NsInner<O> {
    /// Closes object `id` (asking a live instance to hibernate, and waiting for one that is
    /// closing) and keeps it closed: its slot stays `Closing`, so callers and alarm wakes wait,
    /// until [`NsInner::unpin`]. For replacing an object's file (`backup::replace`).
    ///
    /// # Errors
    ///
    /// `Overloaded` if the object did not close within `within`; `ShuttingDown`.
    pub(crate) async fn pin(
        &self,
        id: ObjectId,
        within: std::time::Duration,
    ) -> Result<watch::Sender<bool>, CallError> {
        let deadline = tokio::time::Instant::now() + within;
        let held = self
            .hold(id, deadline, |inbox| {
                // A full inbox: the object is busy; ask again shortly.
                let _ = inbox.try_send(Envelope::Evict);
                None::<std::convert::Infallible>
            })
            .await?;
        match held {
            Held::Closed(pin) => Ok(pin),
            Held::Live(never) => match never {},
        }
    }

    /// Pins object `id` if it is closed ([`Held::Closed`], as [`NsInner::pin`]); if it is
    /// live, `live` runs on its inbox under the registry lock, and the hold ends when it
    /// returns `Some` ([`Held::Live`]); `None` tries again shortly. Waits for an instance that
    /// is closing.
    async fn hold<T>(
        &self,
        id: ObjectId,
        deadline: tokio::time::Instant,
        mut live: impl FnMut(&mpsc::Sender<Envelope<O>>) -> Option<T>,
    ) -> Result<Held<T>, CallError> {
        loop {
            if self.shared.cancel.is_cancelled() {
                return Err(CallError::ShuttingDown);
            }
            let closing = {
                let mut registry = self.registry();
                match registry.slots.get(&id) {
                    None => {
                        let (done_tx, done_rx) = watch::channel(false);
                        registry.slots.insert(
                            id,
                            Slot::Closing {
                                done: done_rx,
                                generation: PINNED,
                            },
                        );
                        return Ok(Held::Closed(done_tx));
                    }
                    Some(Slot::Live { inbox, .. }) => match live(inbox) {
                        Some(done) => return Ok(Held::Live(done)),
                        None => None,
                    },
                    Some(Slot::Closing { done, .. }) => Some(done.clone()),
                }
            };
            let wait = async {
                match closing {
                    Some(mut done) => {
                        let _ = done.wait_for(|closed| *closed).await;
                    }
                    None => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                }
            };
            if tokio::time::timeout_at(deadline, wait).await.is_err()
                || tokio::time::Instant::now() >= deadline
            {
                return Err(CallError::Overloaded);
            }
        }
    }

    /// Writes the committed state of object `id`'s database to `to` (`VACUUM INTO`; not
    /// synced), without opening its file beside its own connection (`storage::Access::Sole`):
    /// a live object copies itself between two batches, on its connection; a closed one is
    /// pinned for the copy (a parked connection of the warm tier does it, and is closed
    /// after), so an activation waits meanwhile. `false` if the object has no database.
    ///
    /// # Errors
    ///
    /// The object stayed busy past `within` (a live one may still write the copy later), the
    /// runtime shuts down, or the copy failed.
    pub(crate) async fn copy_file(
        &self,
        id: ObjectId,
        to: &Path,
        within: std::time::Duration,
    ) -> Result<bool, Error> {
        let deadline = tokio::time::Instant::now() + within;
        let failed = |err: CallError| Error::Other(anyhow::anyhow!("copying an object: {err}"));
        loop {
            let (reply, copied) = oneshot::channel();
            let mut ask = Some(Envelope::Copy {
                to: to.to_owned(),
                reply,
            });
            let held = self
                .hold(id, deadline, |inbox| {
                    let envelope = ask.take()?;
                    match inbox.try_send(envelope) {
                        Ok(()) => Some(()),
                        Err(TrySendError::Full(envelope) | TrySendError::Closed(envelope)) => {
                            ask = Some(envelope);
                            None
                        }
                    }
                })
                .await
                .map_err(failed)?;
            match held {
                Held::Live(()) => match tokio::time::timeout_at(deadline, copied).await {
                    Ok(Ok(result)) => return result.map(|()| true),
                    // The instance went away before it came to the copy (shutdown, or
                    // cluster ownership lost): look again.
                    Ok(Err(_)) => continue,
                    Err(_) => return Err(failed(CallError::Overloaded)),
                },
                Held::Closed(pin) => {
                    let result = self.copy_closed(id, to).await;
                    self.unpin(id, pin);
                    return result;
                }
            }
        }
    }

    /// [`NsInner::copy_file`] of an object the caller holds closed.
    async fn copy_closed(&self, id: ObjectId, to: &Path) -> Result<bool, Error> {
        let path = self.shared.object_path(O::NAMESPACE, id);
        if let Some(mut parked) = self.shared.warm.take(&path).await {
            let copied =
                sqlite::blocking(|| storage::vacuum_into(&mut parked.conn, &parked.gate, to));
            parked.close(&self.shared.closer, Queue::Now).await;
            Metrics::add(&self.shared.metrics.parked_closes, 1);
            return copied.map(|()| true);
        }
        if !tokio::fs::try_exists(&path).await? {
            return Ok(false);
        }
        storage::vacuum_closed(&path, to).await.map(|()| true)
    }

    /// Ends a [`NsInner::pin`]: the slot goes, and waiting callers activate the object anew.
    pub(crate) fn unpin(&self, id: ObjectId, done: watch::Sender<bool>) {
        let mut registry = self.registry();
        if matches!(
            registry.slots.get(&id),
            Some(Slot::Closing {
                generation: PINNED,
                ..
            })
        ) {
            registry.slots.remove(&id);
        }
        drop(registry);
        let _ = done.send(true);
    }
}

impl<O: Object> Target for NsInner<O> {
    fn wake(self: Arc<Self>, id: ObjectId) {
        if self.notify_live(id) {
            return;
        }
        // Hibernated or closing: activate it. The object checks its alarm when it opens.
        let tracker = self.shared.tracker.clone();
        tracker.spawn(async move {
            match self.deliver(id, None, Envelope::Wake).await {
                // The object became live and busy in between: nudge the live instance.
                Err(CallError::Overloaded) => {
                    self.notify_live(id);
                }
                Err(err) => {
                    tracing::debug!(namespace = O::NAMESPACE, %id, %err, "alarm wake not delivered")
                }
                Ok(()) => {}
            }
        });
    }
}

impl<O: Object> NsInner<O> {
    /// Nudges a live instance to look at its alarm; `false` if the object is not live.
    fn notify_live(&self, id: ObjectId) -> bool {
        match self.registry().slots.get(&id) {
            Some(Slot::Live { wake, .. }) => {
                wake.notify_one();
                true
            }
            _ => false,
        }
    }
}

impl<O: Object> Registry<O> {
    fn touch(&mut self, id: ObjectId) {
        self.tick += 1;
        let now = self.tick;
        if let Some(Slot::Live { tick, .. }) = self.slots.get_mut(&id) {
            let old = std::mem::replace(tick, now);
            self.lru.remove(&old);
            self.lru.insert(now, id);
        }
    }

    fn remove_lru(&mut self, id: ObjectId) {
        if let Some(Slot::Live { tick, .. }) = self.slots.get(&id) {
            let tick = *tick;
            self.lru.remove(&tick);
        }
    }

    fn remove(&mut self, id: ObjectId) {
        self.remove_lru(id);
        self.slots.remove(&id);
        if self
            .subscribers
            .get(&id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            self.subscribers.remove(&id);
        }
    }
}
