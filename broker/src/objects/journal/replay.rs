//! Replay at start: every journal record an object file lacks is applied to it before the
//! runtime serves, whatever durability the runtime now runs with.
//!
//! A record brings its object's file from position `seq - 1` to `seq` (`berth.seq` in
//! `_berth_kv`, written in the same transaction). A file at or past a record's position
//! already holds it (after a process crash that is every record: the page cache kept the
//! files), so replay applies only the tail a power loss took, in order, each record as its own
//! transaction — a replay cut short by another crash picks up where it stopped. A record that
//! does not follow its file's position means the journal lost something it had acknowledged:
//! the start fails rather than serve a state with a hole in it.
//!
//! Replay opens object files without migrating them: a record is applied with the writer
//! statements the journal stored beside it, to the schema it was written against.

use std::collections::HashMap;
use std::path::Path;

use super::super::record::{self, Record, SEQ_KEY};
use super::super::runtime::object_path;
use super::super::sqlite::Db;
use super::super::storage::{self, Access, Durability};
use super::super::{Error, ObjectId};
use super::{DIR, Frame, frames, remove_before, segments};

/// The name of the failpoint reached after each record replay applies (tests: a crash in the
/// middle of a replay).
pub const APPLIED_FAILPOINT: &str = "journal.replay.applied";

/// What replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Replayed {
    /// The number of the last segment found (0: none); a new journal starts after it.
    pub(crate) last_segment: u64,
    /// Records found, and those of them applied.
    pub(crate) records: u64,
    pub(crate) applied: u64,
}

/// One object's records, in journal order.
type Pending = Vec<(i64, Vec<u8>)>;

/// Applies the journal in `data_dir` to the object files it names, then makes them durable
/// and deletes the journal. Blocking: call it from tokio's blocking pool.
///
/// # Errors
///
/// A segment cannot be read, a record does not decode or does not follow its file's
/// position, or a file cannot be written.
pub(crate) fn replay(data_dir: &Path) -> Result<Replayed, Error> {
    let dir = data_dir.join(DIR);
    let found = segments(&dir)?;
    let Some(&(last_segment, _)) = found.last() else {
        return Ok(Replayed::default());
    };
    let mut writer_sets: HashMap<String, Vec<String>> = HashMap::new();
    let mut objects: HashMap<(String, [u8; 32]), Pending> = HashMap::new();
    let mut order: Vec<(String, [u8; 32])> = Vec::new();
    let mut records = 0;
    for (_, path) in &found {
        let bytes = std::fs::read(path)?;
        for frame in frames(&bytes) {
            match frame? {
                Frame::Writers {
                    fingerprint,
                    statements,
                } => {
                    writer_sets.insert(fingerprint, statements);
                }
                Frame::Record {
                    namespace,
                    id,
                    seq,
                    record,
                } => {
                    records += 1;
                    let key = (namespace, id);
                    let pending = objects.entry(key.clone()).or_insert_with(|| {
                        order.push(key);
                        Vec::new()
                    });
                    pending.push((seq, record));
                }
            }
        }
    }
    let mut applied = 0;
    for key in order {
        let pending = objects.remove(&key).unwrap_or_default();
        let (namespace, id) = key;
        let path = object_path(data_dir, &namespace, ObjectId::from_bytes(id));
        applied += replay_object(&path, &pending, &writer_sets)?;
    }
    // Every replayed file was checkpointed (and synced) as it closed; the rest of what the
    // journal covers is in files a crash left in the page cache: one flush for all of it.
    super::super::barrier::syncfs(&std::fs::File::open(data_dir)?)?;
    remove_before(&dir, last_segment + 1)?;
    if applied > 0 {
        tracing::warn!(
            records,
            applied,
            "replayed commits the object files had lost from the journal"
        );
    }
    Ok(Replayed {
        last_segment,
        records,
        applied,
    })
}

/// Applies to the file at `path` the records of `pending` past its position; returns how many.
fn replay_object(
    path: &Path,
    pending: &Pending,
    writer_sets: &HashMap<String, Vec<String>>,
) -> Result<u64, Error> {
    if !path.exists() {
        // Under the journal a file's creation is durable before its first record, so a
        // missing file was deleted on purpose (its object was removed).
        tracing::info!(path = %path.display(), "the journal names an object file that no longer exists; skipped");
        return Ok(0);
    }
    let mut db = storage::open_db(path, Durability::Normal, Access::Sole, false)?;
    let result = apply_pending(&mut db, path, pending, writer_sets);
    let closed = db.close();
    let applied = result?;
    closed?;
    Ok(applied)
}

fn apply_pending(
    db: &mut Db,
    path: &Path,
    pending: &Pending,
    writer_sets: &HashMap<String, Vec<String>>,
) -> Result<u64, Error> {
    let stored: Option<(String,)> = db
        .query("SELECT value FROM _berth_kv WHERE key = ?1")
        .bind(SEQ_KEY)
        .fetch_optional()?;
    let mut position: i64 = match stored {
        Some((value,)) => value
            .parse()
            .map_err(|_| Error::Corrupt(format!("{}: {SEQ_KEY} is {value:?}", path.display())))?,
        None => 0,
    };
    let mut applied = 0;
    for (seq, bytes) in pending {
        if *seq <= position {
            continue;
        }
        if *seq != position + 1 {
            return Err(Error::Corrupt(format!(
                "{}: the journal's next record is position {seq}, the file holds {position}",
                path.display()
            )));
        }
        let record = Record::decode(bytes)?;
        let statements = writer_sets.get(&record.writers).ok_or_else(|| {
            Error::Corrupt(format!(
                "{}: the journal has no writer statements {}",
                path.display(),
                record.writers
            ))
        })?;
        let writers: Vec<&str> = statements.iter().map(String::as_str).collect();
        record::apply(db, &writers, &record, *seq)?;
        crate::failpoint::hit(APPLIED_FAILPOINT);
        position = *seq;
        applied += 1;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::super::Journal;
    use super::*;
    use crate::objects::Metrics;
    use crate::objects::schema;
    use crate::objects::session::Writes;

    fn object(data: &Path, id: ObjectId) -> PathBuf {
        let path = object_path(data, "ns", id);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
        let mut db = storage::open_db(&path, Durability::Full, Access::Sole, true).expect("open");
        schema::bootstrap(&mut db).expect("bootstrap");
        db.close().expect("close");
        path
    }

    /// A record that writes `key = seq` in the object's key-value table.
    fn record(seq: i64) -> Vec<u8> {
        let mut writes = Writes::default();
        writes.kv("k".to_owned(), Some(seq.to_string()));
        Record {
            writers: record::fingerprint(&[]),
            chunks: vec![writes],
        }
        .encode()
        .expect("encode")
    }

    fn kv(path: &Path, key: &str) -> Option<String> {
        let mut db = storage::open_db(path, Durability::Full, Access::Sole, false).expect("open");
        let value: Option<(String,)> = db
            .query("SELECT value FROM _berth_kv WHERE key = ?1")
            .bind(key)
            .fetch_optional()
            .expect("read");
        db.close().expect("close");
        value.map(|(value,)| value)
    }

    async fn journal(data: &Path, id: ObjectId, seqs: &[i64]) {
        let journal = Journal::start(data, 0, Arc::new(Metrics::default())).expect("journal");
        let fingerprint = record::fingerprint(&[]);
        let mut at = 0;
        for &seq in seqs {
            at = journal
                .append("ns", id, seq, &fingerprint, &[], &record(seq))
                .expect("append");
        }
        journal.wait(at).await;
    }

    /// Replay applies the records past the file's position, in order, skips those it holds,
    /// and deletes the journal; a second replay finds nothing to do.
    #[tokio::test]
    async fn replay_applies_what_the_file_lacks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = ObjectId::from_name("ns", "a");
        let path = object(dir.path(), id);
        journal(dir.path(), id, &[1, 2, 3]).await;
        let done = replay(dir.path()).expect("replay");
        assert_eq!((done.records, done.applied), (3, 3));
        assert_eq!(kv(&path, SEQ_KEY).as_deref(), Some("3"));
        assert_eq!(kv(&path, "k").as_deref(), Some("3"));
        assert!(
            segments(&dir.path().join(DIR))
                .expect("segments")
                .is_empty()
        );

        journal(dir.path(), id, &[2, 3, 4]).await;
        let done = replay(dir.path()).expect("replay");
        assert_eq!(
            (done.records, done.applied),
            (3, 1),
            "only position 4 is new"
        );
        assert_eq!(kv(&path, "k").as_deref(), Some("4"));
        assert_eq!(replay(dir.path()).expect("replay"), Replayed::default());
    }

    /// A record that does not follow the file's position (the journal lost one) stops the
    /// start instead of serving a state with a hole in it, and the journal stays.
    #[tokio::test]
    async fn a_hole_before_a_record_fails_the_replay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = ObjectId::from_name("ns", "a");
        let path = object(dir.path(), id);
        journal(dir.path(), id, &[2]).await;
        let err = replay(dir.path()).expect_err("a hole");
        assert!(err.to_string().contains("position 2"), "{err}");
        assert_eq!(kv(&path, "k"), None);
        assert!(
            !segments(&dir.path().join(DIR))
                .expect("segments")
                .is_empty()
        );
    }
}
