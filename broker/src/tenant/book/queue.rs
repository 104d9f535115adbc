//! The queue's order statistic: the position of a queued lease in O(log n).
//!
//! The queue is FIFO by lease id (ids sort by creation time). Counting the queued leases
//! ahead of one by walking the open leases cost O(n) per lease and O(n²) to list a long
//! queue. Here every queued id holds a *ticket*, and tickets increase with the ids; a Fenwick
//! tree over the tickets counts the queued ones, so a position is a prefix sum.
//!
//! # How tickets stay in id order
//!
//! - A new lease id is (almost always) larger than every id seen: it gets the next ticket.
//! - A lease taken out of the queue keeps its ticket as a tombstone (its count drops to 0),
//!   so putting it back — the book takes and puts a lease at every change — reuses the
//!   ticket.
//! - An id that sorts before the last ticketed one without a ticket of its own (a clock that
//!   went back, a tombstone already dropped) rebuilds the tickets from the sorted live ids:
//!   O(n log n), rare.
//! - When tombstones outnumber live tickets (plus a constant), the tickets are rebuilt
//!   without them, so memory stays O(live) and rebuilds cost O(1) amortized per removal.
//!
//! # Example
//!
//! ```text
//! insert a, b, c          tickets a:0 b:1 c:2   counts 1 1 1   position(c) = 3
//! remove b                tickets a:0 b:1 c:2   counts 1 0 1   position(c) = 2
//! insert b (taken back)   reuses ticket 1       counts 1 1 1   position(c) = 3
//! ```

use std::collections::HashMap;

/// Tombstones tolerated beyond the live tickets before a rebuild.
const SLACK: usize = 64;

/// The queued lease ids, with their positions in O(log n).
#[derive(Debug, Default)]
pub(super) struct QueueIndex {
    /// The ticket of every id that holds one (queued, or a tombstone).
    ticket: HashMap<String, usize>,
    /// By ticket: the id and whether it is queued now. Ids strictly increase with the ticket.
    ids: Vec<(String, bool)>,
    /// Fenwick tree over the tickets: 1 for a queued id, 0 for a tombstone.
    tree: Fenwick,
    /// Queued ids.
    live: usize,
}

impl QueueIndex {
    /// Adds a queued id. Adding an id that is already queued changes nothing.
    pub(super) fn insert(&mut self, id: &str) {
        if let Some(&ticket) = self.ticket.get(id) {
            if !self.ids[ticket].1 {
                self.ids[ticket].1 = true;
                self.tree.add(ticket, 1);
                self.live += 1;
            }
            return;
        }
        if self.ids.last().is_none_or(|(last, _)| id > last.as_str()) {
            self.ticket.insert(id.to_owned(), self.ids.len());
            self.ids.push((id.to_owned(), true));
            self.tree.push(1);
            self.live += 1;
        } else {
            self.rebuild(Some(id));
        }
    }

    /// Removes an id from the queue (nothing if it is not queued).
    pub(super) fn remove(&mut self, id: &str) {
        let Some(&ticket) = self.ticket.get(id) else {
            return;
        };
        if !self.ids[ticket].1 {
            return;
        }
        self.ids[ticket].1 = false;
        self.tree.add(ticket, -1);
        self.live -= 1;
        if self.ids.len() > 2 * self.live + SLACK {
            self.rebuild(None);
        }
    }

    /// The 1-based position of a queued id: how many queued ids are ≤ it.
    pub(super) fn position(&self, id: &str) -> Option<usize> {
        let &ticket = self.ticket.get(id)?;
        if !self.ids[ticket].1 {
            return None;
        }
        usize::try_from(self.tree.prefix(ticket + 1)).ok()
    }

    /// Queued ids.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.live
    }

    /// New tickets for the queued ids (and `extra`, which is not queued yet), in id order,
    /// dropping every tombstone. O(n) plus the insertion of `extra`.
    fn rebuild(&mut self, extra: Option<&str>) {
        let mut ids: Vec<String> = std::mem::take(&mut self.ids)
            .into_iter()
            .filter_map(|(id, queued)| queued.then_some(id))
            .collect();
        if let Some(extra) = extra
            && let Err(at) = ids.binary_search_by(|id| id.as_str().cmp(extra))
        {
            ids.insert(at, extra.to_owned());
        }
        self.live = ids.len();
        self.ticket = ids
            .iter()
            .enumerate()
            .map(|(ticket, id)| (id.clone(), ticket))
            .collect();
        self.tree = Fenwick::ones(ids.len());
        self.ids = ids.into_iter().map(|id| (id, true)).collect();
    }
}

/// A Fenwick (binary indexed) tree of counts that grows at its end.
#[derive(Debug, Default)]
struct Fenwick {
    /// `tree[i - 1]` holds the sum of the counts in `(i - lowbit(i), i]` (1-based).
    tree: Vec<i64>,
}

/// The lowest set bit of `i`.
fn lowbit(i: usize) -> usize {
    i & i.wrapping_neg()
}

impl Fenwick {
    /// `n` counts of 1, built in O(n).
    fn ones(n: usize) -> Fenwick {
        let mut tree = vec![1_i64; n];
        for i in 1..=n {
            let parent = i + lowbit(i);
            if parent <= n {
                tree[parent - 1] += tree[i - 1];
            }
        }
        Fenwick { tree }
    }

    /// Appends a count, in O(log n): the new node covers `(i - lowbit(i), i]`, whose earlier
    /// part is a difference of two prefix sums.
    fn push(&mut self, count: i64) {
        let i = self.tree.len() + 1;
        let covered = self.prefix(i - 1) - self.prefix(i - lowbit(i));
        self.tree.push(count + covered);
    }

    /// Adds `delta` to the count at 0-based `index`.
    fn add(&mut self, index: usize, delta: i64) {
        let mut i = index + 1;
        while i <= self.tree.len() {
            self.tree[i - 1] += delta;
            i += lowbit(i);
        }
    }

    /// The sum of the first `n` counts.
    fn prefix(&self, n: usize) -> i64 {
        let mut i = n.min(self.tree.len());
        let mut sum = 0;
        while i > 0 {
            sum += self.tree[i - 1];
            i -= lowbit(i);
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// The worked example of the module docs, and a clock that went back.
    #[test]
    fn positions_follow_id_order() {
        let mut queue = QueueIndex::default();
        for id in ["a", "b", "c"] {
            queue.insert(id);
        }
        assert_eq!(queue.position("c"), Some(3));
        queue.remove("b");
        assert_eq!((queue.position("b"), queue.position("c")), (None, Some(2)));
        queue.insert("b");
        assert_eq!(queue.position("c"), Some(3));
        // An id older than every ticket (made before a clock step back) goes in front.
        queue.insert("0");
        assert_eq!(
            ["0", "a", "b", "c"].map(|id| queue.position(id)),
            [Some(1), Some(2), Some(3), Some(4)]
        );
        assert_eq!(queue.len(), 4);
    }

    /// Many leases passing through a short queue keep memory bounded by the live ones.
    #[test]
    fn tombstones_are_dropped() {
        let mut queue = QueueIndex::default();
        for n in 0..10_000 {
            let id = format!("lease_{n:08}");
            queue.insert(&id);
            if n >= 3 {
                queue.remove(&format!("lease_{:08}", n - 3));
            }
        }
        assert_eq!(queue.len(), 3);
        assert!(queue.ids.len() <= 2 * 3 + SLACK + 1, "{}", queue.ids.len());
        assert_eq!(queue.position("lease_00009999"), Some(3));
    }

    proptest! {
        /// After any sequence of inserts and removes (ids in any order, repeated, removed
        /// twice), every position equals the naive count of queued ids up to it.
        #[test]
        fn positions_match_the_naive_count(
            ops in proptest::collection::vec((any::<bool>(), 0_u16..300), 0..600)
        ) {
            let mut queue = QueueIndex::default();
            let mut naive = BTreeSet::new();
            for (insert, n) in ops {
                let id = format!("lease_{n:05}");
                if insert {
                    queue.insert(&id);
                    naive.insert(id);
                } else {
                    queue.remove(&id);
                    naive.remove(&id);
                }
            }
            prop_assert_eq!(queue.len(), naive.len());
            for n in 0_u16..300 {
                let id = format!("lease_{n:05}");
                let expected = naive.contains(&id).then(|| naive.range(..=id.clone()).count());
                prop_assert_eq!(queue.position(&id), expected, "{}", id);
            }
        }
    }
}
