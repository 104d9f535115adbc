//! Disk trouble on the real binary: the disk "fills up" (the file-size limit of the running
//! process drops to 0 with `prlimit`, so every write fails with `EFBIG` as it would with
//! `ENOSPC`), then space returns.
//!
//! While the disk is full, every write answers 503 problem+json with `Retry-After` (never a
//! 2xx that was not stored, never a 500) and berth logs why; afterwards berth serves writes
//! again without a restart, and exactly the writes it acknowledged are stored.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::Server;

/// Sets the soft file-size limit of `pid` (`0`: nothing can be written; `unlimited`).
fn set_fsize(pid: u32, soft: &str) {
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--fsize={soft}:unlimited"))
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit --fsize={soft} failed");
}

async fn request_lease(server: &Server) -> (u16, Value) {
    server
        .call(
            "POST",
            "/v1/tenants/acme/leases",
            Some(json!({ "pool": "small", "ttl_s": 3600 })),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_answers_503_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    // SIGXFSZ ignored, as a server should run: a write past the limit then fails with EFBIG
    // instead of killing the process.
    let server = Server::start_after(&dir.path().join("data"), &["--enable-fake"], "trap '' XFSZ");
    let (status, body) = server
        .call(
            "POST",
            "/v1/tenants",
            Some(json!({ "name": "acme", "limits": { "max_active_leases": 100 } })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let cloud = format!("disk-{}", std::process::id());
    let (status, body) = server
        .call(
            "PUT",
            "/v1/tenants/acme/providers/fake",
            Some(json!({ "kind": "fake", "config": { "cloud": cloud } })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .call(
            "PUT",
            "/v1/tenants/acme/pools/small",
            Some(json!({ "provider": "fake", "machine_type": "s", "hourly_price_micros": 1000 })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut acknowledged = Vec::new();
    for _ in 0..3 {
        let (status, lease) = request_lease(&server).await;
        assert_eq!(status, 201, "{lease}");
        acknowledged.push(lease["id"].as_str().expect("id").to_owned());
    }

    set_fsize(server.child.id(), "0");
    let mut refused = 0;
    for _ in 0..5 {
        let (status, body) = request_lease(&server).await;
        match status {
            201 => acknowledged.push(body["id"].as_str().expect("id").to_owned()),
            503 => {
                refused += 1;
                assert_eq!(body["status"], 503, "problem+json: {body}");
                assert!(body["code"].is_string(), "a problem code: {body}");
            }
            other => panic!("a full disk answered {other}: {body}"),
        }
    }
    assert!(refused > 0, "no write was refused while the disk was full");
    // Reads need no space: the live tenant answers them.
    let (status, body) = server.call("GET", "/v1/tenants/acme/leases", None).await;
    assert!(
        matches!(status, 200 | 503),
        "a read answered {status}: {body}"
    );

    set_fsize(server.child.id(), "unlimited");
    let mut recovered = None;
    for _ in 0..50 {
        let (status, lease) = request_lease(&server).await;
        if status == 201 {
            recovered = Some(lease["id"].as_str().expect("id").to_owned());
            break;
        }
        assert_eq!(status, 503, "{lease}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    acknowledged.push(recovered.expect("berth writes again once space returns"));

    // Exactly the acknowledged leases exist, also after a restart from disk.
    let log = server.drain_log();
    assert!(
        log.iter()
            .any(|line| line.contains("ERROR") && line.contains("commit failed")),
        "berth logged the failed commits"
    );
    let status = server.terminate();
    assert!(status.success(), "{status}");
    let server = Server::start(&dir.path().join("data"), &["--enable-fake"]);
    let (status, page) = server
        .call("GET", "/v1/tenants/acme/leases?limit=100", None)
        .await;
    assert_eq!(status, 200, "{page}");
    let mut stored: Vec<String> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|l| l["id"].as_str().expect("id").to_owned())
        .collect();
    stored.sort();
    acknowledged.sort();
    assert_eq!(
        stored, acknowledged,
        "stored leases are exactly the acknowledged ones"
    );
}
