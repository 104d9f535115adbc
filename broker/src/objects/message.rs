//! Typed messages: every request an object handles is a type of its own that names its reply
//! type, so a caller gets exactly the reply its request produces — a mismatch is a compile
//! error, not a failure at run time — and whether a request only reads is declared once, next
//! to it.
//!
//! An object opts in by taking [`Call`] as its [`Object::Request`] and [`Answer`] as its
//! [`Object::Reply`], and implementing [`Handler<M>`] for each message `M`. Its
//! [`Object::handle`] then only dispatches: `call.dispatch(self, ctx)`. Callers use
//! [`Stub::ask`](super::Stub::ask).
//!
//! # Example
//!
//! ```text
//! #[derive(Debug)]
//! struct Increment(i64);
//! impl Message for Increment {
//!     type Reply = i64;
//! }
//! impl Handler<Increment> for Counter {
//!     async fn handle(&mut self, ctx: &mut Ctx<'_, Self>, m: Increment) -> Result<i64, Error> {
//!         self.value += m.0;
//!         ctx.kv_put("value", &self.value)?;
//!         Ok(self.value)
//!     }
//! }
//! let value: i64 = stub.ask(Increment(2)).await?;
//! ```

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use super::{Ctx, Error, Object};

/// A request to an object of type `O`, and what it answers.
pub trait Message: fmt::Debug + Send + 'static {
    /// What the handler returns to the caller.
    type Reply: Send + 'static;
    /// Handling it only reads: it writes nothing, starts no work and moves no alarm, so the
    /// object may skip what it does after a change.
    const READ_ONLY: bool = false;
}

/// An object that handles the message `M`.
pub trait Handler<M: Message>: Object<Request = Call<Self>, Reply = Answer> {
    /// Handles one `M`, inside the object's task like every event.
    fn handle(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        message: M,
    ) -> impl Future<Output = Result<M::Reply, Error>> + Send;
}

/// A message on its way to an object of type `O`: any `M` the object handles.
pub struct Call<O: Object>(Box<dyn Dispatch<O>>);

impl<O: Object> Call<O> {
    /// Wraps `message` for the inbox.
    pub fn new<M>(message: M) -> Self
    where
        M: Message,
        O: Handler<M>,
    {
        Call(Box::new(Typed(message)))
    }

    /// Whether the message only reads ([`Message::READ_ONLY`]).
    pub fn read_only(&self) -> bool {
        self.0.read_only()
    }

    /// Runs the message's handler on `object`.
    ///
    /// # Errors
    ///
    /// What the handler returns.
    pub async fn dispatch(self, object: &mut O, ctx: &mut Ctx<'_, O>) -> Result<Answer, Error> {
        self.0.dispatch(object, ctx).await
    }
}

impl<O: Object> fmt::Debug for Call<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A reply on its way back to the caller; [`Answer::take`] unpacks it.
pub struct Answer(Box<dyn Any + Send>);

impl Answer {
    /// The reply of the message this answers.
    ///
    /// # Panics
    ///
    /// Never for an answer a [`Call::new`] of `M` produced and `T = M::Reply`:
    /// [`Stub::ask`](super::Stub::ask) pairs them by type.
    pub fn take<T: 'static>(self) -> T {
        *self
            .0
            .downcast::<T>()
            .expect("BUG: a Call of M answers with M::Reply, and ask::<M> takes M::Reply")
    }
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Answer(..)")
    }
}

/// The type-erased half of a [`Call`].
trait Dispatch<O: Object>: fmt::Debug + Send {
    fn read_only(&self) -> bool;
    fn dispatch<'a>(
        self: Box<Self>,
        object: &'a mut O,
        ctx: &'a mut Ctx<'_, O>,
    ) -> Pin<Box<dyn Future<Output = Result<Answer, Error>> + Send + 'a>>;
}

/// One message of a known type.
struct Typed<M>(M);

impl<M: fmt::Debug> fmt::Debug for Typed<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<O, M> Dispatch<O> for Typed<M>
where
    M: Message,
    O: Handler<M>,
{
    fn read_only(&self) -> bool {
        M::READ_ONLY
    }

    fn dispatch<'a>(
        self: Box<Self>,
        object: &'a mut O,
        ctx: &'a mut Ctx<'_, O>,
    ) -> Pin<Box<dyn Future<Output = Result<Answer, Error>> + Send + 'a>> {
        Box::pin(async move {
            let reply = <O as Handler<M>>::handle(object, ctx, self.0).await?;
            Ok(Answer(Box::new(reply)))
        })
    }
}
