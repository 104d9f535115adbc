//! A runner's process ended on its own: the transition that ends its lease for it.

use providers::exits::{EXIT_STATUS, ExitStatus};

use crate::wire::{EndReason, LeaseState};

use super::super::book::Timing;
use super::super::lease::Lease;
use super::{Effect, Transition, end_in};

/// The runner's process exited on its own (its provider saw it, or a listing found it gone): a
/// provisioning or ready lease ends with `runner_exited` like any end — `releasing`, its
/// runner's destroy (which removes what the process left) and then its charge up to that
/// destroy — with how it exited in `last_error` and in the runner's metadata
/// ([`EXIT_STATUS`]). A lease already ending or ended stays as it is: a runner that said it
/// was done, or that berth destroyed, exits too, and that never ends its lease twice.
pub fn runner_exited(
    mut lease: Lease,
    status: ExitStatus,
    last_stderr_line: Option<&str>,
    now: i64,
    timing: &Timing,
) -> Transition {
    let mut effects = Vec::new();
    let store = exited_in(
        &mut lease,
        &mut effects,
        status,
        last_stderr_line,
        now,
        timing,
    );
    Transition {
        lease,
        effects,
        store,
    }
}

/// Ends `lease` in place for its runner's exit (see [`runner_exited`]); whether it changed.
pub(super) fn exited_in(
    lease: &mut Lease,
    effects: &mut Vec<Effect>,
    status: ExitStatus,
    last_stderr_line: Option<&str>,
    now: i64,
    timing: &Timing,
) -> bool {
    if !matches!(
        lease.state,
        LeaseState::Provisioning | LeaseState::Ready | LeaseState::Warm
    ) {
        return false;
    }
    let how = match status {
        ExitStatus::Code(code) => format!("the runner exited with code {code}"),
        ExitStatus::Signal(signal) => format!("the runner was killed by signal {signal}"),
        ExitStatus::Unknown => "the runner's process ended (its exit status is unknown: it \
             was started before berth restarted)"
            .to_owned(),
    };
    lease.last_error = Some(match last_stderr_line {
        Some(line) => format!("{how}; its last stderr line: {line}"),
        None => how,
    });
    lease
        .runner_metadata
        .insert("status".to_owned(), "exited".to_owned());
    lease
        .runner_metadata
        .insert(EXIT_STATUS.to_owned(), status.to_string());
    end_in(lease, effects, EndReason::RunnerExited, now, timing)
}
