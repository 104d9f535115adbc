//! Ownership: claiming an object before activating it, and finding where an object lives.

use std::sync::Arc;

use super::{Cluster, Membership};
use crate::objects::{Error, ObjectId};

/// An object this node now owns: under which membership, with which epoch, and where its
/// history stands.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The membership the claim was made under: the object closes when it is lost.
    pub membership: Arc<Membership>,
    /// The epoch every commit of this activation is fenced by.
    pub epoch: i64,
    /// The last committed batch in the log.
    pub seq: i64,
    /// The last batch the stored snapshot covers.
    pub snapshot_seq: i64,
}

/// Where requests for an object should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Here: this node owns it, or nobody live does (it will be claimed on activation).
    Local,
    /// Another live node owns it: forward to its URL.
    Remote { url: String },
}

impl Cluster {
    /// Claims `id` for this node: allowed when it is unowned, already owned by this
    /// incarnation, or its owner's membership lapsed. The epoch grows by one, so commits of
    /// any earlier activation anywhere are refused from now on. Registers the object on first
    /// use.
    ///
    /// # Errors
    ///
    /// [`Error::Moved`] with the owner's URL when another live node owns it;
    /// [`Error::Moved`] without one when this node's own membership is not valid.
    pub async fn claim(
        &self,
        namespace: &str,
        id: ObjectId,
        name: Option<&str>,
        now_ms: i64,
    ) -> Result<Claim, Error> {
        let membership = self.membership();
        if !membership.is_valid() {
            return Err(Error::Moved(None));
        }
        let hex = id.to_hex();
        sqlx::query(
            "INSERT INTO berth_objects (namespace, id, name, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (namespace, id) DO NOTHING",
        )
        .bind(namespace)
        .bind(&hex)
        .bind(name)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        let claimed: Option<(i64, i64, i64)> = sqlx::query_as(
            "UPDATE berth_objects o SET owner = $3, epoch = o.epoch + 1, name = COALESCE(o.name, $4) \
             WHERE o.namespace = $1 AND o.id = $2 AND (o.owner IS NULL OR o.owner = $3 OR NOT EXISTS \
               (SELECT 1 FROM berth_nodes n WHERE n.incarnation = o.owner AND n.deadline > now())) \
             RETURNING o.epoch, o.seq, o.snapshot_seq",
        )
        .bind(namespace)
        .bind(&hex)
        .bind(&membership.incarnation)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        match claimed {
            Some((epoch, seq, snapshot_seq)) => Ok(Claim {
                membership,
                epoch,
                seq,
                snapshot_seq,
            }),
            None => match self.locate(namespace, id).await? {
                Placement::Remote { url } => Err(Error::Moved(Some(url))),
                // The owner lapsed between the two statements: the caller retries.
                Placement::Local => Err(Error::Moved(None)),
            },
        }
    }

    /// Where object `id` lives now: [`Placement::Remote`] when another live node owns it.
    ///
    /// # Errors
    ///
    /// PostgreSQL cannot be reached.
    pub async fn locate(&self, namespace: &str, id: ObjectId) -> Result<Placement, Error> {
        let me = self.membership();
        let owner: Option<(String, String)> = sqlx::query_as(
            "SELECT n.incarnation, n.url FROM berth_objects o JOIN berth_nodes n ON n.incarnation = o.owner \
             WHERE o.namespace = $1 AND o.id = $2 AND n.deadline > now()",
        )
        .bind(namespace)
        .bind(id.to_hex())
        .fetch_optional(&self.pool)
        .await?;
        Ok(match owner {
            Some((incarnation, url)) if incarnation != me.incarnation => Placement::Remote { url },
            _ => Placement::Local,
        })
    }
}
