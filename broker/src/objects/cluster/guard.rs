//! Background work of a node that may have been replaced: stopped at its next step.
//!
//! An object's provider calls and webhook deliveries run after its commit, as background work.
//! A node that was paused (or cut off) past its membership may find, when it resumes, work
//! still in flight for objects another node owns by now; that node redoes the work from the
//! object's stored intent. So this node's copy must not take one more step: [`guarded`] checks
//! the membership's validity (monotonic, see `membership`) every time the work is polled and
//! drops the work — without reporting a completion — once it is no longer valid. What a step
//! already sent before the pause (a request on the wire) is the provider's idempotency's to
//! absorb.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::Membership;

/// `work`, polled only while `membership` is valid (always, without one); `None` when it was
/// dropped for that reason.
pub(crate) fn guarded<F: Future + Unpin>(
    work: F,
    membership: Option<Arc<Membership>>,
) -> Guarded<F> {
    Guarded {
        work: Some(work),
        membership,
    }
}

/// See [`guarded`].
pub(crate) struct Guarded<F> {
    work: Option<F>,
    membership: Option<Arc<Membership>>,
}

impl<F: Future + Unpin> Future for Guarded<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.membership.as_ref().is_some_and(|m| !m.is_valid()) {
            self.work = None;
        }
        let Some(work) = self.work.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(work).poll(cx) {
            Poll::Ready(output) => {
                self.work = None;
                Poll::Ready(Some(output))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
