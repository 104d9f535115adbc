//! The GitHub integration: `workflow_job` deliveries turn into lease requests and releases.
//!
//! The API verifies a delivery (`X-Hub-Signature-256`, HMAC-SHA256 of the raw body with the
//! tenant's secret, which it reads with the read-only [`GithubSecret`]) and parses it before
//! sending it here, so an unsigned request never reaches the write path. Then:
//!
//! - `queued`: the pool whose labels are all among the job's labels (compared without case;
//!   the most specific such pool wins; a pool without labels never matches) gets a lease
//!   request labelled with the repository, run id and job id, idempotent by job id;
//! - `in_progress`: the runner GitHub names (`runner_name`, `runner_id`) is recorded on the
//!   job's lease (`github` in the lease answer);
//! - `completed`: the job's lease is released (a queued one is canceled);
//! - other actions: ignored.
//!
//! # Deduplication
//!
//! Each handled `(job id, action)` is remembered for 7 days (`github_jobs`): a second delivery
//! of it is a `duplicate` and changes nothing. Not the `X-GitHub-Delivery` id: GitHub does not
//! sign it, so a captured `queued` payload resent under a new delivery id would otherwise make
//! a second lease once the lease request's 24 h idempotency key expired. A `completed`
//! redelivery is a duplicate too (the first one released the lease, or found none; doing it
//! again could only touch the job's lease once more). Deliveries arrive in no guaranteed
//! order, so a `queued` that comes after its job's `completed` is ignored. A `queued` job
//! created (`workflow_job.created_at`, signed) more than 7 days ago is ignored too, whether
//! or not it is still remembered: that closes the window after the memory expires.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::objects::{Error, Message};
use crate::webhooks::github::{Secret, WorkflowJob};
use crate::wire::{self, EndReason, LeaseState};

use super::super::Ctx;
use super::super::broker::TenantBroker;
use super::super::jit::{self, connection::Connection};
use super::super::rejection::{Failure, Rejection};
use super::{release, request};

/// Handled jobs are remembered this long.
pub const DELIVERY_MEMORY_MS: i64 = 7 * 24 * 3_600_000;
/// Default queue wait of a job's lease request.
const DEFAULT_WAIT_S: i64 = 3_600;

/// The stored integration (kv `github`); the secret and the credentials are sealed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    sealed_secret: Vec<u8>,
    ttl_s: Option<i64>,
    wait_s: Option<i64>,
    idle_timeout_s: Option<i64>,
    /// The connection that registers just-in-time runners; absent in configurations stored
    /// before it existed, and in webhook-only ones.
    #[serde(default)]
    connection: Option<Connection>,
}

impl Config {
    /// Moves the secret and the credentials to the current master key if they open only under
    /// the previous one; whether anything changed.
    pub fn reseal(&mut self, keys: &crate::secrets::Keys, tenant: &str) -> bool {
        let mut changed = false;
        if let Some(fresh) = keys.reseal(tenant, "github", &self.sealed_secret) {
            self.sealed_secret = fresh;
            changed = true;
        }
        if let Some(connection) = &mut self.connection {
            changed |= connection.reseal(keys, tenant);
        }
        changed
    }

    /// The connection, if one is configured.
    pub fn connection(&self) -> Option<&Connection> {
        self.connection.as_ref()
    }
}

/// Configures the GitHub integration.
#[derive(Debug)]
pub struct PutGithub {
    pub github: wire::GithubPut,
}

impl Message for PutGithub {
    type Reply = Result<wire::Github, Rejection>;
}

/// The GitHub integration (without its secret).
#[derive(Debug)]
pub struct GetGithub;

impl Message for GetGithub {
    type Reply = Result<wire::Github, Rejection>;
    const READ_ONLY: bool = true;
}

/// The integration's webhook secret, opened, so that the API can verify a delivery's
/// signature before the delivery reaches the object's write path. `None` when the
/// integration is not configured. (`Secret`'s `Debug` redacts it.)
#[derive(Debug)]
pub struct GithubSecret;

impl Message for GithubSecret {
    type Reply = Result<Option<Secret>, Rejection>;
    const READ_ONLY: bool = true;
}

/// A `workflow_job` delivery whose signature the caller verified with the [`GithubSecret`].
#[derive(Debug)]
pub struct GithubDelivery {
    /// `X-GitHub-Delivery`, for people reading the remembered jobs: GitHub does not sign it,
    /// so deliveries are deduplicated by job and action instead.
    pub delivery: String,
    /// The parsed payload.
    pub job: WorkflowJob,
}

impl Message for GithubDelivery {
    type Reply = Result<wire::GithubOutcome, Rejection>;
}

pub async fn put(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    put: PutGithub,
) -> Result<wire::Github, Failure> {
    let put = put.github;
    crate::wire::bounds::GITHUB_SECRET
        .check_str("secret", &put.secret)
        .map_err(Rejection::Invalid)?;
    let max_ttl_s = t.book.limits().max_ttl_s;
    if put.ttl_s.is_some_and(|ttl| !(1..=max_ttl_s).contains(&ttl)) {
        return Err(Rejection::Invalid(format!(
            "`ttl_s` must be between 1 and {max_ttl_s} (max_ttl_s)"
        ))
        .into());
    }
    if put.wait_s.is_some_and(|wait| !(0..=86_400).contains(&wait)) {
        return Err(Rejection::Invalid("`wait_s` must be between 0 and 86400".into()).into());
    }
    if put
        .idle_timeout_s
        .is_some_and(|idle| !(1..=30 * 86_400).contains(&idle))
    {
        return Err(
            Rejection::Invalid("`idle_timeout_s` must be between 1 and 2592000".into()).into(),
        );
    }
    let env = ctx.env().clone();
    let connection = Connection::from_put(
        &put,
        &env.keys,
        &t.name,
        env.providers.allow_private_network,
    )
    .map_err(Rejection::Invalid)?;
    let sealed_secret = env.keys.seal(&t.name, "github", put.secret.as_bytes());
    let config = Config {
        sealed_secret,
        ttl_s: put.ttl_s,
        wait_s: put.wait_s,
        idle_timeout_s: put.idle_timeout_s,
        connection,
    };
    ctx.kv_put("github", &config)?;
    let connected = config.connection.is_some();
    t.github = Some(config);
    jit::connect(t, &env);
    if connected {
        // Registrations left from before (or from another setup) are looked for now.
        t.upkeep.account_changed(ctx.now_ms());
    }
    Ok(view(t))
}

pub async fn get(
    t: &mut TenantBroker,
    _: &mut Ctx<'_>,
    _: GetGithub,
) -> Result<wire::Github, Failure> {
    Ok(view(t))
}

pub async fn secret(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    _: GithubSecret,
) -> Result<Option<Secret>, Failure> {
    let Some(config) = &t.github else {
        return Ok(None);
    };
    let secret = ctx
        .env()
        .keys
        .open(&t.name, "github", &config.sealed_secret)
        .map_err(|err| Error::Other(anyhow::anyhow!("github secret: {err}")))?;
    Ok(Some(Secret::new(secret)))
}

pub async fn delivery(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    delivery: GithubDelivery,
) -> Result<wire::GithubOutcome, Failure> {
    let Some(config) = t.github.clone() else {
        return Err(Rejection::NotFound(
            "the GitHub integration of this tenant is not configured".into(),
        )
        .into());
    };
    let outcome =
        |outcome: &str, lease: Option<wire::Lease>, detail: Option<String>| wire::GithubOutcome {
            outcome: outcome.to_owned(),
            lease,
            detail,
        };
    let now = ctx.now_ms();
    let job = &delivery.job;
    let action: String = job.action.chars().take(64).collect();
    if action == "queued"
        && job
            .created_at
            .is_some_and(|at| at < now.saturating_sub(DELIVERY_MEMORY_MS))
    {
        // Judged the same way at every redelivery, so nothing needs remembering.
        return Ok(outcome(
            "ignored",
            None,
            Some("the job was created more than 7 days ago".to_owned()),
        ));
    }
    let seen: Vec<(String, String)> = ctx.db()?.query(
        "SELECT action, outcome FROM github_jobs WHERE job_id = ?1 AND action IN (?2, 'completed')",
    )
    .bind(job.id)
    .bind(&action)
    .fetch_all()?;
    if let Some((_, earlier)) = seen.iter().find(|(seen, _)| *seen == action) {
        return Ok(outcome(
            "duplicate",
            None,
            Some(format!(
                "job {} `{action}` was handled already ({earlier})",
                job.id
            )),
        ));
    }
    let job_label = job.id.to_string();
    let (kind, lease, detail) = match action.as_str() {
        "queued" if !seen.is_empty() => (
            "ignored",
            None,
            Some("the job has completed already".to_owned()),
        ),
        "queued" => queued(t, ctx, &config, job, &job_label).await?,
        "in_progress" => {
            let lease_id = t
                .book
                .open()
                .find(|l| l.labels.get("github-job-id") == Some(&job_label))
                .map(|l| l.id.clone());
            match lease_id {
                Some(id) => {
                    jit::job_started(t, ctx, &id, job)?;
                    let lease = t.book.get(&id).map(|l| t.lease_view(l));
                    ("recorded", lease, None)
                }
                None => (
                    "ignored",
                    None,
                    Some("no open lease for this job".to_owned()),
                ),
            }
        }
        "completed" => {
            let lease_id = t
                .book
                .open()
                .find(|l| l.labels.get("github-job-id") == Some(&job_label))
                .map(|l| l.id.clone());
            match lease_id {
                Some(id) => {
                    let lease = release::end(t, ctx, &id, EndReason::RunnerDone).await?;
                    ("released", Some(lease), None)
                }
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
            Some(format!("action `{other}` is not handled")),
        ),
    };
    // A refused request is not remembered: a redelivery may find room.
    if matches!(
        kind,
        "leased" | "queued" | "released" | "ignored" | "recorded"
    ) {
        ctx.write(
            "INSERT OR REPLACE INTO github_jobs (job_id, action, delivery, outcome, at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(job.id)
        .bind(action)
        .bind(delivery.delivery.clone())
        .bind(kind)
        .bind(now);
        t.upkeep.prunable(now.saturating_add(DELIVERY_MEMORY_MS));
    }
    Ok(outcome(kind, lease, detail))
}

/// A `queued` job: a lease request on the pool whose labels match the job's.
async fn queued(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    config: &Config,
    job: &WorkflowJob,
    job_label: &str,
) -> Result<(&'static str, Option<wire::Lease>, Option<String>), Error> {
    let job_labels: Vec<String> = job.labels.iter().map(|l| l.to_lowercase()).collect();
    let pool = t
        .book
        .pools()
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
    if let Some(run_id) = job.run_id {
        labels.insert("github-run-id".to_owned(), run_id.to_string());
    }
    if let Some(repository) = &job.repository {
        labels.insert(
            "github-repository".to_owned(),
            repository.chars().take(255).collect(),
        );
    }
    let lease_request = wire::LeaseRequest {
        pool,
        ttl_s: config.ttl_s,
        idle_timeout_s: config.idle_timeout_s,
        wait_s: Some(config.wait_s.unwrap_or(DEFAULT_WAIT_S)),
        labels,
    };
    // Also idempotent by job id, a second line of defence behind `github_jobs`.
    let key = format!("github-job-{job_label}");
    let message = request::RequestLease {
        request: lease_request,
        idempotency_key: Some(key),
    };
    Ok(match request::request(t, ctx, message).await {
        Ok(requested) => {
            let kind = if requested.queued || requested.lease.state == LeaseState::Queued {
                "queued"
            } else {
                "leased"
            };
            (kind, Some(requested.lease), None)
        }
        Err(Failure::Rejected(rejection)) => ("refused", None, Some(rejection.to_string())),
        Err(Failure::Failed(error)) => return Err(error),
    })
}

/// The integration as the API shows it.
fn view(t: &TenantBroker) -> wire::Github {
    match &t.github {
        Some(config) => wire::Github {
            configured: true,
            ttl_s: config.ttl_s,
            wait_s: config.wait_s.unwrap_or(DEFAULT_WAIT_S),
            idle_timeout_s: config.idle_timeout_s,
            connection: config.connection.as_ref().map(Connection::view),
        },
        None => wire::Github {
            configured: false,
            ttl_s: None,
            wait_s: DEFAULT_WAIT_S,
            idle_timeout_s: None,
            connection: None,
        },
    }
}
