//! GitHub's webhook deliveries at the edge: the signature
//! (`X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>` over the raw body, compared
//! in constant time), the tenant's opened [`Secret`] that checks it, and the parts of a
//! `workflow_job` payload berth uses ([`WorkflowJob`]).
//!
//! The API verifies a delivery here, before it reaches the tenant object's write path, and
//! hands the object only a verified, parsed job.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// A tenant's GitHub webhook secret, opened from its sealed form for one verification. Its
/// `Debug` never shows the bytes, so it cannot reach a log by accident.
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps the opened secret.
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    /// Whether `header` (`X-Hub-Signature-256`) signs `body` with this secret.
    pub fn verifies(&self, body: &[u8], header: Option<&str>) -> bool {
        signature_matches(&self.0, body, header)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What berth reads of a `workflow_job` payload (GitHub's reference:
/// `shared/reference/github-workflow-job.md` §4). Unknown fields are ignored: GitHub adds some
/// over time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkflowJob {
    /// `action`: `queued`, `waiting`, `in_progress`, `completed`, or a newer one.
    pub action: String,
    /// `workflow_job.id`.
    pub id: i64,
    /// `workflow_job.run_id`.
    pub run_id: Option<i64>,
    /// `workflow_job.labels` (the job's `runs-on`).
    pub labels: Vec<String>,
    /// `repository.full_name`.
    pub repository: Option<String>,
    /// `workflow_job.created_at` in Unix ms, when present and RFC 3339.
    pub created_at: Option<i64>,
    /// `workflow_job.runner_name`: the runner that took the job (`in_progress`, `completed`).
    pub runner_name: Option<String>,
    /// `workflow_job.runner_id`.
    pub runner_id: Option<i64>,
}

#[derive(Deserialize)]
struct Payload {
    action: String,
    workflow_job: Job,
    #[serde(default)]
    repository: Option<Repository>,
}

#[derive(Deserialize)]
struct Job {
    id: i64,
    #[serde(default)]
    run_id: Option<i64>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    runner_name: Option<String>,
    #[serde(default)]
    runner_id: Option<i64>,
}

#[derive(Deserialize)]
struct Repository {
    full_name: String,
}

impl WorkflowJob {
    /// Parses a `workflow_job` delivery's body.
    ///
    /// # Errors
    ///
    /// A message for the sender when the body is not such a payload.
    pub fn parse(body: &[u8]) -> Result<WorkflowJob, String> {
        let payload: Payload = serde_json::from_slice(body)
            .map_err(|err| format!("not a workflow_job payload: {err}"))?;
        Ok(WorkflowJob {
            action: payload.action,
            id: payload.workflow_job.id,
            run_id: payload.workflow_job.run_id,
            labels: payload.workflow_job.labels,
            repository: payload.repository.map(|r| r.full_name),
            created_at: payload
                .workflow_job
                .created_at
                .and_then(|at| chrono::DateTime::parse_from_rfc3339(&at).ok())
                .map(|at| at.timestamp_millis()),
            runner_name: payload
                .workflow_job
                .runner_name
                .map(|name| name.chars().filter(|c| !c.is_control()).take(255).collect()),
            runner_id: payload.workflow_job.runner_id,
        })
    }
}

/// Whether `header` is `sha256=<hex HMAC-SHA256(secret, body)>`, compared in constant time.
pub fn signature_matches(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(header) = header else { return false };
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("BUG: HMAC takes any key length");
    mac.update(body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    expected.as_bytes().ct_eq(header.trim().as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's documented test vector and ours.
    #[test]
    fn signature_vectors() {
        assert!(signature_matches(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            Some("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
        ));
        let body =
            br#"{"action":"queued","workflow_job":{"id":1,"labels":["self-hosted","linux"]}}"#;
        assert!(signature_matches(
            b"berth-gh-test-secret",
            body,
            Some("sha256=1b719581f806cb2ad3fcc254445da0bf72bec0f2ce591bfba3e734b826fd6bf6")
        ));
        assert!(!signature_matches(
            b"berth-gh-test-secret",
            body,
            Some("sha256=00")
        ));
        assert!(!signature_matches(b"berth-gh-test-secret", body, None));
        assert!(!signature_matches(
            b"other",
            body,
            Some("sha256=1b719581f806cb2ad3fcc254445da0bf72bec0f2ce591bfba3e734b826fd6bf6")
        ));
        let secret = Secret::new(b"berth-gh-test-secret".to_vec());
        assert!(secret.verifies(
            body,
            Some("sha256=1b719581f806cb2ad3fcc254445da0bf72bec0f2ce591bfba3e734b826fd6bf6")
        ));
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    }

    /// The fields berth uses, from the reference's `queued` example shape; the rest ignored.
    #[test]
    fn parses_workflow_jobs() {
        let body = br#"{"action":"queued","workflow_job":{"id":30433642207,"run_id":11289937455,
            "labels":["self-hosted","linux"],"created_at":"2026-11-27T10:00:00Z","steps":[]},
            "repository":{"full_name":"acme/widgets","private":true},"sender":{"login":"octocat"}}"#;
        let job = WorkflowJob::parse(body).expect("a workflow_job payload");
        assert_eq!(
            job,
            WorkflowJob {
                action: "queued".into(),
                id: 30_433_642_207,
                run_id: Some(11_289_937_455),
                labels: vec!["self-hosted".into(), "linux".into()],
                repository: Some("acme/widgets".into()),
                created_at: Some(1_795_773_600_000),
                runner_name: None,
                runner_id: None,
            }
        );
        let minimal =
            br#"{"action":"queued","workflow_job":{"id":1,"labels":["self-hosted","linux"]}}"#;
        assert_eq!(
            WorkflowJob::parse(minimal).expect("minimal").created_at,
            None
        );
        assert!(WorkflowJob::parse(br#"{"zen":"Keep it logically awesome."}"#).is_err());
    }
}
