//! The tenant's events: what happened to a lease or to the budget, stored in the `events` table
//! with a per-tenant sequence number, broadcast to streams and queued for webhooks — all in
//! the transaction of the change that caused it.

use serde_json::value::RawValue;

use crate::objects::clock::rfc3339;
use crate::wire::EventKind;

use super::row::table;

table! {
    /// A lease or budget event: its row in the tenant's `events` table, broadcast to
    /// subscribers once committed.
    #[derive(Clone, Debug)]
    pub struct Event in "events" {
        /// Per-tenant sequence number, 1, 2, 3, …
        pub seq: i64,
        pub kind = "type": EventKind,
        /// Unix ms.
        pub at: i64,
        /// The lease, or the budget figures, as JSON text: serialized once when the event
        /// happens and written verbatim to the events table, webhook bodies and streams.
        pub data: Box<RawValue> [json],
    }
}

impl Event {
    /// The event as webhooks and streams send it.
    pub fn body(&self) -> EventBody<'_> {
        EventBody {
            kind: self.kind.as_str(),
            timestamp: rfc3339(self.at),
            seq: Some(self.seq),
            data: &self.data,
        }
    }

    /// The `id` field of the data (the lease's id, for lease events).
    pub fn lease_id(&self) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Id {
            id: Option<String>,
        }
        serde_json::from_str::<Id>(self.data.get()).ok()?.id
    }
}

/// An event on the wire: serializes exactly as [`crate::wire::EventMessage`] (which clients
/// parse), but borrows its data as JSON text instead of building a tree of values. Also the
/// body of `webhook.test` deliveries, which are not events of the tenant (no `seq`).
#[derive(Debug, serde::Serialize)]
pub struct EventBody<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub timestamp: String,
    pub seq: Option<i64>,
    pub data: &'a RawValue,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    /// What webhooks and streams send parses as the documented `EventMessage`, field for field.
    #[test]
    fn body_serializes_as_the_wire_event_message() {
        let data = serde_json::json!({"id": "lease_1", "labels": {"a": "b"}, "cost": 3});
        let event = Event {
            seq: 7,
            kind: EventKind::LeaseGranted,
            at: 1_700_000_000_123,
            data: serde_json::value::to_raw_value(&data).expect("json"),
        };
        let text = serde_json::to_string(&event.body()).expect("json");
        let parsed: wire::EventMessage = serde_json::from_str(&text).expect("parses");
        assert_eq!(
            parsed,
            wire::EventMessage {
                kind: "lease.granted".into(),
                timestamp: rfc3339(event.at),
                seq: Some(7),
                data,
            }
        );
        assert_eq!(event.lease_id().as_deref(), Some("lease_1"));
    }
}
