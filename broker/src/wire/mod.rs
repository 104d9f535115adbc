//! The JSON shapes of the HTTP API (DESIGN.md §6), shared by the server and the CLI, so the
//! CLI never re-declares them.
//!
//! Request bodies reject unknown fields and anything but a JSON object. Money is integer
//! micro-units of the tenant's currency; times are RFC 3339 UTC strings; durations are whole
//! seconds (`*_s`).
//!
//! - `lease`, `tenant`, `events` — what the API answers;
//! - `requests` — what it is sent, each body with its rules;
//! - `rules` — how a rule is declared, checked and written into the schema;
//! - `decode` — bodies only from JSON objects, integers as JSON Schema reads them;
//! - `bounds` — the rules and bounds themselves, named once.

mod admin;
pub mod bounds;
pub mod dashboard;
pub mod decode;
mod events;
mod lease;
mod requests;
pub mod rules;
mod tenant;

pub use admin::*;
pub use events::*;
pub use lease::*;
pub use requests::*;
pub use tenant::*;

pub(crate) use rules::rules;
