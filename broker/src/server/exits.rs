//! Runner exits, from the providers to the tenant objects: each [`RunnerExit`] a provider
//! reports (`providers::exits`) becomes a [`RunnerExited`] message to its tenant's object,
//! which ends the lease. And what happens to running runners when berth stops.

use std::time::Duration;

use providers::exits::{Exits, RunnerExit};
use tokio::sync::mpsc;

use crate::api;
use crate::objects::CallError;
use crate::tenant::RunnerExited;

/// How often one exit is offered to an object whose inbox is full, one second apart.
const OVERLOADED_TRIES: u32 = 10;

/// Routes every reported exit to its tenant's object until the server stops. Each exit is
/// handed over in its own task, so a busy tenant does not hold back another's exits.
pub(super) fn route(state: api::State, mut exits: mpsc::Receiver<RunnerExit>) {
    tokio::spawn(async move {
        loop {
            let exit = tokio::select! {
                exit = exits.recv() => match exit {
                    Some(exit) => exit,
                    None => return,
                },
                () = state.stopping.cancelled() => return,
            };
            // Runners exist only for tenants that exist; never wake (or make) an object for
            // a name no tenant has.
            if !state.tenant_exists(&exit.tenant) {
                tracing::warn!(tenant = %exit.tenant, lease = %exit.lease_id, "a runner of an unknown tenant exited; ignoring it");
                continue;
            }
            tokio::spawn(deliver(state.clone(), exit));
        }
    });
}

/// Tells the tenant's object that the runner exited; an object too busy to take it is asked
/// again a few times. An exit that is not delivered (berth stops) is found by the next start's
/// reconciliation, which sees the runner gone.
async fn deliver(state: api::State, exit: RunnerExit) {
    let RunnerExit {
        tenant,
        lease_id,
        status,
        last_stderr_line,
    } = exit;
    for _ in 0..OVERLOADED_TRIES {
        let message = RunnerExited {
            id: lease_id.clone(),
            status,
            last_stderr_line: last_stderr_line.clone(),
        };
        match state.tenant(&tenant).ask(message).await {
            Ok(_) => return,
            Err(CallError::Overloaded) => tokio::time::sleep(Duration::from_secs(1)).await,
            // Cluster mode: the tenant's object lives on another node. Exits are not forwarded
            // (a `process` runner is local to the node that started it); the lease ends by
            // its TTL or release.
            Err(CallError::Moved(_)) => {
                tracing::warn!(%tenant, lease = %lease_id, "a runner exited on this node, but its tenant lives on another; its lease runs on until it ends");
                return;
            }
            Err(err) => {
                tracing::warn!(%tenant, lease = %lease_id, error = %err, "could not tell the tenant that a runner exited; the next start finds it");
                return;
            }
        }
    }
    tracing::warn!(%tenant, lease = %lease_id, "the tenant stayed too busy to hear that a runner exited; its lease runs on until it ends");
}

/// Says, as berth stops, what becomes of the `process` runners it watches: they keep running
/// (each is its own process group, and berth never kills a runner for stopping), their leases
/// stay open, and the next start adopts them again — watching them, and destroying each when
/// its lease ends (a TTL that passed while berth was stopped ends it at once).
pub(super) fn at_shutdown(exits: &Exits) {
    let running = exits.watching();
    if running > 0 {
        tracing::info!(
            runners = running,
            "process runners keep running while berth is stopped; their leases stay open and \
             the next start adopts them again (a lease whose TTL passes meanwhile ends then, \
             destroying its runner). To stop them now, release their leases before stopping berth"
        );
    } else {
        tracing::info!("no process runners are running");
    }
}
