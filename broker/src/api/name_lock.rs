//! One lock per tenant name, for the few routes that check the directory and then write it
//! (creating a tenant, creating a token): two requests for one name take turns, requests for
//! different names never wait for each other.
//!
//! One lock for all names serialised every creation behind every other: in W2's setup of
//! 10,000 tenants at 32 in parallel the queued creates put the setup's p90 at ~400 ms
//! (BENCHMARKS.md, thirteenth session).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// The locks of the names some request holds or waits for; a name nobody wants has no entry.
#[derive(Default)]
pub struct NameLocks {
    names: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while a request works under one name's lock; dropping it lets the next one in.
pub struct NameGuard<'a> {
    guard: Option<OwnedMutexGuard<()>>,
    locks: &'a NameLocks,
    name: String,
}

impl NameLocks {
    /// Waits until no other request holds `name`'s lock, then holds it.
    pub async fn lock(&self, name: &str) -> NameGuard<'_> {
        // Made before the wait: a request dropped while it waits still removes the entry.
        let mut held = NameGuard {
            guard: None,
            locks: self,
            name: name.to_owned(),
        };
        let lock = Arc::clone(self.entries().entry(name.to_owned()).or_default());
        held.guard = Some(lock.lock_owned().await);
        held
    }

    /// How many names have a lock now (held or waited for).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries().len()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        // The map is only ever inserted into and removed from: a panic elsewhere cannot
        // leave it half-changed.
        self.names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for NameGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut names = self.locks.entries();
        // Only the map's own reference left: nobody holds or waits for this name. A waiter
        // clones its reference under the map's lock, so none can appear after this check.
        if names
            .get(&self.name)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            names.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::NameLocks;

    #[tokio::test(start_paused = true)]
    async fn one_name_takes_turns_and_other_names_do_not_wait() {
        let locks = NameLocks::default();
        let held = locks.lock("acme").await;
        // Another name is free at once.
        let other = tokio::time::timeout(Duration::from_secs(1), locks.lock("beta"))
            .await
            .expect("a different name does not wait");
        drop(other);
        // The same name waits while it is held, and gets in once it is released.
        {
            let second = locks.lock("acme");
            tokio::pin!(second);
            assert!(
                tokio::time::timeout(Duration::from_secs(1), &mut second)
                    .await
                    .is_err(),
                "the same name waits while it is held"
            );
            drop(held);
            let turn = tokio::time::timeout(Duration::from_secs(1), &mut second)
                .await
                .expect("the same name gets in once released");
            assert_eq!(locks.len(), 1);
            drop(turn);
        }
        // Nothing is held or waited for: no entry is left behind.
        assert_eq!(locks.len(), 0);
        // Nor by a request given up while it waited.
        let held = locks.lock("acme").await;
        let gave_up = tokio::time::timeout(Duration::from_secs(1), locks.lock("acme")).await;
        assert!(gave_up.is_err());
        drop(held);
        assert_eq!(locks.len(), 0);
    }
}
