//! Whom `process` runners run as when berth runs as root.
//!
//! A runner is a CI job, which is a stranger's pull request: it must not read berth's data
//! directory, the admin token, the master key, or another runner's environment and files.
//! Running it as berth's own user gives it all of those. When berth runs as root it starts
//! each runner as another user instead:
//!
//! - [`Identity::User`] (`--runner-user`): every runner runs as one unprivileged user, with no
//!   supplementary groups. Runners cannot read berth's files, but they share a user, so one
//!   runner can read another's environment (`/proc/<pid>/environ`) and work directory.
//! - [`Identity::Range`] (`--runner-uids FIRST-LAST`): each runner gets a uid, and a gid of the
//!   same number, of its own from a range the operator reserved for berth. The kernel then
//!   keeps runners apart from berth and from each other: another user's `/proc/<pid>/environ`
//!   is unreadable, and each work directory is `0700` and owned by its runner's uid.
//!
//! # Allocation
//!
//! A range uid is free when no process runs as it and no runner directory's record holds it.
//! The search starts at a point derived from the tenant and lease and walks the range once.
//! Creates that allocate hold [`ALLOCATING`] from reading what is taken until their record
//! (which names the uid) is written, so two creates never pick the same free uid.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

/// Held by a create from choosing a range uid until its record is written.
pub(super) static ALLOCATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whom runners run as (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Every runner runs as this uid and gid.
    User {
        /// The user's uid; never 0.
        uid: u32,
        /// The user's primary gid.
        gid: u32,
    },
    /// Each runner gets a uid (and the gid of the same number) of its own from
    /// `first..=last`.
    Range {
        /// The first uid of the range; above 0.
        first: u32,
        /// The last uid of the range, inclusive.
        last: u32,
    },
}

impl Identity {
    /// Parses `FIRST-LAST` (`--runner-uids`).
    ///
    /// # Errors
    ///
    /// A message for people: not two numbers, a range starting at 0, or backwards.
    pub fn parse_range(text: &str) -> Result<Identity, String> {
        let bad = || format!("`{text}` is not a uid range like 200000-265535");
        let (first, last) = text.trim().split_once('-').ok_or_else(bad)?;
        let first: u32 = first.trim().parse().map_err(|_| bad())?;
        let last: u32 = last.trim().parse().map_err(|_| bad())?;
        if first == 0 || last < first {
            return Err(format!(
                "`{text}`: a runner uid range must start above 0 and not run backwards"
            ));
        }
        Ok(Identity::Range { first, last })
    }

    /// Whether each runner gets a uid of its own (callers then hold [`ALLOCATING`]).
    pub(super) fn is_range(&self) -> bool {
        matches!(self, Identity::Range { .. })
    }

    /// The `(uid, gid)` for a new runner of `tenant`'s lease `lease_id`. `taken` holds the uids
    /// in use (processes and records); `None` when every uid of the range is taken.
    pub(super) fn allocate(
        &self,
        tenant: &str,
        lease_id: &str,
        taken: &BTreeSet<u32>,
    ) -> Option<(u32, u32)> {
        match *self {
            Identity::User { uid, gid } => Some((uid, gid)),
            Identity::Range { first, last } => {
                let size = u64::from(last - first) + 1;
                let digest = Sha256::digest(format!("{tenant}\0{lease_id}"));
                let mut seed = [0u8; 8];
                seed.copy_from_slice(&digest[..8]);
                let start = u64::from_le_bytes(seed) % size;
                (0..size)
                    .map(|step| first + u32::try_from((start + step) % size).unwrap_or(0))
                    .find(|uid| !taken.contains(uid))
                    .map(|uid| (uid, uid))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ranges parse; nonsense, 0 and backwards ranges do not.
    #[test]
    fn parses_ranges() {
        assert_eq!(
            Identity::parse_range("200000-200009"),
            Ok(Identity::Range {
                first: 200_000,
                last: 200_009
            })
        );
        for bad in ["", "5", "a-b", "0-10", "10-5", "-3-4"] {
            assert!(Identity::parse_range(bad).is_err(), "{bad:?}");
        }
    }

    /// Allocations skip taken uids, stay in the range, pair each uid with its own gid, and
    /// give none once the range is exhausted; a user identity is always itself.
    #[test]
    fn range_uids_are_never_shared() {
        let identity = Identity::Range {
            first: 910_000,
            last: 910_003,
        };
        let mut taken = BTreeSet::from([910_001]);
        for n in 0..3 {
            let (uid, gid) = identity
                .allocate("acme", &format!("lease_{n}"), &taken)
                .expect("a free uid");
            assert_eq!(uid, gid);
            assert!(taken.insert(uid), "{uid} given twice");
        }
        assert_eq!(taken, (910_000..=910_003).collect());
        assert!(identity.allocate("acme", "lease_x", &taken).is_none());
        let user = Identity::User { uid: 7, gid: 8 };
        assert_eq!(user.allocate("acme", "l", &taken), Some((7, 8)));
    }
}
