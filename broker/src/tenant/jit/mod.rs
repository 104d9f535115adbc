//! GitHub just-in-time runners: a lease's runner registered with GitHub before its machine is
//! made, and the registration removed when the lease ends (`../shared/reference/github-jit-runners.md`).
//!
//! **Who is registered.** A lease whose pool says `github: true`, or that a `workflow_job`
//! delivery requested (label `github-job-id`), when the tenant's GitHub integration has a
//! connection ([`connection`]): its runner is registered under the lease id as its name, with
//! the pool's labels (`self-hosted` when the pool has none), in the connection's runner group.
//!
//! **At provisioning.** [`before_create`] runs where the provider create would start: with no
//! registration yet, it starts one in the background ([`Completion::Registered`]) and the
//! create waits for it; the answer's config is sealed with the tenant's keys (bound to the lease
//! id) and stored in `github_runners` in the same event that starts the create with
//! `BERTH_GITHUB_JITCONFIG` in the runner's environment. A create retried later (after a crash,
//! a timeout, a transient provider error) reuses the stored config. A registration that fails
//! is the create's failure: GitHub's refusals (4xx) fail the lease with GitHub's message,
//! rate limits and 5xx are retried with the lease's usual backoff.
//!
//! **Ready runners.** A runner already made before its lease wanted a registration (a warm
//! runner of a ready pool) gets one with [`register_taken`], the one call the ready-pool code
//! makes when a lease takes such a runner; the runner reads the config from
//! `GET /v1/runners/{lease_id}/github-jitconfig` with its runner token ([`RunnerJitConfig`])
//! and gets 404 `no_jitconfig` until it is there. A transient failure of that registration is
//! retried from the stored row (state `registering`, 2 s doubling to 5 min, 10 times); a
//! permanent one is shown on the lease (`github.last_error`) and the lease is left to its
//! owner (its runner never gets a config).
//!
//! **Removal.** When a lease ends for any reason, its registration is deleted in the
//! background ([`lease_changed`]): deleted or already gone is done; GitHub's 422 (the runner is
//! running a job) and other errors are retried with backoff (30 s doubling to 15 min, at most
//! [`REMOVE_ATTEMPTS`] times), driven by the object's alarm from the stored row, so a restart
//! or hibernation resumes them. Reconciliation ([`start_listing`]) also lists the scope's
//! registrations and removes those named after an ended lease of this tenant (never another
//! name), at most `max_orphan_destroys` per round.
//!
//! The config is a secret: it is kept only sealed, handed only to the runner (its environment,
//! or the runner route), and never put in a lease answer, event, log or error.

pub mod connection;
mod removal;

use removal::start_removal;
pub use removal::{REMOVE_ATTEMPTS, deregistered, lease_changed, listed, run_due, start_listing};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use providers::github::{Github, Jit};

use crate::objects::{Error, Message};
use crate::wire;

use super::broker::{Completion, TenantBroker};
use super::commands::leases::ended_or_missing;
use super::commands::ready::check_runner_token;
use super::lease::{Lease, Op};
use super::rejection::{Failure, Rejection};
use super::row::{self, table};
use super::{Ctx, provisioning, retry};

/// The environment variable that carries the encoded JIT config to the runner.
pub const CONFIG_VAR: &str = "BERTH_GITHUB_JITCONFIG";
/// A [`register_taken`] registration that failed transiently is retried after 2 s doubling
/// to 5 min, at most this many times.
const REGISTER_ATTEMPTS: i64 = 10;
const REGISTER_BASE_MS: i64 = 2_000;
const REGISTER_MAX_MS: i64 = 5 * 60_000;
/// One call to GitHub, before it counts as failed (transient).
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Row states (`github_runners.state`).
pub const JOB: &str = "job";
/// A registration for a runner that exists already ([`register_taken`]) failed transiently
/// and is retried at `next_attempt_at`.
pub const REGISTERING: &str = "registering";
pub const REGISTERED: &str = "registered";
pub const REMOVING: &str = "removing";
pub const REMOVED: &str = "removed";
pub const ABANDONED: &str = "abandoned";

table! {
    /// A lease's GitHub side: its registration (the config sealed) and its job's runner.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct Row in "github_runners" {
        pub lease_id: String,
        pub state: String,
        pub registration_id: Option<i64>,
        pub config: Option<Vec<u8>>,
        pub job_id: Option<i64>,
        pub runner_name: Option<String>,
        pub runner_id: Option<i64>,
        pub attempts: i64,
        pub next_attempt_at: Option<i64>,
        pub last_error: Option<String>,
        pub updated_at: i64,
    }
}

impl Row {
    pub(super) fn new(lease_id: &str, state: &str, now: i64) -> Row {
        Row {
            lease_id: lease_id.to_owned(),
            state: state.to_owned(),
            updated_at: now,
            ..Row::default()
        }
    }

    fn view(&self) -> wire::LeaseGithub {
        let registration = match self.state.as_str() {
            JOB => "none",
            other => other,
        };
        wire::LeaseGithub {
            registration: registration.to_owned(),
            registration_id: self.registration_id,
            job_id: self.job_id,
            runner_name: self.runner_name.clone(),
            runner_id: self.runner_id,
            last_error: self.last_error.clone(),
        }
    }
}

/// What the object holds of its GitHub runners: the client of its connection (built once,
/// rebuilt when the settings change; an App's token cache lives in it), the rows still in
/// play (open leases, removals pending), and the calls in flight (not stored: after a
/// restart nothing is in flight).
#[derive(Default)]
pub struct Runners {
    pub(super) client: Option<Arc<Github>>,
    pub(super) rows: BTreeMap<String, Row>,
    pub(super) registering: BTreeSet<String>,
    pub(super) removing: BTreeSet<String>,
}

impl Runners {
    /// The read of the rows still in play: registrations not yet removed, and the job rows of
    /// open leases.
    pub fn load_sql() -> String {
        format!(
            "SELECT {} FROM github_runners WHERE state IN ('registered', 'removing')
             OR (state IN ('job', 'registering') AND lease_id IN (SELECT id FROM leases WHERE state IN ('queued', 'provisioning', 'ready', 'releasing')))",
            row::select_list::<Row>()
        )
    }

    /// The runners from [`Runners::load_sql`]'s rows.
    pub fn from_rows(rows: Vec<Row>) -> Runners {
        Runners {
            rows: rows.into_iter().map(|r| (r.lease_id.clone(), r)).collect(),
            ..Runners::default()
        }
    }

    /// Whether a connection with credentials is configured (and its client could be built).
    pub fn connected(&self) -> bool {
        self.client.is_some()
    }

    /// When the next removal is due (none without a client: nothing could be done).
    pub fn next_due(&self) -> Option<i64> {
        self.client.as_ref()?;
        self.rows
            .values()
            .filter(|r| {
                (r.state == REMOVING && !self.removing.contains(&r.lease_id))
                    || (r.state == REGISTERING && !self.registering.contains(&r.lease_id))
            })
            .filter_map(|r| r.next_attempt_at)
            .min()
    }

    /// The lease's GitHub side, if it has one in play.
    pub fn view(&self, lease_id: &str) -> Option<wire::LeaseGithub> {
        self.rows.get(lease_id).map(Row::view)
    }

    /// Every sealed config in play (for re-sealing): lease id and blob.
    pub fn sealed_configs(&self) -> Vec<(String, Vec<u8>)> {
        self.rows
            .values()
            .filter_map(|r| r.config.clone().map(|c| (r.lease_id.clone(), c)))
            .collect()
    }

    /// A config re-sealed under the current key.
    pub fn resealed(
        &mut self,
        ctx: &mut Ctx<'_>,
        lease_id: &str,
        fresh: Vec<u8>,
    ) -> Result<(), Error> {
        if let Some(row) = self.rows.get_mut(lease_id) {
            row.config = Some(fresh);
            row::insert(ctx, &*row)?;
        }
        Ok(())
    }
}

/// What a config is sealed under: bound to the tenant (by the keys) and to the lease, so one
/// lease's blob never opens as another's.
fn sealed_as(lease_id: &str) -> String {
    format!("github:jit:{lease_id}")
}

/// (Re)builds the client from the stored integration: at load and after every change of it.
pub fn connect(t: &mut TenantBroker, env: &super::Env) {
    let connection = t.github.as_ref().and_then(|config| config.connection());
    t.jit.client = connection.and_then(|connection| {
        match connection.client(&env.keys, &t.name, &env.providers) {
            Ok(client) => Some(Arc::new(client)),
            Err(why) => {
                tracing::warn!(tenant = %t.name, error = %why, "the GitHub connection cannot be used");
                None
            }
        }
    });
}

/// The labels to register `lease`'s runner with, if it wants a registration.
fn wanted(t: &TenantBroker, lease: &Lease) -> Option<Vec<String>> {
    t.jit.client.as_ref()?;
    let pool = t.book.pool(&lease.pool);
    let from_job = lease.labels.contains_key("github-job-id");
    if !from_job && !pool.is_some_and(|p| p.github) {
        return None;
    }
    let mut labels: Vec<String> = pool.map(|p| p.labels.clone()).unwrap_or_default();
    if labels.is_empty() {
        labels.push("self-hosted".to_owned());
    }
    labels.truncate(100);
    Some(labels)
}

/// What a create needs from GitHub.
pub enum Prepared {
    /// No registration: create as usual.
    NotNeeded,
    /// The registration's config, for the runner's environment.
    Config(String),
    /// A registration is under way; it starts the create when it answers.
    Deferred,
    /// The lease's pool registers its runners with GitHub but the tenant has no GitHub
    /// connection: a runner made now could never take a job, so the create fails with this.
    Refused(String),
}

/// Called where `lease`'s create would start: its stored config, or a registration started.
pub fn before_create(t: &mut TenantBroker, ctx: &mut Ctx<'_>, lease: &Lease) -> Prepared {
    if lease.pool_owned() {
        // A ready pool's warm runner is registered when a lease takes it (`register_taken`,
        // from `warm::taken`), not while it waits: a JIT config is single-use.
        return Prepared::NotNeeded;
    }
    let Some(labels) = wanted(t, lease) else {
        return match t.book.pool(&lease.pool) {
            Some(pool) if pool.github && t.jit.client.is_none() => Prepared::Refused(format!(
                "pool `{}` registers its runners with GitHub (`github: true`), but this tenant's \
                 GitHub integration has no connection: set one with `berth github set --scope … \
                 --token-file …` (or App credentials)",
                lease.pool
            )),
            _ => Prepared::NotNeeded,
        };
    };
    if let Some(row) = t.jit.rows.get(&lease.id)
        && row.state == REGISTERED
        && let Some(sealed) = &row.config
    {
        match ctx.env().keys.open(&t.name, &sealed_as(&lease.id), sealed) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(config) => return Prepared::Config(config),
                Err(_) => {
                    tracing::warn!(tenant = %t.name, lease = %lease.id, "a stored JIT config is not text; registering again");
                }
            },
            Err(_) => {
                tracing::warn!(tenant = %t.name, lease = %lease.id, "a stored JIT config does not open; registering again");
            }
        }
    }
    start_registration(t, ctx, &lease.id, labels, true);
    Prepared::Deferred
}

/// For ready pools: starts the registration of the open lease `lease_id` whose runner exists
/// already (a warm runner taken by a lease). Its runner reads the config from
/// `GET /v1/runners/{lease_id}/github-jitconfig` once it is stored. Returns whether the lease
/// wants (or has) a registration; a failed registration is logged and shown in the lease's
/// `github.last_error`, and the runner keeps getting 404 until someone ends the lease.
pub fn register_taken(t: &mut TenantBroker, ctx: &mut Ctx<'_>, lease_id: &str) -> bool {
    let Some(lease) = t.book.get(lease_id) else {
        return false;
    };
    let Some(labels) = wanted(t, lease) else {
        return false;
    };
    let registered = t
        .jit
        .rows
        .get(lease_id)
        .is_some_and(|r| r.state == REGISTERED);
    if !registered {
        start_registration(t, ctx, lease_id, labels, false);
    }
    true
}

fn start_registration(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    lease_id: &str,
    labels: Vec<String>,
    create: bool,
) {
    let Some(client) = t.jit.client.clone() else {
        return;
    };
    // One registration per lease at a time; the one in flight starts the create.
    if !t.jit.registering.insert(lease_id.to_owned()) {
        return;
    }
    let lease_id = lease_id.to_owned();
    let timeout = t.book.timing().create_timeout.min(CALL_TIMEOUT);
    let families = ctx.env().metrics.families.clone();
    ctx.spawn(async move {
        let started = std::time::Instant::now();
        let result = retry::within(timeout, client.register(&lease_id, &labels), |timeout| {
            Err(providers::Error::transient(format!(
                "github: the registration did not answer within {} s",
                timeout.as_secs()
            )))
        })
        .await;
        families.provider_call("github", "register", result.is_ok(), started.elapsed());
        Completion::Registered {
            lease_id,
            create,
            result,
        }
    });
}

/// A registration answered.
pub async fn registered(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    lease_id: String,
    create: bool,
    result: Result<Jit, providers::Error>,
) -> Result<(), Error> {
    t.jit.registering.remove(&lease_id);
    let now = ctx.now_ms();
    let lease = t.book.get(&lease_id).cloned();
    let open = lease
        .as_ref()
        .is_some_and(|l| l.ended_at.is_none() && !l.state.is_terminal());
    // The create this registration holds back, if it still waits.
    let waiting = create
        && lease
            .as_ref()
            .is_some_and(|l| l.op.is_some_and(|(op, _)| op == Op::Create));
    match result {
        Ok(jit) => {
            let mut row = t
                .jit
                .rows
                .remove(&lease_id)
                .unwrap_or_else(|| Row::new(&lease_id, REGISTERED, now));
            row.registration_id = Some(jit.runner_id);
            row.updated_at = now;
            row.last_error = None;
            row.attempts = 0;
            row.next_attempt_at = None;
            if !open {
                // Ended while GitHub answered: nothing will use the registration.
                row.state = REMOVING.to_owned();
                row.config = None;
                row.attempts = 0;
                row.next_attempt_at = Some(now);
                row::insert(ctx, &row)?;
                t.jit.rows.insert(lease_id.clone(), row);
                start_removal(t, ctx, &lease_id);
                if waiting && let Some(lease) = lease {
                    let ended = providers::Error::Permanent(
                        "the lease ended before its runner was created".into(),
                    );
                    provisioning::created(t, ctx, &lease_id, &lease.provider, Err(ended)).await?;
                }
                return Ok(());
            }
            row.state = REGISTERED.to_owned();
            row.config = Some(ctx.env().keys.seal(
                &t.name,
                &sealed_as(&lease_id),
                jit.encoded_config().as_bytes(),
            ));
            row::insert(ctx, &row)?;
            t.jit.rows.insert(lease_id.clone(), row);
            tracing::info!(tenant = %t.name, lease = %lease_id, registration = jit.runner_id, "runner registered with GitHub");
            if waiting && let Some(lease) = lease {
                provisioning::start_create(t, ctx, &lease);
            }
        }
        Err(err) => {
            tracing::warn!(tenant = %t.name, lease = %lease_id, error = %err, "GitHub registration failed");
            if !create && open {
                // A runner that exists already waits for this registration: retry a
                // transient failure with backoff; give up on a permanent one (shown on the
                // lease as `github.last_error`).
                let mut row = t
                    .jit
                    .rows
                    .remove(&lease_id)
                    .unwrap_or_else(|| Row::new(&lease_id, JOB, now));
                row.attempts = row.attempts.saturating_add(1);
                row.last_error = Some(err.to_string());
                row.updated_at = now;
                if let providers::Error::Transient { retry_after, .. } = &err
                    && row.attempts < REGISTER_ATTEMPTS
                {
                    row.state = REGISTERING.to_owned();
                    let delay = retry::backoff(
                        REGISTER_BASE_MS,
                        REGISTER_MAX_MS,
                        row.attempts,
                        retry_after.map(|d| d.min(Duration::from_secs(3_600))),
                        retry::Jitter::None,
                    );
                    row.next_attempt_at = Some(now.saturating_add(delay));
                } else {
                    row.state = JOB.to_owned();
                    row.next_attempt_at = None;
                }
                row::insert(ctx, &row)?;
                t.jit.rows.insert(lease_id.clone(), row);
            } else if let Some(row) = t.jit.rows.get_mut(&lease_id) {
                row.last_error = Some(err.to_string());
                row.updated_at = now;
                row::insert(ctx, &*row)?;
            }
            if waiting && let Some(lease) = lease {
                provisioning::created(t, ctx, &lease_id, &lease.provider, Err(err)).await?;
            }
        }
    }
    Ok(())
}

/// `in_progress`: GitHub names the runner that took the lease's job.
pub fn job_started(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    lease_id: &str,
    job: &crate::webhooks::github::WorkflowJob,
) -> Result<(), Error> {
    let now = ctx.now_ms();
    let mut row = t
        .jit
        .rows
        .remove(lease_id)
        .unwrap_or_else(|| Row::new(lease_id, JOB, now));
    row.job_id = Some(job.id);
    row.runner_name = job.runner_name.clone();
    row.runner_id = job.runner_id;
    row.updated_at = now;
    row::insert(ctx, &row)?;
    t.jit.rows.insert(lease_id.to_owned(), row);
    Ok(())
}

/// Fills in the GitHub side of leases read from the database (ended ones leave memory).
pub async fn attach(ctx: &mut Ctx<'_>, views: &mut [wire::Lease]) -> Result<(), Error> {
    let missing: Vec<&str> = views
        .iter()
        .filter(|v| v.github.is_none())
        .map(|v| v.id.as_str())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let ids = serde_json::to_string(&missing).map_err(Error::encode)?;
    let rows: Vec<Row> = ctx
        .db()?
        .query(&format!(
            "SELECT {} FROM github_runners WHERE lease_id IN (SELECT value FROM json_each(?1))",
            row::select_list::<Row>()
        ))
        .bind(ids)
        .fetch_all()?;
    let rows: BTreeMap<String, Row> = rows.into_iter().map(|r| (r.lease_id.clone(), r)).collect();
    for view in views.iter_mut() {
        if view.github.is_none() {
            view.github = rows.get(&view.id).map(Row::view);
        }
    }
    Ok(())
}

/// The runner of a lease reads its JIT config (authenticated by its runner token).
pub struct RunnerJitConfig {
    pub id: String,
    pub token: String,
}

impl std::fmt::Debug for RunnerJitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerJitConfig")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Message for RunnerJitConfig {
    type Reply = Result<wire::GithubJitConfig, Rejection>;
    const READ_ONLY: bool = true;
}

pub async fn runner_config(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    read: RunnerJitConfig,
) -> Result<wire::GithubJitConfig, Failure> {
    check_runner_token(t, ctx, &read.id, &read.token)?;
    let open = t
        .book
        .get(&read.id)
        .is_some_and(|l| l.ended_at.is_none() && !l.state.is_terminal());
    if !open {
        return Err(ended_or_missing(ctx, &read.id).await?.into());
    }
    let sealed = t
        .jit
        .rows
        .get(&read.id)
        .filter(|r| r.state == REGISTERED)
        .and_then(|r| r.config.clone());
    let Some(sealed) = sealed else {
        return Err(Rejection::NoJitConfig(format!(
            "lease {} has no GitHub JIT config (yet): it is registered when its runner is created or taken; ask again shortly",
            read.id
        ))
        .into());
    };
    let config = ctx
        .env()
        .keys
        .open(&t.name, &sealed_as(&read.id), &sealed)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| Error::Other(anyhow::anyhow!("a stored JIT config does not open")))?;
    Ok(wire::GithubJitConfig {
        encoded_jit_config: config,
    })
}

/// The alarm: retries the [`register_taken`] registrations that are due.
pub(super) fn retry_registrations(t: &mut TenantBroker, ctx: &mut Ctx<'_>) {
    let now = ctx.now_ms();
    let due: Vec<String> = t
        .jit
        .rows
        .values()
        .filter(|r| {
            r.state == REGISTERING
                && r.next_attempt_at.is_some_and(|at| at <= now)
                && !t.jit.registering.contains(&r.lease_id)
        })
        .map(|r| r.lease_id.clone())
        .collect();
    for lease_id in due {
        let labels = t.book.get(&lease_id).and_then(|lease| wanted(t, lease));
        match labels {
            Some(labels) => start_registration(t, ctx, &lease_id, labels, false),
            // The lease ended or no longer wants one: `lease_changed` settles the row.
            None => {
                if let Some(row) = t.jit.rows.get_mut(&lease_id) {
                    row.next_attempt_at = None;
                }
            }
        }
    }
}
