//! Membership: a node process is an *incarnation* with a deadline on PostgreSQL's clock.
//!
//! A node renews its deadline every `heartbeat_every`; other nodes may claim its objects once
//! the deadline passed. The node itself stops acting as an owner earlier, by its own monotonic
//! clock: a renewal sent at instant `t` makes it valid until `t + 0.9 × ttl`, and PostgreSQL's
//! deadline for it is at least `t + ttl` (it is computed after the send). So by the time
//! anyone may claim its objects, it has stopped serving them — also when it was paused
//! (SIGSTOP) and resumes, since the monotonic clock ran on meanwhile. Commits do not depend on
//! this: the epoch fences them. It keeps a paused node's *reads* from answering with a state
//! another owner has moved past.
//!
//! A lapsed membership is never renewed (the renewal requires the deadline not to have
//! passed): the node cancels it, which drops every object claimed under it, and joins again as
//! a new incarnation.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Cluster, ClusterOptions};
use crate::objects::Error;

/// How many renewals apart a node forgets long-dead incarnations.
const FORGET_EVERY: u64 = 60;

/// One incarnation of this node in the cluster.
#[derive(Debug)]
pub struct Membership {
    /// Unique per process start: objects are owned by an incarnation, not a node name.
    pub incarnation: String,
    /// Cancelled when this membership is lost (it lapsed, or the node leaves): every object
    /// claimed under it closes at once.
    pub lost: CancellationToken,
    /// Until when this node may act as an owner (monotonic).
    valid_until: Mutex<Instant>,
}

impl Membership {
    /// Whether this node may still act as the owner of objects claimed under it.
    pub fn is_valid(&self) -> bool {
        !self.lost.is_cancelled()
            && Instant::now()
                < *self
                    .valid_until
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn extend(&self, until: Instant) {
        let mut valid = self
            .valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if until > *valid {
            *valid = until;
        }
    }
}

/// The membership the node acts under now, replaced when it joins again.
pub(crate) struct Current(RwLock<Arc<Membership>>);

impl Current {
    pub(crate) async fn join(pool: &PgPool, options: &ClusterOptions) -> Result<Current, Error> {
        Ok(Current(RwLock::new(Arc::new(
            register(pool, options).await?,
        ))))
    }

    pub(crate) fn get(&self) -> Arc<Membership> {
        Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn replace(&self, membership: Membership) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(membership);
    }
}

/// How long a renewal keeps this node valid, counted from when it was sent.
fn validity(ttl: Duration) -> Duration {
    ttl.mul_f64(0.9)
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// Inserts a new incarnation of this node.
async fn register(pool: &PgPool, options: &ClusterOptions) -> Result<Membership, Error> {
    let incarnation = uuid::Uuid::now_v7().simple().to_string();
    let sent = Instant::now();
    sqlx::query(
        "INSERT INTO berth_nodes (incarnation, name, url, deadline) VALUES ($1, $2, $3, now() + make_interval(secs => $4::double precision / 1000))",
    )
    .bind(&incarnation)
    .bind(&options.node_name)
    .bind(&options.advertise_url)
    .bind(ttl_ms(options.membership_ttl) as f64)
    .execute(pool)
    .await?;
    tracing::info!(node = %options.node_name, %incarnation, "joined the cluster");
    Ok(Membership {
        incarnation,
        lost: CancellationToken::new(),
        valid_until: Mutex::new(sent + validity(options.membership_ttl)),
    })
}

/// Renews this node's membership until the cluster handle stops; joins again when it lapsed.
pub(crate) async fn renew(cluster: Arc<Cluster>) {
    let options = &cluster.options;
    let mut tick = tokio::time::interval(options.heartbeat_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            () = cluster.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        ticks += 1;
        if ticks.is_multiple_of(FORGET_EVERY) {
            // Incarnations dead for an hour are forgotten (their objects were taken over or
            // are claimable either way: an owner without a row counts as lapsed).
            let _ =
                sqlx::query("DELETE FROM berth_nodes WHERE deadline < now() - interval '1 hour'")
                    .execute(&cluster.pool)
                    .await;
        }
        let me = cluster.membership();
        let sent = Instant::now();
        let renewed: Result<Option<(i32,)>, sqlx::Error> = sqlx::query_as(
            "UPDATE berth_nodes SET deadline = now() + make_interval(secs => $2::double precision / 1000) WHERE incarnation = $1 AND deadline > now() RETURNING 1",
        )
        .bind(&me.incarnation)
        .bind(ttl_ms(options.membership_ttl) as f64)
        .fetch_optional(&cluster.pool)
        .await;
        match renewed {
            Ok(Some(_)) if !me.lost.is_cancelled() => {
                me.extend(sent + validity(options.membership_ttl));
            }
            Ok(_) => {
                // Lapsed (paused, or cut off longer than the deadline), or given up while
                // PostgreSQL did not answer: others may own our objects by now. Drop them
                // all, remove the old incarnation (so its objects are claimable at once) and
                // come back as someone new.
                tracing::warn!(incarnation = %me.incarnation, "cluster membership lost; dropping every object and joining again");
                me.lost.cancel();
                let removed = sqlx::query("DELETE FROM berth_nodes WHERE incarnation = $1")
                    .bind(&me.incarnation)
                    .execute(&cluster.pool)
                    .await;
                let joined = match removed {
                    Ok(_) => register(&cluster.pool, options).await,
                    Err(err) => Err(err.into()),
                };
                match joined {
                    Ok(fresh) => cluster.membership.replace(fresh),
                    Err(err) => tracing::warn!(error = %err, "joining the cluster again"),
                }
            }
            Err(err) => {
                if !me.is_valid() && !me.lost.is_cancelled() {
                    tracing::warn!(error = %err, "cannot renew cluster membership; dropping every object until PostgreSQL answers");
                    me.lost.cancel();
                } else {
                    tracing::debug!(error = %err, "renewing cluster membership");
                }
            }
        }
    }
}
