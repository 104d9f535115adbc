//! The alarm scheduler: one timer for every object's alarm.
//!
//! The scheduler keeps, in memory, the time at which each object wants to be woken, in a
//! binary heap with lazy deletion (an entry whose time no longer matches the object's current
//! one is skipped when popped). One task sleeps until the earliest entry and then wakes the
//! objects that are due, activating hibernated ones. Waking is only a nudge: the object itself
//! checks its stored alarm against the clock and runs `alarm()` only when it is really due, so
//! a spurious or early wake is harmless and an alarm never fires early.
//!
//! The in-memory entries come from two places: the directory's alarm column at start-up
//! (never later than each object's own alarm), and live objects, which register their stored
//! alarm after every change, after a wake that was not due, and when they hibernate.
//!
//! # Cost
//!
//! `schedule` is O(log n) under a short `std::sync::Mutex`; the heap is rebuilt from the map
//! when stale entries outnumber live ones, so memory stays proportional to pending alarms.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Clock, ObjectId};

type Key = (&'static str, ObjectId);

/// A wake to deliver: where, and to which object.
type Wake = (Arc<dyn Target>, ObjectId);

/// Something that can wake the objects of one namespace.
pub trait Target: Send + Sync + 'static {
    /// Wakes object `id` (activating it if it is hibernated) so it checks its alarm.
    fn wake(self: Arc<Self>, id: ObjectId);
}

/// The scheduler shared by every namespace of a runtime.
pub struct Scheduler {
    state: Mutex<State>,
    changed: Notify,
    clock: Arc<dyn Clock>,
}

#[derive(Default)]
struct State {
    /// The current wake time of every object that has one.
    by_key: HashMap<Key, i64>,
    /// Wake times, earliest first; may hold stale entries (see module docs).
    heap: BinaryHeap<Reverse<(i64, Key)>>,
    /// Where to deliver wakes, by namespace. Weak: a namespace holds the runtime, which holds
    /// the scheduler, and that cycle must not keep everything alive.
    targets: HashMap<&'static str, Weak<dyn Target>>,
    /// Due wakes for namespaces nobody registered yet (alarms loaded from the directory
    /// before the layer above opened its namespace). Delivered on registration.
    parked: Vec<Key>,
}

impl Scheduler {
    pub fn new(clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Scheduler {
            state: Mutex::default(),
            changed: Notify::new(),
            clock,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The maps stay consistent even if a holder panicked: every update is one insert.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets (or with `None`, clears) the wake time of an object.
    pub fn schedule(&self, namespace: &'static str, id: ObjectId, at: Option<i64>) {
        let key = (namespace, id);
        let mut state = self.state();
        match at {
            None => {
                state.by_key.remove(&key);
            }
            Some(at) => {
                if state.by_key.insert(key, at) == Some(at) {
                    return;
                }
                let earliest = state.heap.peek().map(|Reverse((t, _))| *t);
                state.heap.push(Reverse((at, key)));
                if state.heap.len() > 2 * state.by_key.len() + 1024 {
                    state.compact();
                }
                if earliest.is_none_or(|t| at < t) {
                    drop(state);
                    self.changed.notify_one();
                }
            }
        }
    }

    /// The wake time the scheduler holds for an object.
    #[cfg(test)]
    pub(crate) fn scheduled(&self, namespace: &'static str, id: ObjectId) -> Option<i64> {
        self.state().by_key.get(&(namespace, id)).copied()
    }

    /// How many objects have a pending wake.
    pub fn pending(&self) -> usize {
        self.state().by_key.len()
    }

    /// Registers where wakes of `namespace` go, and delivers the ones that waited for it.
    pub fn register(&self, namespace: &'static str, target: Arc<dyn Target>) {
        let mut state = self.state();
        state.targets.insert(namespace, Arc::downgrade(&target));
        let (mine, others): (Vec<Key>, Vec<Key>) = std::mem::take(&mut state.parked)
            .into_iter()
            .partition(|(ns, _)| *ns == namespace);
        state.parked = others;
        drop(state);
        for (_, id) in mine {
            target.clone().wake(id);
        }
    }

    /// Pops every entry due at `now`, returning the wakes to deliver and the next wake time.
    fn take_due(&self, now: i64) -> (Vec<Wake>, Option<i64>) {
        let mut state = self.state();
        let mut due = Vec::new();
        while let Some(Reverse((at, key))) = state.heap.peek().copied() {
            if at > now {
                break;
            }
            state.heap.pop();
            if state.by_key.get(&key) != Some(&at) {
                continue; // stale: the object moved or cleared its wake since
            }
            state.by_key.remove(&key);
            match state.targets.get(key.0).and_then(Weak::upgrade) {
                Some(target) => due.push((target, key.1)),
                None => state.parked.push(key),
            }
        }
        let next = state.heap.peek().map(|Reverse((at, _))| *at);
        (due, next)
    }

    /// Wakes every object due at `now`; returns how many were woken (or parked) and the next
    /// wake time. One turn of [`Scheduler::run`]'s loop.
    pub fn fire_due(&self, now: i64) -> (usize, Option<i64>) {
        let (due, next) = self.take_due(now);
        let n = due.len();
        for (target, id) in due {
            target.wake(id);
        }
        (n, next)
    }

    /// Runs the timer loop until `cancel` fires.
    pub(crate) async fn run(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let (_, next) = self.fire_due(self.clock.now_ms());
            let sleep = match next {
                Some(at) => self.clock.sleep_until(at),
                None => Box::pin(std::future::pending()),
            };
            // Every arm is safe to cancel: the state lives in `self`, not in the futures.
            tokio::select! {
                () = cancel.cancelled() => return,
                () = sleep => {}
                () = self.changed.notified() => {}
            }
        }
    }
}

impl State {
    fn compact(&mut self) {
        self.heap = self
            .by_key
            .iter()
            .map(|(key, at)| Reverse((*at, *key)))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::ManualClock;
    use std::time::Duration;

    struct Recorder(Mutex<Vec<ObjectId>>);
    impl Target for Recorder {
        fn wake(self: Arc<Self>, id: ObjectId) {
            self.0.lock().expect("test lock").push(id);
        }
    }

    /// Wakes arrive in time order, only once due, and moved or cleared entries never fire.
    #[tokio::test]
    async fn wakes_when_due_in_order() {
        let clock = ManualClock::new(0);
        let scheduler = Scheduler::new(Arc::new(clock.clone()));
        let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
        scheduler.register("t", recorder.clone());
        let (a, b, c) = (
            ObjectId::new_unique(),
            ObjectId::new_unique(),
            ObjectId::new_unique(),
        );
        scheduler.schedule("t", a, Some(100));
        scheduler.schedule("t", b, Some(50));
        scheduler.schedule("t", c, Some(70));
        scheduler.schedule("t", c, None);
        scheduler.schedule("t", a, Some(120));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(scheduler.clone().run(cancel.clone()));
        let woken = || recorder.0.lock().expect("test lock").clone();
        clock.set(49);
        tokio::task::yield_now().await;
        assert!(woken().is_empty());
        clock.set(110);
        wait_until(|| woken().len() == 1).await;
        assert_eq!(woken(), vec![b]);
        clock.set(120);
        wait_until(|| woken().len() == 2).await;
        assert_eq!(woken(), vec![b, a]);
        assert_eq!(scheduler.pending(), 0);
        cancel.cancel();
        task.await.expect("scheduler task");
    }

    /// Wakes for a namespace nobody registered yet wait for its registration.
    #[tokio::test]
    async fn parks_wakes_until_registered() {
        let clock = ManualClock::new(1_000);
        let scheduler = Scheduler::new(Arc::new(clock.clone()));
        let id = ObjectId::new_unique();
        scheduler.schedule("later", id, Some(10));
        let (due, _) = scheduler.take_due(1_000);
        assert!(due.is_empty());
        let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
        scheduler.register("later", recorder.clone());
        assert_eq!(*recorder.0.lock().expect("test lock"), vec![id]);
    }

    /// Rescheduling one object many times keeps the heap bounded.
    #[test]
    fn heap_stays_bounded() {
        let scheduler = Scheduler::new(Arc::new(ManualClock::new(0)));
        let id = ObjectId::new_unique();
        for at in 0..100_000 {
            scheduler.schedule("t", id, Some(at));
        }
        assert!(scheduler.state().heap.len() <= 1026);
        assert_eq!(scheduler.scheduled("t", id), Some(99_999));
    }

    async fn wait_until(mut done: impl FnMut() -> bool) {
        for _ in 0..1000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("condition not reached");
    }
}
