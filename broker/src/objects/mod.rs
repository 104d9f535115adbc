//! berth's durable-object runtime, in the style of Cloudflare Durable Objects.
//!
//! Generic: it knows nothing of leases or HTTP. An [`Object`] type gets a [`Namespace`]; each
//! id in it names exactly one object, with its own SQLite database and its own alarm.
//!
//! - **Addressing.** [`Namespace::id_from_name`] is deterministic (SHA-256 of namespace and
//!   name), [`Namespace::new_unique_id`] is random. A [`Stub`] sends a request and awaits the
//!   reply.
//! - **One instance per id, serial execution.** The first message activates the object (once,
//!   however many race); the live object is one tokio task that owns its one connection and a
//!   bounded inbox and handles one event at a time (`instance`).
//! - **Output gate and group commit.** Each event's writes commit before its reply leaves;
//!   events already waiting share one transaction, each in its own savepoint.
//! - **Alarms.** One per object, stored in the object and mirrored in the [`Directory`], never
//!   later there; one [`scheduler`] timer wakes hibernated objects, also after a restart.
//! - **Hibernation.** Idle objects close their files; an LRU cap bounds live objects;
//!   subscriptions survive hibernation (`namespace`).
//! - **Time** comes from a [`Clock`].
//!
//! Reading order: [`clock`], [`id`], [`object`] (the trait), [`namespace`] (registry and
//! stubs), `instance` (the event loop), [`scheduler`], [`directory`], [`runtime`].

pub mod backup;
mod barrier;
pub mod clock;
mod closing;
pub mod cluster;
pub mod directory;
mod error;
pub mod id;
mod instance;
mod journal;
pub mod message;
pub mod metrics;
pub mod namespace;
pub mod object;
mod record;
pub mod runtime;
pub mod scheduler;
pub mod schema;
pub mod session;
pub mod sqlite;
pub mod storage;
mod warm;
pub mod writer;

pub use clock::{Clock, ManualClock, SystemClock};
pub use cluster::{Cluster, ClusterOptions};
pub use directory::Directory;
pub use error::{CallError, Error};
pub use id::ObjectId;
pub use message::{Answer, Call, Handler, Message};
pub use metrics::Metrics;
pub use namespace::{Namespace, Stub};
pub use object::{Ctx, Object, Statement};
pub use runtime::{Options, Runtime};
pub use session::{Bind, Value};
pub use sqlite::RowSets;
pub use storage::Durability;
pub use writer::Writer;
