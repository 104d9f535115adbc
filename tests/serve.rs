//! `berth serve` as a real process: it starts on a fresh data directory, answers health
//! checks, stops cleanly on SIGTERM and releases its data directory.

mod support;

use support::Server;

/// The embedded default starts on a fresh directory, answers `/healthz` and `/readyz`, and
/// exits 0 on SIGTERM, after which the directory can be served again.
#[tokio::test]
async fn serves_health_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let health: serde_json::Value = reqwest::get(format!("{}/healthz", server.url))
        .await
        .expect("healthz answers")
        .json()
        .await
        .expect("json");
    assert_eq!(health["status"], "ok");
    let ready = reqwest::get(format!("{}/readyz", server.url))
        .await
        .expect("readyz answers");
    assert_eq!(ready.status(), 200);
    assert!(dir.path().join("directory.sqlite").exists());
    assert!(server.terminate().success(), "SIGTERM exits 0");
    let again = Server::start(dir.path(), &[]);
    assert!(again.terminate().success());
}

/// A data directory gets its installation id on its first start, announces it at every
/// start, and keeps it across restarts; another data directory gets another one.
#[tokio::test]
async fn the_installation_id_is_made_once_per_data_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let id = server.installation_id.clone().expect("logged at start");
    assert!(
        id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{id}"
    );
    assert!(server.terminate().success());
    let again = Server::start(dir.path(), &[]);
    assert_eq!(again.installation_id.as_deref(), Some(id.as_str()));
    assert!(again.terminate().success());
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = Server::start(other_dir.path(), &[]);
    let other_id = other.installation_id.clone().expect("logged at start");
    assert_ne!(other_id, id);
    assert!(other.terminate().success());
}

/// Two servers on one data directory: the second refuses to start, with a clear message,
/// said once and without the error type's `io:` prefix.
#[tokio::test]
async fn second_server_on_the_same_directory_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = Server::start(dir.path(), &[]);
    let output = support::berth()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("second berth runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("in use by another berth process").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("error: data directory"), "{stderr}");
    assert!(!stderr.contains("io:"), "{stderr}");
}

/// A bad flag is a usage error: exit code 2 and a message, nothing started.
#[test]
fn bad_flag_exits_2() {
    let output = support::berth()
        .args(["serve", "--no-such-flag"])
        .output()
        .expect("berth runs");
    assert_eq!(output.status.code(), Some(2));
}
