//! The GitHub integration: `workflow_job` deliveries turn into lease requests and releases.
//!
//! A delivery is verified (`X-Hub-Signature-256`, HMAC-SHA256 of the raw body with the
//! tenant's secret, compared in constant time) before its body is parsed. Then:
//!
//! - `queued`: the pool whose labels are all among the job's labels (compared without case;
//!   the most specific such pool wins; a pool without labels never matches) gets a lease
//!   request labelled with the repository, run id and job id, idempotent by job id;
//! - `completed`: the job's lease is released (a queued one is canceled);
//! - other actions and events: ignored.
//!
//! Each `X-GitHub-Delivery` id is remembered for 7 days: a redelivery changes nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::objects::{Ctx, Error};
use crate::tenant::{GithubDelivery, Rejection, Response};
use crate::wire::{self, LeaseState};

use super::TenantBroker;
use crate::webhooks::github::signature_matches;

/// Deliveries are remembered this long.
pub const DELIVERY_MEMORY_MS: i64 = 7 * 24 * 3_600_000;
/// Default queue wait of a job's lease request.
const DEFAULT_WAIT_S: i64 = 3_600;

/// The stored integration (kv `github`); the secret is sealed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Config {
    sealed_secret: Vec<u8>,
    ttl_s: Option<i64>,
    wait_s: Option<i64>,
    idle_timeout_s: Option<i64>,
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
}

#[derive(Deserialize)]
struct Repository {
    full_name: String,
}

impl TenantBroker {
    pub(super) fn github_view(&self) -> wire::Github {
        match &self.github {
            Some(config) => wire::Github {
                configured: true,
                ttl_s: config.ttl_s,
                wait_s: config.wait_s.unwrap_or(DEFAULT_WAIT_S),
                idle_timeout_s: config.idle_timeout_s,
            },
            None => wire::Github {
                configured: false,
                ttl_s: None,
                wait_s: DEFAULT_WAIT_S,
                idle_timeout_s: None,
            },
        }
    }

    pub(super) async fn put_github(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        put: wire::GithubPut,
    ) -> Result<Result<Response, Rejection>, Error> {
        if put.secret.is_empty() || put.secret.len() > 256 {
            return Ok(Err(Rejection::Invalid(
                "`secret` must be 1–256 characters".into(),
            )));
        }
        let limits = &self.book.limits;
        if put
            .ttl_s
            .is_some_and(|ttl| !(1..=limits.max_ttl_s).contains(&ttl))
        {
            return Ok(Err(Rejection::Invalid(format!(
                "`ttl_s` must be between 1 and {} (max_ttl_s)",
                limits.max_ttl_s
            ))));
        }
        if put.wait_s.is_some_and(|wait| !(0..=86_400).contains(&wait)) {
            return Ok(Err(Rejection::Invalid(
                "`wait_s` must be between 0 and 86400".into(),
            )));
        }
        if put
            .idle_timeout_s
            .is_some_and(|idle| !(1..=30 * 86_400).contains(&idle))
        {
            return Ok(Err(Rejection::Invalid(
                "`idle_timeout_s` must be between 1 and 2592000".into(),
            )));
        }
        let sealed_secret = ctx
            .env()
            .keys
            .seal(&self.name, "github", put.secret.as_bytes());
        let config = Config {
            sealed_secret,
            ttl_s: put.ttl_s,
            wait_s: put.wait_s,
            idle_timeout_s: put.idle_timeout_s,
        };
        ctx.kv_put("github", &config)?;
        self.github = Some(config);
        Ok(Ok(Response::Github(self.github_view())))
    }

    pub(super) async fn github_delivery(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        delivery: GithubDelivery,
    ) -> Result<Result<Response, Rejection>, Error> {
        let Some(config) = self.github.clone() else {
            return Ok(Err(Rejection::NotFound(
                "the GitHub integration of this tenant is not configured".into(),
            )));
        };
        let secret = ctx
            .env()
            .keys
            .open(&self.name, "github", &config.sealed_secret)
            .map_err(|err| Error::Other(anyhow::anyhow!("github secret: {err}")))?;
        if !signature_matches(&secret, &delivery.body, delivery.signature.as_deref()) {
            return Ok(Err(Rejection::BadSignature));
        }
        let outcome = |outcome: &str, lease: Option<wire::Lease>, detail: Option<String>| {
            Ok(Ok(Response::GithubOutcome(wire::GithubOutcome {
                outcome: outcome.to_owned(),
                lease,
                detail,
            })))
        };
        if delivery.event != "workflow_job" {
            return outcome(
                "ignored",
                None,
                Some(format!(
                    "event `{}` is not handled",
                    delivery.event.chars().take(64).collect::<String>()
                )),
            );
        }
        let now = ctx.now_ms();
        let seen: Option<(String,)> =
            sqlx::query_as("SELECT outcome FROM github_deliveries WHERE id = ?1")
                .bind(&delivery.delivery)
                .fetch_optional(ctx.db().await?)
                .await?;
        if let Some((earlier,)) = seen {
            return outcome(
                "duplicate",
                None,
                Some(format!("delivery already handled ({earlier})")),
            );
        }
        let payload: Payload = match serde_json::from_slice(&delivery.body) {
            Ok(payload) => payload,
            Err(err) => {
                return Ok(Err(Rejection::Invalid(format!(
                    "not a workflow_job payload: {err}"
                ))));
            }
        };
        let job_label = payload.workflow_job.id.to_string();
        let result = match payload.action.as_str() {
            "queued" => {
                self.github_queued(ctx, &config, &payload, &job_label)
                    .await?
            }
            "completed" => {
                let lease_id = self
                    .book
                    .open()
                    .find(|l| l.labels.get("github-job-id") == Some(&job_label))
                    .map(|l| l.id.clone());
                match lease_id {
                    Some(id) => match self.release(ctx, &id, wire::EndReason::RunnerDone).await? {
                        Ok(Response::Lease(lease)) => ("released", Some(lease), None),
                        Ok(_) => ("released", None, None),
                        Err(rejection) => return Ok(Err(rejection)),
                    },
                    None => (
                        "ignored",
                        None,
                        Some("no open lease for this job".to_owned()),
                    ),
                }
            }
            other => (
                "ignored",
                None,
                Some(format!(
                    "action `{}` is not handled",
                    other.chars().take(64).collect::<String>()
                )),
            ),
        };
        if matches!(result.0, "leased" | "queued" | "released" | "ignored") {
            ctx.write(
                "INSERT OR REPLACE INTO github_deliveries (id, outcome, at) VALUES (?, ?, ?)",
            )
            .bind(delivery.delivery.clone())
            .bind(result.0)
            .bind(now);
            self.prunable(now.saturating_add(DELIVERY_MEMORY_MS));
        }
        outcome(result.0, result.1, result.2)
    }

    async fn github_queued(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        config: &Config,
        payload: &Payload,
        job_label: &str,
    ) -> Result<(&'static str, Option<wire::Lease>, Option<String>), Error> {
        let job_labels: Vec<String> = payload
            .workflow_job
            .labels
            .iter()
            .map(|l| l.to_lowercase())
            .collect();
        let pool = self
            .book
            .pools
            .values()
            .filter(|pool| {
                !pool.labels.is_empty()
                    && pool
                        .labels
                        .iter()
                        .all(|l| job_labels.contains(&l.to_lowercase()))
            })
            .max_by(|a, b| {
                a.labels
                    .len()
                    .cmp(&b.labels.len())
                    .then_with(|| b.name.cmp(&a.name))
            })
            .map(|pool| pool.name.clone());
        let Some(pool) = pool else {
            return Ok((
                "ignored",
                None,
                Some("no pool's labels are all among the job's labels".to_owned()),
            ));
        };
        let mut labels = BTreeMap::new();
        labels.insert("github-job-id".to_owned(), job_label.to_owned());
        if let Some(run_id) = payload.workflow_job.run_id {
            labels.insert("github-run-id".to_owned(), run_id.to_string());
        }
        if let Some(repository) = &payload.repository {
            labels.insert(
                "github-repository".to_owned(),
                repository.full_name.chars().take(255).collect(),
            );
        }
        let request = wire::LeaseRequest {
            pool,
            ttl_s: config.ttl_s,
            idle_timeout_s: config.idle_timeout_s,
            wait_s: Some(config.wait_s.unwrap_or(DEFAULT_WAIT_S)),
            labels,
        };
        // Idempotent by job id: a second `queued` delivery of the same job (another delivery
        // id) finds the same lease.
        let key = format!("github-job-{job_label}");
        Ok(match self.request_lease(ctx, request, Some(key)).await? {
            Ok(Response::LeaseRequested { lease, queued, .. }) => {
                let kind = if queued || lease.state == LeaseState::Queued {
                    "queued"
                } else {
                    "leased"
                };
                (kind, Some(lease), None)
            }
            Ok(_) => ("leased", None, None),
            Err(rejection) => ("refused", None, Some(rejection.to_string())),
        })
    }
}
