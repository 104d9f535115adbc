//! Alarms across nodes: each node fires the alarms of the objects it owns, and claims the
//! objects whose alarm is due while nobody live owns them.
//!
//! The exact alarm of every object is in `berth_objects.alarm_at`, written with each commit.
//! A live object keeps its alarm with this node's scheduler as on one node; a hibernated
//! object this node still owns does too. What no scheduler holds is the alarm of an object
//! whose owner died (or left): every node polls for those and schedules them, and whichever
//! node's wake claims the object first fires it — the others' activations find it owned and
//! stop. Never early (the object checks its own alarm when it opens), at least once.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::objects::directory::intern;
use crate::objects::scheduler::Scheduler;
use crate::objects::{Clock, ObjectId};

/// How many due alarms one poll schedules at most (the rest come with the next poll).
const POLL_LIMIT: i64 = 1_000;

/// Schedules, every `heartbeat_every`, the alarms due soon of objects that no live node owns
/// (and of this incarnation's own, which are harmless to schedule twice).
pub(crate) async fn poll(
    cluster: Arc<Cluster>,
    scheduler: Arc<Scheduler>,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
) {
    let every = cluster.options.heartbeat_every;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let lookahead =
        i64::try_from((every * 2).max(Duration::from_millis(100)).as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let me = cluster.membership();
        if !me.is_valid() {
            continue;
        }
        let horizon = clock.now_ms().saturating_add(lookahead);
        let due: Result<Vec<(String, String, i64)>, sqlx::Error> = sqlx::query_as(
            "SELECT o.namespace, o.id, o.alarm_at FROM berth_objects o \
             WHERE o.alarm_at <= $1 AND (o.owner IS NULL OR o.owner = $2 OR NOT EXISTS \
               (SELECT 1 FROM berth_nodes n WHERE n.incarnation = o.owner AND n.deadline > now())) \
             ORDER BY o.alarm_at LIMIT $3",
        )
        .bind(horizon)
        .bind(&me.incarnation)
        .bind(POLL_LIMIT)
        .fetch_all(cluster.pool())
        .await;
        match due {
            Ok(rows) => {
                for (namespace, id, at) in rows {
                    if let Some(id) = ObjectId::parse(&id) {
                        scheduler.schedule(intern(&namespace), id, Some(at));
                    }
                }
            }
            Err(err) => tracing::debug!(error = %err, "polling the cluster's due alarms"),
        }
    }
}
