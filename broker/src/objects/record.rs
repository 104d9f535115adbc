//! The logical writes of one committed batch: what the cluster commit log stores and another
//! node replays (DESIGN.md §10), and what the single node's commit journal (`journal/`,
//! `--durability log`) stores and a start replays after a power loss.
//!
//! A batch reaches SQLite as a few chunks of queued writes (`session`): one per read that had
//! to see earlier writes, and the last at commit. Its record is exactly those chunks, in
//! order, so replaying it runs the same statements with the same values through the same
//! [`session::send`]. Batched-writer rows are positional JSON for a writer statement: a live
//! batch writes them with each writer's row statement and replay with its JSON-array
//! statement, both rendered from the one declaration (`writer::Writer`) and held to writing
//! the same values by a test. So a record also
//! names the writer statements it was written for, by fingerprint; the log keeps each set of
//! statements once (`berth_writer_sets`), and a node of a newer build replays an older record
//! with the statements that wrote it.
//!
//! Statements are deterministic by construction: every value is bound, and objects take time
//! from their `Ctx`, never from SQL (`datetime('now')`, `random()`), so a replay writes what
//! the original commit wrote.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Error;
use super::session::{self, Writers, Writes};
use super::sqlite::Db;

/// The runtime's key for the last log position an object's database holds, in `_berth_kv`.
pub(crate) const SEQ_KEY: &str = "berth.seq";

/// One committed batch, as logged.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    /// Fingerprint of the writer statements its rows are for ([`fingerprint`]).
    pub(crate) writers: String,
    /// The chunks the batch sent, in order.
    pub(crate) chunks: Vec<Writes>,
}

impl Record {
    /// The record as stored in the log.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, Error> {
        postcard::to_stdvec(self).map_err(Error::encode)
    }

    /// A record read back from the log.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Record, Error> {
        postcard::from_bytes(bytes).map_err(Error::corrupt)
    }
}

/// The fingerprint of a set of writer statements: hex SHA-256 over each statement and its
/// length, so no two different lists share one.
pub(crate) fn fingerprint(writers: &[&str]) -> String {
    let mut hash = Sha256::new();
    for writer in writers {
        hash.update((writer.len() as u64).to_be_bytes());
        hash.update(writer.as_bytes());
    }
    hex::encode(hash.finalize())
}

/// Applies one logged batch to an object's database as its own transaction, and records
/// `seq` as the position the database now holds. `writers` are the statements the record
/// names.
pub(crate) fn apply(
    conn: &mut Db,
    writers: &[&str],
    record: &Record,
    seq: i64,
) -> Result<(), Error> {
    conn.execute_batch("BEGIN")?;
    let result = (|| {
        for chunk in &record.chunks {
            session::send(conn, Writers::Statements(writers), chunk, false, None)?;
        }
        let mut position = Writes::default();
        position.kv(SEQ_KEY.to_owned(), Some(seq.to_string()));
        session::send(conn, Writers::Statements(writers), &position, false, None)?;
        conn.execute_batch("COMMIT")?;
        Ok::<(), Error>(())
    })();
    if result.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::session::Value;

    /// A record survives its encoding, and fingerprints tell statement lists apart.
    #[test]
    fn records_round_trip() {
        let mut chunk = Writes::default();
        chunk.push("INSERT INTO t (a, b) VALUES (?, ?)");
        chunk.bind(Value::Integer(7));
        chunk.bind(Value::Blob(vec![0, 1, 2]));
        chunk.row(0, &(1, "a")).expect("row");
        chunk.kv("k".into(), Some("v".into()));
        let record = Record {
            writers: fingerprint(&["INSERT INTO x SELECT 1"]),
            chunks: vec![chunk.clone(), Writes::default()],
        };
        let back = Record::decode(&record.encode().expect("encode")).expect("decode");
        assert_eq!(back.writers, record.writers);
        assert_eq!(back.chunks.len(), 2);
        assert_eq!(format!("{:?}", back.chunks[0]), format!("{chunk:?}"));
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]));
        assert!(Record::decode(b"\xff\xff").is_err());
    }
}
