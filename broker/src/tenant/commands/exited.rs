//! A runner's process ended on its own: its provider reported it (`providers::exits`, routed
//! here by the server), or a reconciliation listing found it gone. Its lease ends with
//! `runner_exited` unless it is ending already.

use providers::exits::ExitStatus;

use crate::objects::{Error, Message};

use super::super::broker::TenantBroker;
use super::super::rejection::{Failure, Rejection};
use super::super::{Ctx, effects, transition};

/// The runner of lease `id` exited. Sent by the server, never by a client.
#[derive(Debug)]
pub struct RunnerExited {
    pub id: String,
    pub status: ExitStatus,
    /// The last line of the runner's stderr (already stripped of control characters).
    pub last_stderr_line: Option<String>,
}

impl Message for RunnerExited {
    type Reply = Result<(), Rejection>;
}

pub async fn runner_exited(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    exited: RunnerExited,
) -> Result<(), Failure> {
    end(
        t,
        ctx,
        &exited.id,
        exited.status,
        exited.last_stderr_line.as_deref(),
    )
    .await?;
    Ok(())
}

/// Ends the open lease `id` for its runner's exit. A lease that is not open (ended and gone,
/// or never this tenant's) is left alone: exits of destroyed runners arrive after their end.
pub async fn end(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    id: &str,
    status: ExitStatus,
    last_stderr_line: Option<&str>,
) -> Result<(), Error> {
    let Some(lease) = t.book.take(id) else {
        return Ok(());
    };
    let now = ctx.now_ms();
    let ended = transition::runner_exited(lease, status, last_stderr_line, now, t.book.timing());
    if ended.store {
        tracing::info!(tenant = %t.name, lease = %id, %status, "the runner exited; its lease ends");
    }
    effects::apply(t, ctx, ended).await
}
