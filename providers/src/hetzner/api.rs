//! The Hetzner Cloud API's answers as berth reads them, and how its errors are classified
//! (transient, capacity, permanent) and reported.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde::Deserialize;

use super::{LABEL_LEASE, ipv6_host};
use crate::{Error, Runner, client, settings};

/// How an error code is to be taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Class {
    Transient,
    Capacity,
    Permanent,
}

/// Maps an API or action error code (the stable part), then, for unknown codes, the HTTP
/// status when there is one.
pub(super) fn classify(code: &str, status: Option<u16>) -> Class {
    match code {
        "rate_limit_exceeded"
        | "conflict"
        | "locked"
        | "timeout"
        | "server_error"
        | "service_error"
        | "unavailable"
        | "maintenance"
        | "bad_gateway" => Class::Transient,
        "resource_unavailable" | "placement_error" | "resource_limit_exceeded" => Class::Capacity,
        _ if status.is_some_and(|status| status == 429 || status >= 500) => Class::Transient,
        _ => Class::Permanent,
    }
}

impl Class {
    pub(super) fn error(self, message: String, retry_after: Option<Duration>) -> Error {
        match self {
            Class::Transient => Error::Transient {
                message,
                retry_after,
            },
            Class::Capacity => Error::Capacity(message),
            Class::Permanent => Error::Permanent(message),
        }
    }
}

/// The API's error answer, plus what we need to map and report it.
#[derive(Debug)]
pub(super) struct ApiError {
    /// `"{method} {path}"`, for messages.
    pub(super) what: String,
    pub(super) status: u16,
    pub(super) code: String,
    pub(super) message: String,
    pub(super) correlation_id: Option<String>,
    pub(super) retry_after: Option<Duration>,
}

impl ApiError {
    pub(super) fn from_response(what: &str, status: u16, headers: &HeaderMap, body: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Envelope {
            error: Inner,
        }
        #[derive(Deserialize)]
        struct Inner {
            code: String,
            #[serde(default)]
            message: String,
        }
        let (code, message) = match serde_json::from_slice::<Envelope>(body) {
            Ok(envelope) => (envelope.error.code, envelope.error.message),
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                (String::new(), settings::truncate(text.trim(), 300))
            }
        };
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        let correlation_id = header("x-correlation-id").map(|id| settings::truncate(id, 100));
        ApiError {
            what: what.to_string(),
            status,
            code,
            message: settings::truncate(&message, 500),
            correlation_id,
            retry_after: client::retry_after(headers),
        }
    }

    pub(super) fn is_rate_limit(&self) -> bool {
        self.status == 429 || self.code == "rate_limit_exceeded"
    }

    /// Maps the answer on its code (the stable part), then on its status.
    pub(super) fn into_error(self) -> Error {
        let code = if self.code.is_empty() {
            "unknown"
        } else {
            self.code.as_str()
        };
        let mut message = format!(
            "{}: {code}: {} (HTTP {}",
            self.what, self.message, self.status
        );
        if let Some(id) = &self.correlation_id {
            message.push_str(&format!(", correlation id {id}"));
        }
        message.push(')');
        classify(code, Some(self.status)).error(message, self.retry_after)
    }
}

/// Why a request failed: an API error answer still to interpret, or an error already mapped.
#[derive(Debug)]
pub(super) enum Failure {
    Api(ApiError),
    Mapped(Error),
}

impl Failure {
    pub(super) fn into_error(self) -> Error {
        match self {
            Failure::Api(api) => api.into_error(),
            Failure::Mapped(error) => error,
        }
    }
}

/// A server as far as berth reads it. Unknown fields are ignored.
#[derive(Debug, Deserialize)]
pub(super) struct Server {
    pub(super) id: u64,
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) status: String,
    #[serde(default)]
    pub(super) created: Option<String>,
    #[serde(default)]
    pub(super) public_net: Option<PublicNet>,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) server_type: Option<Named>,
    #[serde(default)]
    pub(super) location: Option<Named>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct PublicNet {
    #[serde(default)]
    pub(super) ipv4: Option<Address>,
    #[serde(default)]
    pub(super) ipv6: Option<Address>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Address {
    pub(super) ip: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct Named {
    pub(super) name: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct ServerList {
    pub(super) servers: Vec<Server>,
    #[serde(default)]
    pub(super) meta: Option<Meta>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Meta {
    #[serde(default)]
    pub(super) pagination: Option<Pagination>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Pagination {
    #[serde(default)]
    pub(super) next_page: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct CreateReply {
    pub(super) server: Server,
    /// The `create_server` action; its end says whether the server really came to be.
    #[serde(default)]
    pub(super) action: Option<Action>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ServerReply {
    pub(super) server: Server,
}

/// An action as far as berth reads it: `status` is `running`, `success` or `error`.
#[derive(Debug, Deserialize)]
pub(super) struct Action {
    pub(super) id: u64,
    pub(super) status: String,
    #[serde(default)]
    pub(super) error: Option<ActionError>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ActionError {
    #[serde(default)]
    pub(super) code: String,
    #[serde(default)]
    pub(super) message: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct ActionReply {
    pub(super) action: Action,
}

#[derive(Debug, Deserialize)]
pub(super) struct ServerTypes {
    pub(super) server_types: Vec<ServerType>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ServerType {
    pub(super) name: String,
    #[serde(default)]
    pub(super) prices: Vec<LocationPrice>,
}

#[derive(Debug, Deserialize)]
pub(super) struct LocationPrice {
    pub(super) location: String,
    pub(super) price_hourly: PricePair,
}

#[derive(Debug, Deserialize)]
pub(super) struct PricePair {
    pub(super) net: String,
    pub(super) gross: String,
}

impl Server {
    /// The runner of this server, for `tenant` (whose label the caller checked: the label
    /// holds the [`label_value`] of the name, not the name) and the lease its label names
    /// (`lease_id` when it names none).
    pub(super) fn into_runner(self, tenant: &str, lease_id: &str) -> Runner {
        let public_net = self.public_net.unwrap_or_default();
        let ipv4 = public_net.ipv4.map(|address| address.ip);
        let ipv6 = public_net.ipv6.map(|address| address.ip);
        let mut metadata = BTreeMap::from([
            ("name".to_string(), self.name),
            ("status".to_string(), self.status),
        ]);
        for (key, value) in [
            ("server_type", self.server_type.map(|named| named.name)),
            ("location", self.location.map(|named| named.name)),
            ("created", self.created),
            ("ipv6", ipv6.clone()),
        ] {
            if let Some(value) = value {
                metadata.insert(key.to_string(), value);
            }
        }
        Runner {
            id: self.id.to_string(),
            tenant: tenant.to_string(),
            lease_id: self
                .labels
                .get(LABEL_LEASE)
                .cloned()
                .unwrap_or_else(|| lease_id.to_string()),
            address: ipv4.or_else(|| ipv6.as_deref().and_then(ipv6_host)),
            metadata,
            ready: false,
        }
    }
}
