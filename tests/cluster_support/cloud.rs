//! A fake cloud behind berth's `http` provider protocol (providers/README.md), shared by every
//! node of a test cluster: it records every machine made and destroyed, so the suite can tell
//! whether a runner leaked, was made twice for one lease, or outnumbered a tenant's cap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};

/// What the cloud has done.
#[derive(Default)]
pub struct Record {
    /// Machines alive now, by lease id.
    pub live: HashMap<String, Value>,
    /// Machines ever made per lease (more than one: the lease's runner was made twice).
    pub made: HashMap<String, u32>,
    /// Destroys that removed a machine.
    pub destroyed: u64,
}

impl Record {
    /// Machines alive now per tenant.
    pub fn live_by_tenant(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for machine in self.live.values() {
            let tenant = machine["tenant"].as_str().unwrap_or_default().to_owned();
            *counts.entry(tenant).or_default() += 1;
        }
        counts
    }
}

pub type Cloud = Arc<Mutex<Record>>;

/// Serves the cloud on 127.0.0.1; returns its base URL.
pub async fn start(cloud: Cloud) -> String {
    let app = axum::Router::new()
        .route("/create", post(create))
        .route("/destroy", post(destroy))
        .route("/list", post(list))
        .route(
            "/price",
            post(|| async { Json(json!({ "hourly_price_micros": null })) }),
        )
        .with_state(cloud);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the cloud");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// Idempotent by lease: a second create of a live machine answers the same machine.
async fn create(State(cloud): State<Cloud>, Json(spec): Json<Value>) -> Json<Value> {
    let lease = spec["lease_id"].as_str().unwrap_or_default().to_owned();
    let mut record = cloud.lock().expect("cloud");
    if let Some(machine) = record.live.get(&lease) {
        return Json(machine.clone());
    }
    let made = record.made.entry(lease.clone()).or_default();
    *made += 1;
    let machine = json!({
        "id": format!("vm-{lease}-{made}"),
        "tenant": spec["tenant"],
        "lease_id": lease,
        "installation_id": spec["installation_id"],
        "address": "192.0.2.1",
        "ready": true,
    });
    record.live.insert(lease, machine.clone());
    Json(machine)
}

/// Removes the lease's machine (by id when given); a machine already gone is a success.
async fn destroy(State(cloud): State<Cloud>, Json(request): Json<Value>) -> Json<Value> {
    let lease = request["lease_id"].as_str().unwrap_or_default();
    let mut record = cloud.lock().expect("cloud");
    let matches = record.live.get(lease).is_some_and(|machine| {
        machine["tenant"] == request["tenant"]
            && (request["id"].is_null() || machine["id"] == request["id"])
    });
    if matches {
        record.live.remove(lease);
        record.destroyed += 1;
    }
    Json(json!({}))
}

async fn list(State(cloud): State<Cloud>, Json(request): Json<Value>) -> Json<Value> {
    let record = cloud.lock().expect("cloud");
    let items: Vec<Value> = record
        .live
        .values()
        .filter(|machine| machine["tenant"] == request["tenant"])
        .cloned()
        .collect();
    Json(json!({ "items": items }))
}
