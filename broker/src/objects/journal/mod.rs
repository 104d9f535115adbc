//! The shared commit journal of `--durability log`: one append-only file that every object's
//! batches join, so that one `fdatasync` makes the commits of every object ready at that
//! moment durable.
//!
//! With one SQLite file per object, `synchronous=FULL` costs an fsync per commit and no two
//! objects ever share one. Under this mode object files run with `synchronous=OFF` and
//! ordered checkpoints (`sqlite/wal.rs`: a commit reaches the WAL in the page cache, so it
//! survives a process crash, and the file stays consistent after a power loss, perhaps
//! without its last commits), and durability comes from here:
//!
//! 1. A batch commits in SQLite first, writing the object's log position (`berth.seq`, one
//!    more per commit) in the same transaction.
//! 2. Its record (`record.rs`: the very chunks the batch sent, replayable with the same
//!    statements) is appended here as a frame, which returns the journal position after it.
//! 3. A batch whose effects (replies, spawned work, events) must leave waits for the journal
//!    to be durable past its record (the output gate, in `instance/commit.rs`). The first
//!    waiter that finds no round in progress leads one: it writes everything appended so far
//!    with one `write` and makes it durable with one `fdatasync`, on its own thread (as a
//!    `COMMIT` under `synchronous=FULL` would), while the others wait for the round that
//!    covers them. No hand-off to a journal thread and back: on a busy machine each such hop
//!    waits for a CPU. Appends nobody waits for are written by the next round.
//!
//! After a power loss an object file may lack its last commits; the journal holds them, and
//! [`replay`] applies every record past the file's `berth.seq` before the runtime serves
//! (after a process crash there is nothing to apply: the page cache kept the files).
//!
//! # Segments and trimming
//!
//! The journal is a directory of numbered segment files. A segment is sealed when it holds
//! [`SEGMENT_BYTES`] or is [`SEGMENT_AGE`] old, and a new one starts. Every record of a sealed
//! segment was committed to its object file *before* it was appended (step 1 comes first), so
//! one `syncfs` of the data directory's filesystem after the seal makes all of them durable in
//! their files, and the segment is deleted. Replay therefore never needs a record older than
//! the segments present.
//!
//! # Frames
//!
//! `[length: u32 LE][CRC-32C of the payload: u32 LE][payload]`, the payload a postcard
//! [`Frame`]. A frame is either a set of writer statements (written once per segment, before
//! the first record that names it, so a replay never depends on the replaying build's
//! statements) or a record. A torn frame can only be the last one written before a crash:
//! replay stops at the first frame that is short or fails its checksum, and that write was
//! never acknowledged.
//!
//! A failed `write` or `fdatasync` aborts the process, as the durability barrier does: the
//! kernel may have dropped pages that waiting replies would vouch for, and a retry cannot tell.

pub(crate) mod replay;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::barrier::{self, HOLD_FAILPOINT, HOLD_FILE};
use super::metrics::Metrics;
use super::{Error, ObjectId};

/// The journal's directory inside the data directory.
pub(crate) const DIR: &str = "journal";
/// A segment is sealed once it holds this many bytes. Each is written full of zeros when it
/// is created, so that appending overwrites allocated blocks and an `fdatasync` flushes data
/// only: appending to a growing file makes every sync also commit the filesystem's journal
/// (the new size and blocks), which costs as much as the sync itself.
pub(crate) const SEGMENT_BYTES: u64 = 16 << 20;
/// ... or once it is this old and holds anything, so that a quiet server's journal (what a
/// restart replays) stays short.
pub(crate) const SEGMENT_AGE: Duration = Duration::from_secs(30);
/// Bytes of a frame's header: length and checksum.
const HEADER: usize = 8;
/// The largest frame replay accepts: anything longer is a torn or foreign length.
const MAX_FRAME: u32 = 256 << 20;
/// The largest record a batch may journal (its frame adds the namespace, the id and the
/// position); a commit checks it before it commits, so an append never fails for its size.
pub(crate) const MAX_RECORD: usize = (MAX_FRAME as usize) - (1 << 20);

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// One frame's payload, as written ([`FrameRef`]) and read back.
#[derive(Debug, Deserialize)]
pub(crate) enum Frame {
    /// Writer statements, named by their fingerprint (`record::fingerprint`).
    Writers {
        fingerprint: String,
        statements: Vec<String>,
    },
    /// One committed batch of one object: after it, the object's file holds position `seq`.
    Record {
        namespace: String,
        id: [u8; 32],
        seq: i64,
        /// `record::Record`, encoded.
        record: Vec<u8>,
    },
}

/// [`Frame`] borrowed, for writing without copies (postcard encodes both alike).
#[derive(Serialize)]
enum FrameRef<'a> {
    Writers {
        fingerprint: &'a str,
        statements: &'a [&'a str],
    },
    Record {
        namespace: &'a str,
        id: &'a [u8; 32],
        seq: i64,
        record: Bytes<'a>,
    },
}

/// Bytes serialized as one run (postcard writes a sequence of `u8` the same way, length then
/// bytes, but one element at a time).
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// Appends `frame` to `buf` with its header.
fn encode(buf: &mut Vec<u8>, frame: &FrameRef<'_>) -> Result<(), Error> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(frame, taken).map_err(Error::encode)?;
    let payload = &buf[start + HEADER..];
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&len| len <= MAX_FRAME)
        .ok_or_else(|| {
            Error::Other(anyhow::anyhow!(
                "a journal frame of {} bytes",
                payload.len()
            ))
        })?;
    let crc = CRC.checksum(payload);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Reads the frames of one segment's bytes in order; stops at the end or at the first frame
/// that is short or fails its checksum (a torn last write).
pub(crate) fn frames(bytes: &[u8]) -> impl Iterator<Item = Result<Frame, Error>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let header = bytes.get(at..at + HEADER)?;
        let len = u32::from_le_bytes(header[..4].try_into().ok()?);
        let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
        if len == 0 || len > MAX_FRAME {
            return None;
        }
        let payload = bytes.get(at + HEADER..at + HEADER + len as usize)?;
        if CRC.checksum(payload) != crc {
            return None;
        }
        at += HEADER + len as usize;
        Some(postcard::from_bytes(payload).map_err(Error::corrupt))
    })
}

/// The path of segment `number`.
fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.log"))
}

/// The segments in `dir`, oldest first.
pub(crate) fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, Error> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(err) => return Err(err.into()),
    };
    for entry in entries {
        let path = entry?.path();
        let number = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(".log"))
            .and_then(|stem| stem.parse::<u64>().ok());
        if let Some(number) = number {
            found.push((number, path));
        }
    }
    found.sort();
    Ok(found)
}

/// The shared commit journal (see the module docs).
pub(crate) struct Journal {
    dir: PathBuf,
    data_dir: PathBuf,
    /// An open handle on the data directory: `syncfs` syncs the filesystem it lies on.
    data: File,
    state: Mutex<State>,
    /// The journal position (bytes appended since the runtime opened) made durable; every
    /// round's end is sent, also when the position did not move (a waiter may lead next).
    synced: watch::Sender<u64>,
    /// The active segment, used by the round's leader only.
    active: Mutex<Active>,
    /// The next segment, created (and zero-filled) ahead by the trim thread. Its lock is
    /// held while a seal changes the active segment, and while the trim thread names a new one.
    spare: Mutex<Option<Active>>,
    /// The active segment's number (read by the trim thread without `active`'s lock).
    active_number: AtomicU64,
    /// A trim (`syncfs`, then deleting sealed segments) is running.
    trimming: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

struct State {
    /// Frames appended and not yet taken by a round.
    buf: Vec<u8>,
    /// The position after the last frame appended.
    end: u64,
    /// Writer sets already written to the segment the next frames go to (one per object
    /// type, so a short list).
    writers: Vec<String>,
    /// A round is in progress (its leader alone writes the active segment).
    flushing: bool,
    /// The position made durable (as `Journal::synced` says, updated first).
    synced: u64,
    /// Bytes given to the segment the next frames go to, and when it began.
    segment_bytes: u64,
    segment_started: Instant,
}

/// One round's share of the appends: its bytes, the position after them, and whether the
/// segment is sealed after it.
struct Round {
    bytes: Vec<u8>,
    end: u64,
    seal: bool,
}

/// Starts a round: takes what was appended (the caller leads it). What is appended from now
/// on goes to the next round, and, if this one seals the segment (only where `may_seal`), to
/// the next segment, which must carry its own writer sets.
fn take(state: &mut State, may_seal: bool) -> Round {
    state.flushing = true;
    let bytes = std::mem::replace(&mut state.buf, Vec::with_capacity(64 << 10));
    let seal = may_seal
        && (state.segment_bytes >= SEGMENT_BYTES || state.segment_started.elapsed() >= SEGMENT_AGE);
    if seal {
        state.writers.clear();
        state.segment_bytes = 0;
        state.segment_started = Instant::now();
    }
    Round {
        bytes,
        end: state.end,
        seal,
    }
}

struct Active {
    number: u64,
    file: File,
    /// Where the next write goes.
    offset: u64,
}

impl Journal {
    /// Starts a journal in `data_dir` with a new segment numbered after `after` (the last
    /// segment replay saw).
    ///
    /// # Errors
    ///
    /// The directory or the segment cannot be created.
    pub(crate) fn start(
        data_dir: &Path,
        after: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Journal>, Error> {
        let dir = data_dir.join(DIR);
        std::fs::create_dir_all(&dir)?;
        File::open(data_dir)?.sync_all()?;
        let number = after + 1;
        let file = create_segment(&dir, number)?;
        Ok(Arc::new(Journal {
            data: File::open(data_dir)?,
            dir,
            data_dir: data_dir.to_owned(),
            state: Mutex::new(State {
                buf: Vec::with_capacity(64 << 10),
                end: 0,
                writers: Vec::new(),
                flushing: false,
                synced: 0,
                segment_bytes: 0,
                segment_started: Instant::now(),
            }),
            synced: watch::Sender::new(0),
            active: Mutex::new(Active {
                number,
                file,
                offset: 0,
            }),
            spare: Mutex::new(None),
            active_number: AtomicU64::new(number),
            trimming: Arc::new(AtomicBool::new(false)),
            metrics,
        }))
    }

    /// Appends one object's committed batch: `record` (encoded) brings the object's file to
    /// position `seq`; its rows are for the writer statements `writers`, fingerprinted
    /// `fingerprint`. Returns the journal position [`Journal::wait`] must reach before any
    /// effect of the batch leaves the object.
    pub(crate) fn append(
        &self,
        namespace: &str,
        id: ObjectId,
        seq: i64,
        fingerprint: &str,
        writers: &[&str],
        record: &[u8],
    ) -> Result<u64, Error> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let before = state.buf.len();
        if !state.writers.iter().any(|known| known == fingerprint) {
            encode(
                &mut state.buf,
                &FrameRef::Writers {
                    fingerprint,
                    statements: writers,
                },
            )?;
            state.writers.push(fingerprint.to_owned());
        }
        let frame = FrameRef::Record {
            namespace,
            id: id.as_bytes(),
            seq,
            record: Bytes(record),
        };
        if let Err(err) = encode(&mut state.buf, &frame) {
            state.buf.truncate(before);
            return Err(err);
        }
        let added = (state.buf.len() - before) as u64;
        state.end += added;
        state.segment_bytes += added;
        Ok(state.end)
    }

    /// The journal position made durable so far.
    pub(crate) fn synced(&self) -> u64 {
        *self.synced.borrow()
    }

    /// Returns once the journal is durable up to `position`, leading rounds while none is in
    /// progress and the position is not reached.
    pub(crate) async fn wait(self: &Arc<Self>, position: u64) {
        let mut synced = self.synced.subscribe();
        loop {
            // Marked seen before the state is read: a round that ends after this is noticed.
            synced.borrow_and_update();
            let round = {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if state.synced >= position {
                    return;
                }
                (!state.flushing).then(|| take(&mut state, true))
            };
            match round {
                Some(round) => super::sqlite::blocking(|| self.flush(round)),
                // The sender lives as long as `self`: this ends when the round in progress
                // does.
                None => {
                    let _ = synced.changed().await;
                }
            }
        }
    }

    /// Writes and syncs one round (its leader holds `flushing`), then seals the segment if
    /// the round said so.
    fn flush(self: &Arc<Self>, round: Round) {
        crate::failpoint::hold_while(HOLD_FAILPOINT, &self.data_dir.join(HOLD_FILE));
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(err) = active
            .file
            .write_all_at(&round.bytes, active.offset)
            .and_then(|()| active.file.sync_data())
        {
            fatal("writing the commit journal", &err);
        }
        active.offset += round.bytes.len() as u64;
        Metrics::add(&self.metrics.durability_syncs, 1);
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.synced = round.end;
            // Sealing keeps the round (nobody writes the old segment meanwhile); its
            // waiters are released first.
            state.flushing = round.seal;
        }
        self.synced.send_replace(round.end);
        if !round.seal {
            return;
        }
        let number = active.number + 1;
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        let next = match spare.take() {
            Some(ready) if ready.number == number => ready,
            _ => match create_segment(&self.dir, number) {
                Ok(file) => Active {
                    number,
                    file,
                    offset: 0,
                },
                Err(err) => fatal("starting a journal segment", &err),
            },
        };
        *active = next;
        self.active_number.store(number, Ordering::Release);
        drop(spare);
        drop(active);
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flushing = false;
        self.synced.send_replace(round.end);
        self.trim(number);
    }

    /// Deletes every segment before `active` once a `syncfs` has made their records durable
    /// in the object files, then creates the segment after `active`, on a thread of its own
    /// (a `syncfs` and a segment's zeros take a while); a trim already running is left to
    /// finish, and the next seal trims what it did not.
    fn trim(self: &Arc<Self>, active: u64) {
        if self.trimming.swap(true, Ordering::AcqRel) {
            return;
        }
        let journal = Arc::clone(self);
        let started = std::thread::Builder::new()
            .name("berth-journal-trim".into())
            .spawn(move || {
                if let Err(err) = barrier::syncfs(&journal.data) {
                    fatal("syncing the data directory's filesystem", &err);
                }
                if let Err(err) = remove_before(&journal.dir, active) {
                    tracing::warn!(error = %err, "deleting sealed journal segments");
                }
                // The zeros are written outside the spare's lock (a seal waits for it); under
                // it no seal can pass `active`, so the segment after it does not exist yet.
                let staged = journal.dir.join("next.tmp");
                let _ = std::fs::remove_file(&staged);
                match zeroed(&staged) {
                    Ok(file) => {
                        let mut spare = journal.spare.lock().unwrap_or_else(|p| p.into_inner());
                        let number = active + 1;
                        let named = journal.active_number.load(Ordering::Acquire) == active
                            && std::fs::rename(&staged, segment_path(&journal.dir, number))
                                .and_then(|()| File::open(&journal.dir)?.sync_all())
                                .is_ok();
                        if named {
                            *spare = Some(Active {
                                number,
                                file,
                                offset: 0,
                            });
                        } else {
                            let _ = std::fs::remove_file(&staged);
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "creating the next journal segment");
                    }
                }
                journal.trimming.store(false, Ordering::Release);
            });
        if started.is_err() {
            self.trimming.store(false, Ordering::Release);
        }
    }

    /// At shutdown, once every object has closed: makes every object file durable and
    /// deletes the whole journal, so the next start has nothing to replay.
    pub(crate) fn retire(self: &Arc<Self>) -> Result<(), Error> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.flushing {
            // A round is still being written: the next start replays it instead.
            return Ok(());
        }
        if !state.buf.is_empty() {
            // No seal: nothing is appended after this, and a seal would start a trim.
            let round = take(&mut state, false);
            drop(state);
            self.flush(round);
            state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.flushing {
                return Ok(());
            }
        }
        drop(state);
        // A trim still running would make a spare segment after the deletion below.
        for _ in 0..6_000 {
            if !self.trimming.load(Ordering::Acquire) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        barrier::syncfs(&self.data)?;
        // Every segment, the spare one made ahead included.
        let _active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        remove_before(&self.dir, u64::MAX)?;
        Ok(())
    }
}

/// Creates segment `number`, [`SEGMENT_BYTES`] of zeros, and makes it and its name durable.
/// Never one that exists: that could only be a segment holding records.
fn create_segment(dir: &Path, number: u64) -> std::io::Result<File> {
    let file = zeroed(&segment_path(dir, number))?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// A new file at `path`, [`SEGMENT_BYTES`] of zeros, synced; readable by berth's user only
/// (it holds what the object files hold).
fn zeroed(path: &Path) -> std::io::Result<File> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let zeros = vec![0; 1 << 20];
    let mut left = SEGMENT_BYTES;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    Ok(file)
}

/// Deletes the segments numbered below `number`.
pub(crate) fn remove_before(dir: &Path, number: u64) -> Result<(), Error> {
    for (n, path) in segments(dir)? {
        if n < number {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}

fn fatal(what: &str, err: &std::io::Error) -> ! {
    tracing::error!(error = %err, "{what} failed: committed writes may be lost; aborting so that nothing unsynced is acknowledged");
    eprintln!("{what} failed: {err}; aborting");
    std::process::abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_frame(seq: i64) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(
            &mut buf,
            &FrameRef::Record {
                namespace: "ns",
                id: &[7; 32],
                seq,
                record: Bytes(b"abc"),
            },
        )
        .expect("encode");
        buf
    }

    /// Frames read back as written, and reading stops cleanly at a torn or corrupted tail.
    #[test]
    fn frames_round_trip_and_stop_at_a_torn_tail() {
        let mut bytes = Vec::new();
        encode(
            &mut bytes,
            &FrameRef::Writers {
                fingerprint: "f",
                statements: &["INSERT 1", "INSERT 2"],
            },
        )
        .expect("encode");
        bytes.extend(record_frame(1));
        bytes.extend(record_frame(2));
        let read: Vec<Frame> = frames(&bytes).map(|f| f.expect("frame")).collect();
        assert_eq!(read.len(), 3);
        assert!(
            matches!(&read[0], Frame::Writers { fingerprint, statements } if fingerprint == "f" && statements.len() == 2)
        );
        assert!(
            matches!(&read[2], Frame::Record { namespace, id, seq: 2, record } if namespace == "ns" && id == &[7; 32] && record == b"abc")
        );

        // Torn: the last frame cut short.
        let torn = &bytes[..bytes.len() - 2];
        assert_eq!(frames(torn).count(), 2);
        // Corrupted: a flipped byte in the last frame's payload.
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        assert_eq!(frames(&flipped).count(), 2);
        // Zeros after the end (a preallocated or partly written tail) end the journal.
        let mut padded = bytes.clone();
        padded.extend([0; 64]);
        assert_eq!(frames(&padded).count(), 3);
    }

    /// Many objects appending and waiting at once: every wait returns (each is led by itself
    /// or covered by another's round), and each object's records are in the segment in its
    /// order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_waiters_all_return_with_their_records_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::start(dir.path(), 0, Arc::new(Metrics::default())).expect("journal");
        let mut tasks = Vec::new();
        for object in 0..16 {
            let journal = Arc::clone(&journal);
            tasks.push(tokio::spawn(async move {
                let id = ObjectId::from_name("ns", &object.to_string());
                for seq in 1..=25 {
                    let at = journal
                        .append("ns", id, seq, "fp", &["W"], b"r")
                        .expect("append");
                    if seq % 3 != 0 {
                        // Some batches have no effects and wait for nothing.
                        journal.wait(at).await;
                        assert!(journal.synced() >= at);
                    }
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        let end = journal.state.lock().expect("state").end;
        journal.wait(end).await;
        let segs = segments(&dir.path().join(DIR)).expect("segments");
        let bytes = std::fs::read(&segs[0].1).expect("read");
        let mut last: std::collections::HashMap<[u8; 32], i64> = Default::default();
        let mut records = 0;
        for frame in frames(&bytes) {
            if let Frame::Record { id, seq, .. } = frame.expect("frame") {
                let before = last.insert(id, seq).unwrap_or(0);
                assert_eq!(seq, before + 1, "an object's records in its order");
                records += 1;
            }
        }
        assert_eq!(records, 16 * 25);
    }

    /// A segment full past [`SEGMENT_BYTES`] is sealed after the round that filled it: the
    /// next records go to a new segment that carries its own writer set, the sealed one is
    /// deleted once the trim's `syncfs` ran, and the segment after the new one is made ahead.
    #[tokio::test]
    async fn a_full_segment_is_sealed_trimmed_and_the_next_made_ahead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::start(dir.path(), 0, Arc::new(Metrics::default())).expect("journal");
        let id = ObjectId::from_name("ns", "a");
        let big = vec![7; 1 << 20];
        let mut at = 0;
        for seq in 1..=17 {
            at = journal
                .append("ns", id, seq, "fp", &["W"], &big)
                .expect("append");
        }
        journal.wait(at).await;
        let at = journal
            .append("ns", id, 18, "fp", &["W"], b"after")
            .expect("append");
        journal.wait(at).await;
        for _ in 0..1_000 {
            if !journal.trimming.load(Ordering::Acquire) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let numbers: Vec<u64> = segments(&dir.path().join(DIR))
            .expect("segments")
            .into_iter()
            .map(|(number, _)| number)
            .collect();
        assert_eq!(numbers, [2, 3], "segment 1 trimmed, 3 made ahead");
        let bytes = std::fs::read(segment_path(&dir.path().join(DIR), 2)).expect("read");
        let read: Vec<Frame> = frames(&bytes).map(|f| f.expect("frame")).collect();
        assert!(
            matches!(read[0], Frame::Writers { .. }),
            "its own writer set"
        );
        assert!(matches!(read[1], Frame::Record { seq: 18, .. }));
        assert_eq!(read.len(), 2);
    }

    /// Appends become durable in order, positions grow, and a writer set is written once per
    /// segment.
    #[tokio::test]
    async fn appends_are_synced_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::start(dir.path(), 0, Arc::new(Metrics::default())).expect("journal");
        let id = ObjectId::from_name("ns", "a");
        let first = journal
            .append("ns", id, 1, "fp", &["W"], b"one")
            .expect("append");
        let second = journal
            .append("ns", id, 2, "fp", &["W"], b"two")
            .expect("append");
        assert!(second > first);
        journal.wait(second).await;
        assert!(journal.synced() >= second);
        let segs = segments(&dir.path().join(DIR)).expect("segments");
        assert_eq!(segs.len(), 1);
        let bytes = std::fs::read(&segs[0].1).expect("read");
        let read: Vec<Frame> = frames(&bytes).map(|f| f.expect("frame")).collect();
        assert_eq!(read.len(), 3, "one writer set, two records");
        assert!(matches!(read[1], Frame::Record { seq: 1, .. }));
        assert!(matches!(read[2], Frame::Record { seq: 2, .. }));
        journal.retire().expect("retire");
        assert!(
            segments(&dir.path().join(DIR))
                .expect("segments")
                .is_empty()
        );
    }
}
