//! The commit log: appending a batch, fenced by the owner's epoch, group-committed across the
//! objects of this node.
//!
//! One task owns the appends. Batches of objects that are ready together go to PostgreSQL in
//! one statement (one transaction, one WAL flush): for each, it bumps the object's `seq` and
//! sets its alarm *only where owner and epoch are still the committer's*, and logs the record
//! under the new `seq`. The `UPDATE` holds each object row's lock until the commit, so a claim
//! of the same object (which updates that row) waits for it and then sees the new `seq`: a
//! new owner never misses a batch that was acknowledged. An object whose row did not match
//! was claimed by someone else: its append is refused, and its batch must not be reported
//! as committed.

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use sqlx::PgPool;

use crate::objects::{Error, ObjectId};

/// How many appends at most share one PostgreSQL transaction.
const MAX_GROUP: usize = 512;

/// One batch to append.
pub(crate) struct Append {
    pub(crate) namespace: &'static str,
    pub(crate) id: ObjectId,
    /// The incarnation and epoch the object was claimed with.
    pub(crate) owner: String,
    pub(crate) epoch: i64,
    /// The object's alarm as the batch leaves it (the directory's alarm, exactly).
    pub(crate) alarm_at: Option<i64>,
    /// The encoded [`crate::objects::record::Record`].
    pub(crate) record: Vec<u8>,
}

type Request = (Append, oneshot::Sender<Result<i64, Error>>);

/// The handle on the append task.
pub(crate) struct Appender {
    tx: mpsc::Sender<Request>,
}

impl Appender {
    pub(crate) fn start(pool: PgPool, stop: CancellationToken) -> Appender {
        let (tx, rx) = mpsc::channel(MAX_GROUP * 4);
        tokio::spawn(run(pool, rx, stop));
        Appender { tx }
    }

    /// Appends one batch; returns its `seq` once PostgreSQL committed it.
    ///
    /// # Errors
    ///
    /// [`Error::Moved`] when the object is no longer this owner's (the batch was not
    /// appended); [`Error::Cluster`] when PostgreSQL failed (the batch may or may not have
    /// been appended: the caller must not report it committed, and the object must be
    /// reloaded from the log before it serves again).
    pub(crate) async fn append(&self, append: Append) -> Result<i64, Error> {
        let (reply, answer) = oneshot::channel();
        let gone = || Error::Cluster("the cluster commit log has stopped".into());
        self.tx.send((append, reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn run(pool: PgPool, mut rx: mpsc::Receiver<Request>, stop: CancellationToken) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    loop {
        let n = tokio::select! {
            () = stop.cancelled() => 0,
            n = rx.recv_many(&mut group, MAX_GROUP) => n,
        };
        if n == 0 {
            return;
        }
        match append_group(&pool, &mut group).await {
            Ok(appended) => {
                for (append, reply) in group.drain(..) {
                    let seq = appended
                        .iter()
                        .find(|(ns, id, _)| ns == append.namespace && *id == append.id.to_hex())
                        .map(|(_, _, seq)| *seq);
                    let _ = reply.send(seq.ok_or(Error::Moved(None)));
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, batches = group.len(), "appending to the cluster commit log failed");
                let message = err.to_string();
                for (_, reply) in group.drain(..) {
                    let _ = reply.send(Err(Error::Cluster(message.clone())));
                }
            }
        }
    }
}

/// Appends a group in one statement; returns `(namespace, id, seq)` of those appended.
async fn append_group(
    pool: &PgPool,
    group: &mut [Request],
) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    let mut namespaces = Vec::with_capacity(group.len());
    let mut ids = Vec::with_capacity(group.len());
    let mut owners = Vec::with_capacity(group.len());
    let mut epochs = Vec::with_capacity(group.len());
    let mut alarms = Vec::with_capacity(group.len());
    let mut records = Vec::with_capacity(group.len());
    for (append, _) in group.iter_mut() {
        namespaces.push(append.namespace.to_owned());
        ids.push(append.id.to_hex());
        owners.push(append.owner.clone());
        epochs.push(append.epoch);
        alarms.push(append.alarm_at);
        records.push(std::mem::take(&mut append.record));
    }
    sqlx::query_as(
        "WITH v AS (\
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bytea[]) \
              AS v(namespace, id, owner, epoch, alarm_at, record)\
         ), u AS (\
            UPDATE berth_objects o SET seq = o.seq + 1, alarm_at = v.alarm_at FROM v \
            WHERE o.namespace = v.namespace AND o.id = v.id AND o.owner = v.owner AND o.epoch = v.epoch \
            RETURNING o.namespace, o.id, o.seq, o.epoch\
         ), l AS (\
            INSERT INTO berth_log (namespace, id, seq, epoch, record) \
            SELECT u.namespace, u.id, u.seq, u.epoch, v.record FROM u JOIN v ON v.namespace = u.namespace AND v.id = u.id\
         ) SELECT namespace, id, seq FROM u",
    )
    .bind(namespaces)
    .bind(ids)
    .bind(owners)
    .bind(epochs)
    .bind(alarms)
    .bind(records)
    .fetch_all(pool)
    .await
}
