//! The [`Object`] implementation of a tenant: requests, provider completions and the alarm,
//! each applied to the [`Book`] and written in the same event.
//!
//! # A lease's life, as events of this object
//!
//! 1. `RequestLease`: validate, then grant (reserve in the ledger, start the provider's
//!    create in the background), queue (`wait_s > 0`), or refuse. One commit.
//! 2. `Created` completion: store the runner; `ready` if the provider says so, otherwise wait
//!    for the runner's callback (`RunnerReady`). A transient error is retried on the alarm
//!    with backoff; a permanent one (or too many) fails the lease.
//! 3. `Release`, `RunnerDone`, or the alarm (TTL, idle, queue wait, ready timeout): the lease
//!    moves to `releasing` and the provider's destroy starts. It still counts against the cap.
//! 4. `Destroyed` completion: the lease becomes `released`, `expired` or `failed`; the ledger
//!    gets its charge (runner lifetime × price) and the release of its reservation; the queue
//!    is granted into the freed slot in the same transaction. A failed destroy keeps the lease
//!    `releasing` and is retried on the alarm.
//!
//! After every event the object's one alarm is set to the earliest deadline of the book, the
//! next reconciliation and the next clean-up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::json;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::objects::clock::rfc3339;
use crate::objects::{Ctx, Error, Object};
use crate::wire::{self, EndReason, LeaseState, Limits, LimitsPatch, Quota, QuotaPatch};

use super::book::{self, Block, Book, Charged, PoolRecord, ms};
use super::lease::{self, Lease, Op, Spec};
use super::money::{self, Period};
use super::{
    Env, Event, MAX_SPEND_CAP, MAX_TTL_LIMIT_S, Rejection, Request, Response, quota, valid_name,
};

mod github;
mod reseal;
mod upkeep;
mod webhooks;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/tenant");

/// The tenant's batched writers (see [`Object::WRITERS`]): the writes of the lease hot path.
/// Rarer writes (pools, providers, tokens, webhooks, retention) are ad-hoc statements.
pub(crate) mod writer {
    /// Whole leases: [`super::lease::WRITER`].
    pub(crate) const LEASES: usize = 0;
    /// Ledger rows: `[at, lease_id, pool, kind, amount_micros]`.
    pub(crate) const LEDGER: usize = 1;
    /// Events: `[seq, at, type, data]` (`data` any JSON).
    pub(crate) const EVENTS: usize = 2;
    /// Webhook deliveries: `[id, endpoint, msg_id, event_seq, event_type, body, at, dead_at]`.
    pub(crate) const DELIVERIES: usize = 3;

    /// The statements, in index order. `ORDER BY key` keeps the rows' order (ledger and
    /// event sequence numbers follow it). The rows are materialized first: read straight
    /// from `json_each`, every `->>` would re-render the row as text.
    pub(super) const ALL: &[&str] = &[
        super::lease::WRITER,
        "WITH r(v) AS MATERIALIZED (SELECT value FROM json_each(?) ORDER BY key)
         INSERT INTO ledger (at, lease_id, pool, kind, amount_micros)
         SELECT v ->> 0, v ->> 1, v ->> 2, v ->> 3, v ->> 4 FROM r",
        "WITH r(v) AS MATERIALIZED (SELECT value FROM json_each(?) ORDER BY key)
         INSERT INTO events (seq, at, type, data)
         SELECT v ->> 0, v ->> 1, v ->> 2, v -> 3 FROM r",
        "WITH r(v) AS MATERIALIZED (SELECT value FROM json_each(?) ORDER BY key)
         INSERT INTO deliveries (id, endpoint, msg_id, event_seq, event_type, body, status,
             next_attempt_at, created_at, dead_at)
         SELECT v ->> 0, v ->> 1, v ->> 2, v ->> 3, v ->> 4, v ->> 5, 'pending', v ->> 6,
             v ->> 6, v ->> 7
         FROM r",
    ];
}

/// The `_berth_kv` key of the running charge totals of the current day and month (a
/// [`Charged`], written with every charge so that a wake need not sum the month's ledger).
const CHARGED_KEY: &str = "charged";
/// Idempotency keys are honoured this long.
const IDEMPOTENCY_TTL_MS: i64 = 24 * 3_600_000;
/// Events are kept this long (stream resumption, webhook retries).
const EVENT_RETENTION_MS: i64 = 7 * 24 * 3_600_000;
/// How often old idempotency keys and events are removed.
const PRUNE_INTERVAL_MS: i64 = 3_600_000;
/// Longest queue wait a request may ask for.
const MAX_WAIT_S: i64 = 86_400;
/// Budget thresholds announced, in percent of a cap.
const THRESHOLDS: [i64; 3] = [50, 80, 100];

type Reply = Result<Response, Rejection>;

/// The result of background work, delivered back to the object as an event.
pub enum Done {
    Created {
        lease_id: String,
        result: Result<providers::Runner, providers::Error>,
    },
    Destroyed {
        lease_id: String,
        result: Result<(), providers::Error>,
    },
    Listed {
        account: String,
        result: Result<Vec<providers::Runner>, providers::Error>,
    },
    OrphanDestroyed {
        account: String,
        lease_id: String,
        result: Result<(), providers::Error>,
    },
    Delivered {
        endpoint: String,
        delivery: i64,
        attempt: crate::webhooks::Attempt,
    },
}

/// A provider account as the object holds it.
struct Account {
    kind: String,
    config: serde_json::Value,
    has_credentials: bool,
    updated_at: i64,
    /// The client built from the account, or why it cannot be built.
    client: Result<Arc<dyn providers::Provider>, String>,
}

/// One tenant.
pub struct TenantBroker {
    name: String,
    created_at: Option<i64>,
    /// The operator's ceilings; `book.limits` always fit them ([`quota`]).
    quota: Quota,
    book: Book,
    accounts: BTreeMap<String, Account>,
    /// The next event's sequence number.
    next_seq: i64,
    /// Breaks ties between lease ids made in the same millisecond.
    lease_counter: u64,
    /// Provider work and reconciliation times, as stored.
    upkeep: upkeep::Upkeep,
    /// When reconciliation is next due (`None`: nothing to look for).
    next_reconcile_at: Option<i64>,
    /// Listings in flight, and the round they belong to.
    reconciling: usize,
    round: Option<upkeep::Round>,
    /// When the oldest retained row expires (`None`: nothing to prune).
    prunable_from: Option<i64>,
    /// When this activation last pruned.
    last_prune_at: Option<i64>,
    /// Highest budget threshold announced per (period, period start), and whether
    /// `budget.exhausted` was announced.
    budget: BudgetMarks,
    /// Webhook endpoints, with their delivery heads.
    endpoints: BTreeMap<String, webhooks::Endpoint>,
    /// The GitHub integration, if configured.
    github: Option<github::Config>,
    /// The id the next webhook delivery gets.
    next_delivery_id: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct BudgetMarks {
    day: (i64, i64, bool),
    month: (i64, i64, bool),
}

impl Object for TenantBroker {
    const NAMESPACE: &'static str = "tenant";
    const WRITERS: &'static [&'static str] = writer::ALL;
    type Env = Env;
    type Request = Request;
    type Reply = Reply;
    type Completion = Done;
    type Event = Event;

    fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }

    async fn load(ctx: &mut Ctx<'_, Self>) -> Result<Self, Error> {
        let name = ctx
            .name()
            .ok_or_else(|| Error::corrupt("tenant object without a name"))?
            .to_owned();
        let now = ctx.now_ms();
        let limits: Limits = ctx.kv_get("limits").await?.unwrap_or_default();
        // A tenant made before quotas has none stored: it gets the quota its limits match.
        let quota = match ctx.kv_get("quota").await? {
            Some(quota) => quota,
            None => quota::matching(&limits),
        };
        let created_at: Option<i64> = ctx.kv_get("created_at").await?;
        let budget: BudgetMarks = ctx.kv_get("budget").await?.unwrap_or_default();
        // The running totals are written with every charge; a period they do not cover (it
        // began while the tenant slept, or the totals predate this) is summed from the ledger.
        let stored: Charged = ctx.kv_get(CHARGED_KEY).await?.unwrap_or_default();
        let mut charged = Charged::default();
        for (period, slot, stored) in [
            (Period::Day, &mut charged.day, stored.day),
            (Period::Month, &mut charged.month, stored.month),
        ] {
            let start = period.bounds(now).0;
            *slot = if stored.0 == start {
                stored
            } else {
                (start, charged_since(ctx, start).await?)
            };
        }
        let mut book = Book::new(limits, ctx.env().timing.clone(), charged);

        type AccountRow = (String, String, String, Option<Vec<u8>>, i64);
        let rows: Vec<AccountRow> =
            sqlx::query_as("SELECT name, kind, config, credentials, updated_at FROM providers")
                .fetch_all(ctx.db().await?)
                .await?;
        let mut accounts = BTreeMap::new();
        for (account, kind, config, sealed, updated_at) in rows {
            let config: serde_json::Value =
                serde_json::from_str(&config).map_err(Error::corrupt)?;
            let client = build_client(
                ctx.env(),
                &name,
                &account,
                &kind,
                &config,
                sealed.as_deref(),
            );
            let has_credentials = sealed.is_some();
            accounts.insert(
                account,
                Account {
                    kind,
                    config,
                    has_credentials,
                    updated_at,
                    client,
                },
            );
        }

        type PoolRow = (
            String,
            String,
            String,
            i64,
            String,
            Option<i64>,
            Option<String>,
            Option<String>,
            String,
            String,
            i64,
        );
        let pools: Vec<PoolRow> = sqlx::query_as(
            "SELECT name, provider, machine_type, hourly_price_micros, price_source, max_active, image, region,
                    command, labels, updated_at FROM pools",
        )
        .fetch_all(ctx.db().await?)
        .await?;
        for (
            pool,
            provider,
            machine_type,
            price,
            source,
            max_active,
            image,
            region,
            command,
            labels,
            updated_at,
        ) in pools
        {
            book.pools.insert(
                pool.clone(),
                PoolRecord {
                    name: pool,
                    provider,
                    machine_type,
                    hourly_price_micros: price,
                    from_provider: source == "provider",
                    max_active,
                    image,
                    region,
                    command: serde_json::from_str(&command).map_err(Error::corrupt)?,
                    labels: serde_json::from_str(&labels).map_err(Error::corrupt)?,
                    updated_at,
                },
            );
        }
        for lease in lease::load_open(ctx.db().await?).await? {
            book.put(lease);
        }
        let (last_seq,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(seq), 0) FROM events")
            .fetch_one(ctx.db().await?)
            .await?;
        // The deliveries table uses AUTOINCREMENT: ids are never reused, also after prunes.
        let (last_delivery,): (i64,) = sqlx::query_as(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'deliveries'), 0),
                        COALESCE((SELECT MAX(id) FROM deliveries), 0))",
        )
        .fetch_one(ctx.db().await?)
        .await?;
        let endpoints = Self::load_endpoints(ctx, &name).await?;
        let github = ctx.kv_get("github").await?;
        let (upkeep, next_reconcile_at, prunable_from) = Self::load_upkeep(ctx).await?;
        Ok(TenantBroker {
            name,
            created_at,
            quota,
            book,
            accounts,
            next_seq: last_seq + 1,
            lease_counter: 0,
            upkeep,
            next_reconcile_at,
            reconciling: 0,
            round: None,
            prunable_from,
            last_prune_at: None,
            budget,
            endpoints,
            github,
            next_delivery_id: last_delivery + 1,
        })
    }

    async fn activated(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<(), Error> {
        self.reseal(ctx).await?;
        // Nothing is in flight after an activation: restart what the stored state calls for.
        // Creates and destroys are idempotent, so repeating one that had completed is safe.
        let now = ctx.now_ms();
        let ids: Vec<String> = self.book.open().map(|l| l.id.clone()).collect();
        for id in ids {
            let Some(mut lease) = self.book.take(&id) else {
                continue;
            };
            match lease.state {
                LeaseState::Provisioning
                    if lease.runner_id.is_none()
                        && lease.next_attempt_at.is_none_or(|at| at <= now) =>
                {
                    self.start_create(ctx, &mut lease);
                    lease::save(ctx, &lease)?;
                }
                LeaseState::Releasing if lease.next_attempt_at.is_none_or(|at| at <= now) => {
                    self.start_destroy(ctx, &mut lease);
                    lease::save(ctx, &lease)?;
                }
                _ => {}
            }
            self.book.put(lease);
        }
        self.settle(ctx).await
    }

    async fn handle(&mut self, ctx: &mut Ctx<'_, Self>, request: Request) -> Result<Reply, Error> {
        if self.created_at.is_none() && !matches!(request, Request::Create { .. }) {
            return Ok(Err(Rejection::NoTenant));
        }
        // Read-only requests run without a transaction: they must not write, spawn or move
        // the alarm, so they skip `settle`.
        let read_only = Self::is_read_only(&request);
        let reply = match request {
            Request::Create { limits, quota } => self.create(ctx, limits, quota).await?,
            Request::Get => Ok(Response::Tenant {
                tenant: self.tenant(),
                created: false,
            }),
            Request::Patch {
                limits,
                quota,
                by_operator,
            } => self.patch(ctx, limits, quota, by_operator).await?,
            Request::PutProvider {
                name,
                account,
                by_operator,
            } => self.put_provider(ctx, name, account, by_operator).await?,
            Request::ListProviders => Ok(Response::Providers(
                self.accounts.keys().map(|n| self.account_view(n)).collect(),
            )),
            Request::ProviderHandle { name } => match self.accounts.get(&name) {
                None => Err(Rejection::NotFound(format!(
                    "provider account `{name}` not found"
                ))),
                Some(Account {
                    client: Ok(client), ..
                }) => Ok(Response::ProviderHandle(client.clone())),
                Some(Account {
                    client: Err(why), ..
                }) => Err(Rejection::Invalid(why.clone())),
            },
            Request::PutPool {
                name,
                pool,
                provider_price,
                by_operator,
            } => {
                self.put_pool(ctx, name, pool, provider_price, by_operator)
                    .await?
            }
            Request::ListPools => Ok(Response::Pools(
                self.book.pools.values().map(pool_view).collect(),
            )),
            Request::RequestLease {
                request,
                idempotency_key,
            } => self.request_lease(ctx, request, idempotency_key).await?,
            Request::GetLease { id } => self.get_lease(ctx, &id).await?,
            Request::ListLeases { filter } => self.list_leases(ctx, filter).await?,
            Request::Heartbeat { id, extend_ttl_s } => {
                self.heartbeat(ctx, &id, extend_ttl_s).await?
            }
            Request::Release { id } => self.release(ctx, &id, EndReason::Released).await?,
            Request::RunnerReady {
                id,
                token,
                address,
                metadata,
            } => {
                if !ctx.env().keys.check_runner_token(&self.name, &id, &token) {
                    Err(Rejection::BadRunnerToken)
                } else {
                    self.runner_ready(ctx, &id, address, metadata).await?
                }
            }
            Request::RunnerDone { id, token } => {
                if !ctx.env().keys.check_runner_token(&self.name, &id, &token) {
                    Err(Rejection::BadRunnerToken)
                } else {
                    self.release(ctx, &id, EndReason::RunnerDone).await?
                }
            }
            Request::Usage { period, at } => {
                Ok(Response::Usage(self.usage(ctx, period, at).await?))
            }
            Request::Ledger { after, limit } => {
                Ok(Response::Ledger(ledger_page(ctx, after, limit).await?))
            }
            Request::Events { after, limit } => {
                Ok(Response::Events(events_after(ctx, after, limit).await?))
            }
            Request::PutWebhook { name, webhook } => self.put_webhook(ctx, name, webhook).await?,
            Request::GetWebhook { name } => {
                if self.endpoints.contains_key(&name) {
                    let (pending, dead) = Self::counts(ctx, &name).await?;
                    Ok(Response::Webhook(
                        self.webhook_view(&name, pending, dead, None),
                    ))
                } else {
                    Err(Rejection::NotFound(format!("webhook `{name}` not found")))
                }
            }
            Request::ListWebhooks => {
                let names: Vec<String> = self.endpoints.keys().cloned().collect();
                let mut items = Vec::with_capacity(names.len());
                for name in names {
                    let (pending, dead) = Self::counts(ctx, &name).await?;
                    items.push(self.webhook_view(&name, pending, dead, None));
                }
                Ok(Response::Webhooks(items))
            }
            Request::DeleteWebhook { name } => self.delete_webhook(ctx, &name).await?,
            Request::TestWebhook { name } => self.test_webhook(ctx, &name).await?,
            Request::ListDeliveries {
                name,
                status,
                before,
                limit,
            } => {
                self.list_deliveries(ctx, &name, status, before, limit)
                    .await?
            }
            Request::PutGithub { github } => self.put_github(ctx, github).await?,
            Request::GetGithub => Ok(Response::Github(self.github_view())),
            Request::GithubSecret => Ok(Response::GithubSecret(self.github_secret(ctx)?)),
            Request::Github(delivery) => self.github_delivery(ctx, delivery).await?,
        };
        if !read_only {
            self.settle(ctx).await?;
        }
        Ok(reply)
    }

    async fn complete(&mut self, ctx: &mut Ctx<'_, Self>, done: Done) -> Result<(), Error> {
        match done {
            Done::Created { lease_id, result } => self.created(ctx, &lease_id, result).await?,
            Done::Destroyed { lease_id, result } => self.destroyed(ctx, &lease_id, result).await?,
            Done::Listed { account, result } => self.listed(ctx, &account, result).await?,
            Done::OrphanDestroyed {
                account,
                lease_id,
                result,
            } => match result {
                Ok(()) => {
                    ctx.env()
                        .metrics
                        .reconcile_destroyed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(tenant = %self.name, %account, lease = %lease_id, "reconciliation destroyed a runner no live lease owns");
                }
                Err(err) => {
                    tracing::warn!(tenant = %self.name, %account, lease = %lease_id, error = %err, "reconciliation could not destroy an orphan runner; next round retries")
                }
            },
            Done::Delivered {
                endpoint,
                delivery,
                attempt,
            } => {
                self.delivered(ctx, &endpoint, delivery, attempt).await?;
            }
        }
        self.settle(ctx).await
    }

    async fn alarm(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<(), Error> {
        let now = ctx.now_ms();
        for id in self.book.due(now) {
            self.on_deadline(ctx, &id, now).await?;
        }
        if self.next_reconcile_at.is_some_and(|at| now >= at) {
            self.reconcile(ctx);
        }
        if self.next_prune_at().is_some_and(|at| now >= at) {
            self.prune(ctx).await?;
        }
        // A new spend period may have freed budget for queued leases.
        self.drain_queue(ctx).await?;
        self.settle(ctx).await
    }
}

impl TenantBroker {
    /// Requests that only read: they skip `settle` (nothing to deliver or re-arm).
    fn is_read_only(request: &Request) -> bool {
        matches!(
            request,
            Request::Get
                | Request::ListProviders
                | Request::ProviderHandle { .. }
                | Request::ListPools
                | Request::GetLease { .. }
                | Request::ListLeases { .. }
                | Request::Usage { .. }
                | Request::Ledger { .. }
                | Request::Events { .. }
                | Request::GetWebhook { .. }
                | Request::ListWebhooks
                | Request::ListDeliveries { .. }
                | Request::GetGithub
                | Request::GithubSecret
        )
    }

    fn tenant(&self) -> wire::Tenant {
        wire::Tenant {
            name: self.name.clone(),
            created_at: rfc3339(self.created_at.unwrap_or_default()),
            limits: self.book.limits.clone(),
            quota: self.quota.clone(),
        }
    }

    /// After every event that may have changed something: start due webhook deliveries and
    /// set the alarm.
    async fn settle(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<(), Error> {
        self.pump_deliveries(ctx).await?;
        self.rearm(ctx);
        Ok(())
    }

    /// Sets the alarm to the earliest thing the object must do.
    fn rearm(&self, ctx: &mut Ctx<'_, Self>) {
        let mut next = self
            .book
            .next_deadline()
            .into_iter()
            .chain(self.next_delivery())
            .min();
        let mut consider = |at: i64| next = Some(next.map_or(at, |n| n.min(at)));
        if self.created_at.is_some() {
            if !self.accounts.is_empty()
                && self.reconciling == 0
                && let Some(at) = self.next_reconcile_at
            {
                consider(at);
            }
            if let Some(at) = self.next_prune_at() {
                consider(at);
            }
        }
        // Queued leases blocked by a spend cap may fit when the next period starts.
        if self.book.queued() > 0
            && (self.book.limits.spend_cap_daily_micros.is_some()
                || self.book.limits.spend_cap_monthly_micros.is_some())
        {
            let now = ctx.now_ms();
            consider(Period::Day.bounds(now).1);
        }
        match next {
            Some(at) => ctx.set_alarm(at),
            None => ctx.delete_alarm(),
        }
    }

    // ----- tenant and limits ---------------------------------------------------------------

    async fn create(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        patch: Option<LimitsPatch>,
        quota_patch: Option<QuotaPatch>,
    ) -> Result<Reply, Error> {
        if self.created_at.is_some() {
            return Ok(Ok(Response::Tenant {
                tenant: self.tenant(),
                created: false,
            }));
        }
        // The quota's ceilings default to the limits asked for; defaults the operator did not
        // ask for are lowered to fit the quota, limits asked for above it are refused.
        let explicit = patch.unwrap_or_default();
        let requested = match apply_patch(Limits::default(), &explicit) {
            Ok(limits) => limits,
            Err(why) => return Ok(Err(Rejection::Invalid(why))),
        };
        let quota = match quota::patched(
            &quota::matching(&requested),
            &quota_patch.unwrap_or_default(),
        ) {
            Ok(quota) => quota,
            Err(why) => return Ok(Err(Rejection::Invalid(why))),
        };
        let limits = match apply_patch(quota::clamp(&Limits::default(), &quota), &explicit) {
            Ok(limits) => limits,
            Err(why) => return Ok(Err(Rejection::Invalid(why))),
        };
        if let Some(why) = quota::exceeded(&limits, &quota) {
            return Ok(Err(Rejection::QuotaExceeded(why)));
        }
        let now = ctx.now_ms();
        ctx.kv_put("limits", &limits)?;
        ctx.kv_put("quota", &quota)?;
        ctx.kv_put("created_at", &now)?;
        self.book.limits = limits;
        self.quota = quota;
        self.created_at = Some(now);
        Ok(Ok(Response::Tenant {
            tenant: self.tenant(),
            created: true,
        }))
    }

    async fn patch(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        patch: LimitsPatch,
        quota_patch: Option<QuotaPatch>,
        by_operator: bool,
    ) -> Result<Reply, Error> {
        let quota = match &quota_patch {
            Some(quota_patch) => match quota::patched(&self.quota, quota_patch) {
                Ok(quota) => quota,
                Err(why) => return Ok(Err(Rejection::Invalid(why))),
            },
            None => self.quota.clone(),
        };
        // A lowered quota lowers the limits above it; then the patch applies and must fit.
        let limits = match apply_patch(quota::clamp(&self.book.limits, &quota), &patch) {
            Ok(limits) => limits,
            Err(why) => return Ok(Err(Rejection::Invalid(why))),
        };
        // The operator's own limits carry the ceilings it did not pin up with them.
        let quota = if by_operator {
            quota::raised_to_fit(&quota, &limits, &quota_patch.unwrap_or_default())
        } else {
            quota
        };
        if let Some(why) = quota::exceeded(&limits, &quota) {
            return Ok(Err(Rejection::QuotaExceeded(why)));
        }
        ctx.kv_put("limits", &limits)?;
        if quota != self.quota {
            ctx.kv_put("quota", &quota)?;
            self.quota = quota;
        }
        self.book.limits = limits;
        // Only a spend cap the tenant itself set ends leases; a lowered quota refuses new
        // grants and lets running leases finish.
        if patch.spend_cap_daily_micros.is_some() || patch.spend_cap_monthly_micros.is_some() {
            self.enforce_spend_caps(ctx).await?;
        }
        self.drain_queue(ctx).await?;
        self.check_budget(ctx).await?;
        Ok(Ok(Response::Tenant {
            tenant: self.tenant(),
            created: false,
        }))
    }

    // ----- provider accounts and pools -----------------------------------------------------

    fn account_view(&self, name: &str) -> wire::ProviderAccount {
        let account = &self.accounts[name];
        wire::ProviderAccount {
            name: name.to_owned(),
            kind: account.kind.clone(),
            config: account.config.clone(),
            has_credentials: account.has_credentials,
            updated_at: rfc3339(account.updated_at),
        }
    }

    async fn put_provider(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        name: String,
        put: wire::ProviderPut,
        by_operator: bool,
    ) -> Result<Reply, Error> {
        if !valid_name(&name) {
            return Ok(Err(Rejection::Invalid(name_rule("provider account"))));
        }
        let existing = self.accounts.get(&name);
        if !by_operator
            && (providers::runs_on_host(&put.kind)
                || existing.is_some_and(|account| providers::runs_on_host(&account.kind)))
        {
            return Ok(Err(Rejection::OperatorOnly(format!(
                "only the operator's admin token may create or change `{}` provider accounts: they run code and touch paths on berth's own machine",
                if providers::runs_on_host(&put.kind) {
                    super::printable(&put.kind)
                } else {
                    existing.map(|a| a.kind.clone()).unwrap_or_default()
                }
            ))));
        }
        if existing.is_none()
            && let Some(why) = quota::count_exceeded(
                "provider accounts",
                self.accounts.len(),
                self.quota.max_providers,
            )
        {
            return Ok(Err(Rejection::QuotaExceeded(why)));
        }
        let config = if put.config.is_null() {
            json!({})
        } else {
            put.config
        };
        if !config.is_object() {
            return Ok(Err(Rejection::Invalid(
                "`config` must be a JSON object".into(),
            )));
        }
        let credentials = if put.credentials.is_null() {
            json!({})
        } else {
            put.credentials
        };
        if !credentials.is_object() {
            return Ok(Err(Rejection::Invalid(
                "`credentials` must be a JSON object".into(),
            )));
        }
        let account = providers::Account {
            tenant: self.name.clone(),
            name: name.clone(),
            kind: put.kind.clone(),
            config: config.clone(),
            credentials: credentials.clone(),
        };
        let client = match providers::build(&account, &ctx.env().providers) {
            Ok(client) => client,
            Err(err) => {
                return Ok(Err(Rejection::Invalid(format!(
                    "provider account `{name}`: {err}"
                ))));
            }
        };
        let has_credentials = credentials.as_object().is_some_and(|c| !c.is_empty());
        let sealed = has_credentials.then(|| {
            let plaintext = serde_json::to_vec(&credentials).expect("BUG: a JSON value serialises");
            ctx.env().keys.seal(&self.name, &name, &plaintext)
        });
        let now = ctx.now_ms();
        ctx.write("INSERT OR REPLACE INTO providers (name, kind, config, credentials, updated_at) VALUES (?, ?, ?, ?, ?)")
            .bind(name.clone())
            .bind(put.kind.clone())
            .bind(config.to_string())
            .bind(sealed)
            .bind(now);
        self.accounts.insert(
            name.clone(),
            Account {
                kind: put.kind,
                config,
                has_credentials,
                updated_at: now,
                client: Ok(client),
            },
        );
        if self.reconciling == 0 {
            // The account may hold runners from before it was (re)configured.
            self.next_reconcile_at = Some(self.next_reconcile_at.map_or(now, |at| at.min(now)));
        }
        Ok(Ok(Response::Provider(self.account_view(&name))))
    }

    async fn put_pool(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        name: String,
        put: wire::PoolPut,
        provider_price: Option<i64>,
        by_operator: bool,
    ) -> Result<Reply, Error> {
        if !valid_name(&name) {
            return Ok(Err(Rejection::Invalid(name_rule("pool"))));
        }
        let Some(account) = self.accounts.get(&put.provider) else {
            return Ok(Err(Rejection::Invalid(format!(
                "provider account `{}` does not exist; create it first",
                put.provider
            ))));
        };
        let existing = self.book.pools.get(&name);
        // What a host runner runs is the operator's choice. A tenant admin may still change
        // the rest of such a pool (price, caps, labels) by sending its command unchanged.
        let same_command = existing.is_some_and(|pool| {
            pool.provider == put.provider
                && put.command.as_deref().unwrap_or_default() == pool.command.as_slice()
        });
        if !by_operator && account.kind == "process" && !same_command {
            return Ok(Err(Rejection::OperatorOnly(format!(
                "only the operator's admin token may set the command of a pool on the `{}` account `{}`: it runs on berth's own machine",
                account.kind, put.provider
            ))));
        }
        if existing.is_none()
            && let Some(why) =
                quota::count_exceeded("pools", self.book.pools.len(), self.quota.max_pools)
        {
            return Ok(Err(Rejection::QuotaExceeded(why)));
        }
        if let Err(why) = validate_pool(&put, &account.kind) {
            return Ok(Err(Rejection::Invalid(why)));
        }
        let (price, from_provider) = match (put.hourly_price_micros, provider_price) {
            (Some(price), _) => (price, false),
            (None, Some(price)) => (price, true),
            (None, None) => {
                return Ok(Err(Rejection::Invalid(format!(
                    "pool `{name}` has no price: set `hourly_price_micros`, or use a provider account whose price list has machine type `{}`",
                    put.machine_type
                ))));
            }
        };
        if !(0..=MAX_PRICE).contains(&price) {
            return Ok(Err(Rejection::Invalid(format!(
                "`hourly_price_micros` must be between 0 and {MAX_PRICE}"
            ))));
        }
        let now = ctx.now_ms();
        let pool = PoolRecord {
            name: name.clone(),
            provider: put.provider,
            machine_type: put.machine_type,
            hourly_price_micros: price,
            from_provider,
            max_active: put.max_active,
            image: put.image,
            region: put.region,
            command: put.command.unwrap_or_default(),
            labels: put.labels.unwrap_or_default(),
            updated_at: now,
        };
        ctx.write("INSERT OR REPLACE INTO pools (name, provider, machine_type, hourly_price_micros, price_source, max_active,
                image, region, command, labels, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(pool.name.clone())
            .bind(pool.provider.clone())
            .bind(pool.machine_type.clone())
            .bind(pool.hourly_price_micros)
            .bind(if pool.from_provider { "provider" } else { "pool" })
            .bind(pool.max_active)
            .bind(pool.image.clone())
            .bind(pool.region.clone())
            .bind(serde_json::to_string(&pool.command).map_err(Error::corrupt)?)
            .bind(serde_json::to_string(&pool.labels).map_err(Error::corrupt)?)
            .bind(now);
        let view = pool_view(&pool);
        self.book.pools.insert(name, pool);
        self.drain_queue(ctx).await?;
        Ok(Ok(Response::Pool(view)))
    }

    // ----- leases ----------------------------------------------------------------------------

    fn new_lease_id(&mut self, now: i64) -> String {
        self.lease_counter = self.lease_counter.wrapping_add(1);
        let random: u32 = rand::random();
        format!(
            "lease_{:012x}{:06x}{:08x}",
            now.max(0),
            self.lease_counter & 0xff_ffff,
            random
        )
    }

    fn view(&self, lease: &Lease) -> wire::Lease {
        lease.to_wire(&self.name, self.book.queue_position(&lease.id))
    }

    async fn request_lease(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        request: wire::LeaseRequest,
        idempotency_key: Option<String>,
    ) -> Result<Reply, Error> {
        let now = ctx.now_ms();
        let request_hash = hex::encode(Sha256::digest(
            serde_json::to_vec(&request).map_err(Error::corrupt)?,
        ));
        if let Some(key) = &idempotency_key {
            let row: Option<(String, String, i64, i64)> = sqlx::query_as(
                "SELECT request_hash, lease_id, queued, created_at FROM idempotency WHERE key = ?1",
            )
            .bind(key)
            .fetch_optional(ctx.db().await?)
            .await?;
            if let Some((hash, lease_id, queued, created_at)) = row
                && created_at > now.saturating_sub(IDEMPOTENCY_TTL_MS)
            {
                if hash != request_hash {
                    return Ok(Err(Rejection::IdempotencyMismatch));
                }
                let lease = match self.book.get(&lease_id) {
                    Some(lease) => self.view(lease),
                    None => match lease::fetch(ctx.db().await?, &lease_id).await? {
                        Some(lease) => self.view(&lease),
                        None => {
                            return Err(Error::corrupt("idempotency key names a missing lease"));
                        }
                    },
                };
                return Ok(Ok(Response::LeaseRequested {
                    lease,
                    queued: queued == 1,
                    replayed: true,
                }));
            }
        }

        let limits = &self.book.limits;
        let Some(pool) = self.book.pools.get(&request.pool) else {
            return Ok(Err(Rejection::Invalid(format!(
                "pool `{}` does not exist",
                request.pool
            ))));
        };
        let ttl_s = request.ttl_s.unwrap_or(limits.default_ttl_s);
        if ttl_s < 1 || ttl_s > limits.max_ttl_s {
            return Ok(Err(Rejection::Invalid(format!(
                "`ttl_s` must be between 1 and {} (max_ttl_s)",
                limits.max_ttl_s
            ))));
        }
        let idle_timeout_s = request.idle_timeout_s.or(limits.default_idle_timeout_s);
        if idle_timeout_s.is_some_and(|idle| !(1..=MAX_TTL_LIMIT_S).contains(&idle)) {
            return Ok(Err(Rejection::Invalid(format!(
                "`idle_timeout_s` must be between 1 and {MAX_TTL_LIMIT_S}"
            ))));
        }
        let wait_s = request.wait_s.unwrap_or(0);
        if !(0..=MAX_WAIT_S).contains(&wait_s) {
            return Ok(Err(Rejection::Invalid(format!(
                "`wait_s` must be between 0 and {MAX_WAIT_S}"
            ))));
        }
        if let Err(why) = validate_labels(&request.labels) {
            return Ok(Err(Rejection::Invalid(why)));
        }
        let reservation = money::reservation(pool.hourly_price_micros, ttl_s);
        let id = self.new_lease_id(now);
        let pool = &self.book.pools[&request.pool];
        let mut lease = Lease {
            id,
            pool: pool.name.clone(),
            state: LeaseState::Queued,
            created_at: now,
            granted_at: None,
            ready_at: None,
            ended_at: None,
            expires_at: None,
            ttl_s,
            idle_timeout_s,
            last_heartbeat_at: None,
            wait_until: None,
            labels: request.labels,
            end_reason: None,
            provider: pool.provider.clone(),
            spec: Spec {
                machine_type: pool.machine_type.clone(),
                image: pool.image.clone(),
                region: pool.region.clone(),
                command: pool.command.clone(),
            },
            runner_id: None,
            runner_address: None,
            runner_metadata: BTreeMap::new(),
            runner_destroyed_at: None,
            hourly_price_micros: pool.hourly_price_micros,
            reserved_micros: 0,
            charged_micros: 0,
            provider_attempts: 0,
            last_error: None,
            next_attempt_at: None,
            op: None,
        };
        let metrics = ctx.env().metrics.clone();
        let queued = match self.book.admit(&lease.pool, reservation, now) {
            Ok(()) => {
                self.grant(ctx, &mut lease).await?;
                false
            }
            Err(block) => {
                if block == Block::Spend {
                    self.announce_exhausted(ctx).await?;
                }
                if wait_s == 0 {
                    return Ok(Err(refusal(block, &self.book, &lease.pool, &metrics)));
                }
                if self.book.queued() >= self.book.limits.max_queued {
                    metrics.rejected_queue_full.fetch_add(1, Ordering::Relaxed);
                    return Ok(Err(Rejection::QueueFull(format!(
                        "the queue is full ({} of max_queued {})",
                        self.book.queued(),
                        self.book.limits.max_queued
                    ))));
                }
                lease.wait_until = Some(now.saturating_add(wait_s.saturating_mul(1_000)));
                lease::save(ctx, &lease)?;
                metrics.queued.fetch_add(1, Ordering::Relaxed);
                true
            }
        };
        self.book.put(lease.clone());
        let view = self.view(&lease);
        if queued {
            self.emit(ctx, "lease.queued", &view).await?;
        }
        if let Some(key) = idempotency_key {
            ctx.write("INSERT OR REPLACE INTO idempotency (key, request_hash, lease_id, queued, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(key)
            .bind(request_hash)
            .bind(lease.id.clone())
            .bind(i64::from(queued))
            .bind(now);
            self.prunable(now.saturating_add(IDEMPOTENCY_TTL_MS));
        }
        Ok(Ok(Response::LeaseRequested {
            lease: view,
            queued,
            replayed: false,
        }))
    }

    /// Grants `lease` (queued or new): reserve, start the create, announce. The caller puts
    /// the lease back into the book.
    async fn grant(&mut self, ctx: &mut Ctx<'_, Self>, lease: &mut Lease) -> Result<(), Error> {
        let now = ctx.now_ms();
        lease.state = LeaseState::Provisioning;
        lease.granted_at = Some(now);
        lease.expires_at = Some(now.saturating_add(lease.ttl_s.saturating_mul(1_000)));
        lease.wait_until = None;
        lease.reserved_micros = money::reservation(lease.hourly_price_micros, lease.ttl_s);
        ledger(
            ctx,
            now,
            lease,
            wire::LedgerKind::Reserve,
            lease.reserved_micros,
        )
        .await?;
        self.start_create(ctx, lease);
        lease::save(ctx, lease)?;
        ctx.env().metrics.grants.fetch_add(1, Ordering::Relaxed);
        let view = lease.to_wire(&self.name, None);
        self.emit(ctx, "lease.granted", &view).await?;
        self.check_budget(ctx).await?;
        Ok(())
    }

    async fn get_lease(&self, ctx: &mut Ctx<'_, Self>, id: &str) -> Result<Reply, Error> {
        if let Some(lease) = self.book.get(id) {
            return Ok(Ok(Response::Lease(self.view(lease))));
        }
        Ok(match lease::fetch(ctx.db().await?, id).await? {
            Some(lease) => Ok(Response::Lease(self.view(&lease))),
            None => Err(not_found(id)),
        })
    }

    async fn list_leases(
        &self,
        ctx: &mut Ctx<'_, Self>,
        filter: lease::Filter,
    ) -> Result<Reply, Error> {
        let limit = filter.limit;
        let mut leases = lease::list(ctx.db().await?, &filter).await?;
        let next_cursor = if leases.len() > limit {
            leases.truncate(limit);
            leases.last().map(|l| l.id.clone())
        } else {
            None
        };
        let items = leases
            .iter()
            .map(|stored| match self.book.get(&stored.id) {
                Some(live) => self.view(live),
                None => self.view(stored),
            })
            .collect();
        Ok(Ok(Response::Leases(wire::Page { items, next_cursor })))
    }

    async fn heartbeat(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        id: &str,
        extend_ttl_s: Option<i64>,
    ) -> Result<Reply, Error> {
        let now = ctx.now_ms();
        let Some(mut lease) = self.book.take(id) else {
            return self.ended_or_missing(ctx, id).await;
        };
        if !matches!(lease.state, LeaseState::Provisioning | LeaseState::Ready) {
            let state = lease.state;
            self.book.put(lease);
            return Ok(if state == LeaseState::Queued {
                // A queued lease has no TTL yet; its wait is not extended by heartbeats.
                Ok(Response::Lease(
                    self.view(self.book.get(id).expect("BUG: just put back")),
                ))
            } else {
                Err(Rejection::LeaseEnded(format!("lease {id} has ended")))
            });
        }
        if let Some(extend) = extend_ttl_s {
            let new_ttl = lease.ttl_s.saturating_add(extend);
            if extend < 1 {
                self.book.put(lease);
                return Ok(Err(Rejection::Invalid(
                    "`extend_ttl_s` must be at least 1".into(),
                )));
            }
            if new_ttl > self.book.limits.max_ttl_s {
                let max = self.book.limits.max_ttl_s;
                let ttl = lease.ttl_s;
                self.book.put(lease);
                return Ok(Err(Rejection::Invalid(format!(
                    "extending by {extend} s would make the TTL {new_ttl} s, past max_ttl_s {max} (now {ttl} s)"
                ))));
            }
            // Both reservations are in [0, i64::MAX], so their difference cannot overflow.
            let extra = money::reservation(lease.hourly_price_micros, new_ttl)
                .saturating_sub(money::reservation(lease.hourly_price_micros, lease.ttl_s));
            // The lease is out of the book while it changes, so its own reservation is not in
            // the book's sum: count it here with the extra.
            if !self
                .book
                .spend_allows(lease.reserved_micros.saturating_add(extra), now)
            {
                self.book.put(lease);
                self.announce_exhausted(ctx).await?;
                ctx.env()
                    .metrics
                    .rejected_spend
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(Err(Rejection::SpendCap(format!(
                    "extending by {extend} s needs {extra} more micros, past the spend cap"
                ))));
            }
            ledger(ctx, now, &lease, wire::LedgerKind::Reserve, extra).await?;
            lease.reserved_micros = lease.reserved_micros.saturating_add(extra);
            lease.ttl_s = new_ttl;
            lease.expires_at = lease
                .expires_at
                .map(|at| at.saturating_add(extend.saturating_mul(1_000)));
        }
        lease.last_heartbeat_at = Some(now);
        lease::save(ctx, &lease)?;
        let view = self.view(&lease);
        self.book.put(lease);
        if extend_ttl_s.is_some() {
            self.check_budget(ctx).await?;
        }
        Ok(Ok(Response::Lease(view)))
    }

    /// Ends a lease on request (client release or runner done). Idempotent: an ending or
    /// ended lease is returned as it is.
    async fn release(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        id: &str,
        reason: EndReason,
    ) -> Result<Reply, Error> {
        let Some(mut lease) = self.book.take(id) else {
            return Ok(match lease::fetch(ctx.db().await?, id).await? {
                Some(lease) => Ok(Response::Lease(self.view(&lease))),
                None => Err(not_found(id)),
            });
        };
        self.end(ctx, &mut lease, reason).await?;
        let view = self.view(&lease);
        self.book.put(lease);
        Ok(Ok(Response::Lease(view)))
    }

    async fn runner_ready(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        id: &str,
        address: Option<String>,
        metadata: BTreeMap<String, String>,
    ) -> Result<Reply, Error> {
        let Some(mut lease) = self.book.take(id) else {
            return self.ended_or_missing(ctx, id).await;
        };
        match lease.state {
            LeaseState::Provisioning | LeaseState::Ready => {
                if address.is_some() {
                    lease.runner_address = address;
                }
                lease.runner_metadata.extend(metadata);
                let became_ready = lease.state == LeaseState::Provisioning;
                if became_ready {
                    lease.state = LeaseState::Ready;
                    lease.ready_at = Some(ctx.now_ms());
                }
                lease::save(ctx, &lease)?;
                let view = self.view(&lease);
                self.book.put(lease);
                if became_ready {
                    self.emit(ctx, "lease.ready", &view).await?;
                }
                Ok(Ok(Response::Lease(view)))
            }
            _ => {
                self.book.put(lease);
                Ok(Err(Rejection::LeaseEnded(format!(
                    "lease {id} is not waiting for its runner"
                ))))
            }
        }
    }

    async fn ended_or_missing(&self, ctx: &mut Ctx<'_, Self>, id: &str) -> Result<Reply, Error> {
        Ok(match lease::fetch(ctx.db().await?, id).await? {
            Some(_) => Err(Rejection::LeaseEnded(format!("lease {id} has ended"))),
            None => Err(not_found(id)),
        })
    }

    /// Ends `lease` for `reason`: a queued one is canceled at once; a granted one moves to
    /// `releasing` and its runner is destroyed (after its create returns, if one is in
    /// flight). Writes the lease; the caller puts it back into the book.
    async fn end(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        lease: &mut Lease,
        reason: EndReason,
    ) -> Result<(), Error> {
        let now = ctx.now_ms();
        match lease.state {
            LeaseState::Queued => {
                lease.state = LeaseState::Canceled;
                lease.end_reason = Some(if reason == EndReason::Released {
                    EndReason::Canceled
                } else {
                    reason
                });
                lease.ended_at = Some(now);
                lease.wait_until = None;
                lease::save(ctx, lease)?;
                ctx.env()
                    .metrics
                    .ended_canceled
                    .fetch_add(1, Ordering::Relaxed);
                let view = lease.to_wire(&self.name, None);
                self.emit(ctx, "lease.canceled", &view).await?;
            }
            LeaseState::Provisioning | LeaseState::Ready => {
                lease.state = LeaseState::Releasing;
                lease.end_reason = Some(reason);
                lease.ended_at = Some(now);
                lease.next_attempt_at = None;
                if lease.op.is_none() {
                    self.start_destroy(ctx, lease);
                }
                lease::save(ctx, lease)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The runner is gone: the lease reaches its final state, the ledger gets the charge and
    /// the release of the reservation, and the queue is granted into the freed slot.
    async fn finish(&mut self, ctx: &mut Ctx<'_, Self>, mut lease: Lease) -> Result<(), Error> {
        let now = ctx.now_ms();
        let granted_at = lease.granted_at.unwrap_or(now);
        let charge = money::charge(lease.hourly_price_micros, granted_at, now);
        ledger(ctx, now, &lease, wire::LedgerKind::Charge, charge).await?;
        ledger(
            ctx,
            now,
            &lease,
            wire::LedgerKind::Release,
            lease.reserved_micros,
        )
        .await?;
        self.book.add_charge(now, charge);
        ctx.kv_put(CHARGED_KEY, &self.book.charged())?;
        lease.charged_micros = lease.charged_micros.saturating_add(charge);
        lease.reserved_micros = 0;
        lease.runner_destroyed_at = Some(now);
        lease.op = None;
        lease.next_attempt_at = None;
        let metrics = &ctx.env().metrics;
        let (state, kind) = match lease.end_reason {
            Some(EndReason::Ttl | EndReason::Idle | EndReason::SpendCap) => {
                metrics.ended_expired.fetch_add(1, Ordering::Relaxed);
                (LeaseState::Expired, "lease.expired")
            }
            Some(EndReason::ProviderError) => {
                metrics.ended_failed.fetch_add(1, Ordering::Relaxed);
                (LeaseState::Failed, "lease.failed")
            }
            _ => {
                metrics.ended_released.fetch_add(1, Ordering::Relaxed);
                (LeaseState::Released, "lease.released")
            }
        };
        lease.state = state;
        lease::save(ctx, &lease)?;
        let view = lease.to_wire(&self.name, None);
        self.book.put(lease);
        self.emit(ctx, kind, &view).await?;
        self.drain_queue(ctx).await?;
        self.check_budget(ctx).await?;
        Ok(())
    }

    /// Grants queued leases, oldest first, while they fit (a lease blocked by its own pool's
    /// cap or its reservation does not hold back later ones that fit). A lease whose wait ran
    /// out is never granted; its deadline, already due, cancels it.
    async fn drain_queue(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<(), Error> {
        if self.book.queued() == 0 {
            return Ok(());
        }
        let now = ctx.now_ms();
        for id in self.book.waiting(now) {
            if self.book.active() >= self.book.limits.max_active_leases {
                break;
            }
            let Some(lease) = self.book.get(&id) else {
                continue;
            };
            let reservation = money::reservation(lease.hourly_price_micros, lease.ttl_s);
            if self.book.admit(&lease.pool, reservation, now).is_err() {
                continue;
            }
            let mut lease = self.book.take(&id).expect("BUG: queued lease is open");
            self.grant(ctx, &mut lease).await?;
            self.book.put(lease);
        }
        Ok(())
    }

    /// Ends the newest leases while charged + open reservations pass a lowered spend cap.
    async fn enforce_spend_caps(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<(), Error> {
        let now = ctx.now_ms();
        let mut over = [Period::Day, Period::Month]
            .into_iter()
            .filter_map(|period| {
                self.book
                    .cap(period)
                    .map(|cap| self.book.spent(period, now).saturating_sub(cap))
            })
            .max()
            .unwrap_or(0);
        if over <= 0 {
            return Ok(());
        }
        let mut running: Vec<String> = self
            .book
            .open()
            .filter(|l| matches!(l.state, LeaseState::Provisioning | LeaseState::Ready))
            .map(|l| l.id.clone())
            .collect();
        running.reverse();
        for id in running {
            if over <= 0 {
                break;
            }
            let mut lease = self.book.take(&id).expect("BUG: listed from the book");
            over = over.saturating_sub(lease.reserved_micros);
            self.end(ctx, &mut lease, EndReason::SpendCap).await?;
            self.book.put(lease);
        }
        self.announce_exhausted(ctx).await
    }

    /// A lease's deadline came.
    async fn on_deadline(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        id: &str,
        now: i64,
    ) -> Result<(), Error> {
        let Some(mut lease) = self.book.take(id) else {
            return Ok(());
        };
        if let Some((op, deadline)) = lease.op
            && deadline <= now
        {
            // The provider call never reported back (its completion was lost): try again.
            tracing::warn!(tenant = %self.name, lease = %lease.id, ?op, "provider call did not report back in time; retrying");
            lease.op = None;
            lease.last_error = Some("provider call did not report back in time".into());
            lease.next_attempt_at = Some(now);
        }
        match lease.state {
            LeaseState::Queued if lease.wait_until.is_some_and(|at| at <= now) => {
                self.end(ctx, &mut lease, EndReason::QueueTimeout).await?;
            }
            LeaseState::Provisioning | LeaseState::Ready => {
                let ready_deadline = lease
                    .granted_at
                    .map(|at| at.saturating_add(ms(self.book.timing.ready_timeout)));
                if lease.expires_at.is_some_and(|at| at <= now) {
                    self.end(ctx, &mut lease, EndReason::Ttl).await?;
                } else if lease.idle_at().is_some_and(|at| at <= now) {
                    self.end(ctx, &mut lease, EndReason::Idle).await?;
                } else if lease.state == LeaseState::Provisioning
                    && ready_deadline.is_some_and(|at| at <= now)
                {
                    lease.last_error = Some(format!(
                        "the runner did not report ready within {} s",
                        self.book.timing.ready_timeout.as_secs()
                    ));
                    self.end(ctx, &mut lease, EndReason::ProviderError).await?;
                } else if lease.state == LeaseState::Provisioning
                    && lease.runner_id.is_none()
                    && lease.op.is_none()
                    && lease.next_attempt_at.is_some_and(|at| at <= now)
                {
                    self.start_create(ctx, &mut lease);
                    lease::save(ctx, &lease)?;
                }
            }
            LeaseState::Releasing
                if lease.op.is_none() && lease.next_attempt_at.is_none_or(|at| at <= now) =>
            {
                self.start_destroy(ctx, &mut lease);
                lease::save(ctx, &lease)?;
            }
            _ => {}
        }
        self.book.put(lease);
        Ok(())
    }

    // ----- provider calls ------------------------------------------------------------------

    fn client(&self, account: &str) -> Result<Arc<dyn providers::Provider>, String> {
        match self.accounts.get(account) {
            Some(Account { client, .. }) => client.clone(),
            None => Err(format!("provider account `{account}` no longer exists")),
        }
    }

    /// Starts the provider's create for `lease` in the background. The caller saves the lease.
    fn start_create(&mut self, ctx: &mut Ctx<'_, Self>, lease: &mut Lease) {
        let now = ctx.now_ms();
        let client = match self.client(&lease.provider) {
            Ok(client) => client,
            Err(why) => {
                // No client can be built (bad account, undecryptable credentials): a permanent
                // failure, reported through the normal completion path on the next event.
                lease.last_error = Some(why.clone());
                let lease_id = lease.id.clone();
                book::start_op(lease, Op::Create, &self.book.timing, now);
                ctx.spawn(async move {
                    Done::Created {
                        lease_id,
                        result: Err(providers::Error::Permanent(why)),
                    }
                });
                return;
            }
        };
        let env = ctx.env();
        let mut vars = BTreeMap::new();
        vars.insert("BERTH_LEASE_ID".to_owned(), lease.id.clone());
        vars.insert("BERTH_TENANT".to_owned(), self.name.clone());
        vars.insert("BERTH_POOL".to_owned(), lease.pool.clone());
        vars.insert(
            "BERTH_CALLBACK_URL".to_owned(),
            format!("{}/v1/runners/{}", env.public_url, lease.id),
        );
        vars.insert(
            "BERTH_RUNNER_TOKEN".to_owned(),
            env.keys.runner_token(&self.name, &lease.id),
        );
        let spec = providers::RunnerSpec {
            tenant: self.name.clone(),
            lease_id: lease.id.clone(),
            pool: lease.pool.clone(),
            machine_type: lease.spec.machine_type.clone(),
            image: lease.spec.image.clone(),
            region: lease.spec.region.clone(),
            command: lease.spec.command.clone(),
            labels: BTreeMap::from([("berth-pool".to_owned(), lease.pool.clone())]),
            env: vars,
        };
        let timeout = self.book.timing.create_timeout;
        let lease_id = lease.id.clone();
        lease.provider_attempts += 1;
        book::start_op(lease, Op::Create, &self.book.timing, now);
        self.provider_work(ctx);
        ctx.spawn(async move {
            let result = match tokio::time::timeout(timeout, client.create(&spec)).await {
                Ok(result) => result,
                Err(_) => Err(providers::Error::transient(format!(
                    "create did not answer within {} s",
                    timeout.as_secs()
                ))),
            };
            Done::Created { lease_id, result }
        });
    }

    /// Starts the provider's destroy for `lease` in the background. The caller saves the lease.
    fn start_destroy(&mut self, ctx: &mut Ctx<'_, Self>, lease: &mut Lease) {
        let now = ctx.now_ms();
        let client = match self.client(&lease.provider) {
            Ok(client) => client,
            Err(why) => {
                // Keep the lease releasing (the runner may live) and try again later: an
                // operator can repair the account.
                lease.last_error = Some(why);
                lease.next_attempt_at = Some(
                    now.saturating_add(self.book.timing.backoff(lease.provider_attempts.max(1))),
                );
                return;
            }
        };
        let runner = providers::RunnerRef {
            tenant: self.name.clone(),
            lease_id: lease.id.clone(),
            id: lease.runner_id.clone(),
        };
        let timeout = self.book.timing.destroy_timeout;
        let lease_id = lease.id.clone();
        lease.provider_attempts += 1;
        book::start_op(lease, Op::Destroy, &self.book.timing, now);
        self.provider_work(ctx);
        ctx.spawn(async move {
            let result = match tokio::time::timeout(timeout, client.destroy(&runner)).await {
                Ok(result) => result,
                Err(_) => Err(providers::Error::transient(format!(
                    "destroy did not answer within {} s",
                    timeout.as_secs()
                ))),
            };
            Done::Destroyed { lease_id, result }
        });
    }

    async fn created(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        lease_id: &str,
        result: Result<providers::Runner, providers::Error>,
    ) -> Result<(), Error> {
        crate::failpoint::hit("tenant.created.before_commit");
        let now = ctx.now_ms();
        let Some(mut lease) = self.book.take(lease_id) else {
            // The lease is gone already (it cannot be: a lease with a create in flight stays
            // open). Destroy the runner rather than leak it.
            if let Ok(runner) = result {
                tracing::warn!(tenant = %self.name, lease = %lease_id, "runner created for a closed lease; destroying it");
                self.destroy_stray(ctx, runner);
            }
            return Ok(());
        };
        lease.op = None;
        match result {
            Ok(runner) => {
                lease.runner_id = Some(runner.id);
                lease.runner_address = runner.address;
                lease.runner_metadata = runner.metadata;
                // A lease that ended meanwhile keeps the error that ended it.
                if lease.state == LeaseState::Provisioning {
                    lease.last_error = None;
                }
                match lease.state {
                    LeaseState::Provisioning if runner.ready => {
                        lease.state = LeaseState::Ready;
                        lease.ready_at = Some(now);
                        lease::save(ctx, &lease)?;
                        let view = self.view(&lease);
                        self.book.put(lease);
                        return self.emit(ctx, "lease.ready", &view).await;
                    }
                    LeaseState::Releasing => self.start_destroy(ctx, &mut lease),
                    _ => {}
                }
            }
            Err(err) => {
                ctx.env()
                    .metrics
                    .provider_errors
                    .fetch_add(1, Ordering::Relaxed);
                lease.last_error = Some(err.to_string());
                tracing::warn!(tenant = %self.name, lease = %lease.id, error = %err, attempts = lease.provider_attempts, "provider create failed");
                if lease.state == LeaseState::Releasing {
                    // Ended while the create ran: make sure nothing it may have made lives.
                    self.start_destroy(ctx, &mut lease);
                } else if !err.is_retryable() && !matches!(err, providers::Error::Capacity(_))
                    || lease.provider_attempts >= self.book.timing.create_attempts
                {
                    self.end(ctx, &mut lease, EndReason::ProviderError).await?;
                } else {
                    let mut delay = self.book.timing.backoff(lease.provider_attempts);
                    if let providers::Error::Transient {
                        retry_after: Some(after),
                        ..
                    } = &err
                    {
                        delay = delay.max(ms(*after));
                    }
                    lease.next_attempt_at = Some(now.saturating_add(delay));
                }
            }
        }
        lease::save(ctx, &lease)?;
        self.book.put(lease);
        Ok(())
    }

    async fn destroyed(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        lease_id: &str,
        result: Result<(), providers::Error>,
    ) -> Result<(), Error> {
        let now = ctx.now_ms();
        let Some(mut lease) = self.book.take(lease_id) else {
            return Ok(());
        };
        lease.op = None;
        match result {
            Ok(()) if lease.state == LeaseState::Releasing => return self.finish(ctx, lease).await,
            Ok(()) => {}
            Err(err) => {
                ctx.env()
                    .metrics
                    .provider_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(tenant = %self.name, lease = %lease.id, error = %err, attempts = lease.provider_attempts, "provider destroy failed; the lease stays releasing and is retried");
                lease.last_error = Some(err.to_string());
                let mut delay = self.book.timing.backoff(lease.provider_attempts);
                if let providers::Error::Transient {
                    retry_after: Some(after),
                    ..
                } = &err
                {
                    delay = delay.max(ms(*after));
                }
                lease.next_attempt_at = Some(now.saturating_add(delay));
            }
        }
        lease::save(ctx, &lease)?;
        self.book.put(lease);
        Ok(())
    }

    /// Destroys a runner that belongs to no open lease (best effort, logged).
    fn destroy_stray(&mut self, ctx: &mut Ctx<'_, Self>, runner: providers::Runner) {
        let Some((account, client)) = self.accounts.iter().find_map(|(name, account)| {
            account
                .client
                .as_ref()
                .ok()
                .map(|c| (name.clone(), c.clone()))
        }) else {
            return;
        };
        let runner_ref = providers::RunnerRef {
            tenant: self.name.clone(),
            lease_id: runner.lease_id.clone(),
            id: Some(runner.id),
        };
        let timeout = self.book.timing.destroy_timeout;
        ctx.spawn(async move {
            let result = match tokio::time::timeout(timeout, client.destroy(&runner_ref)).await {
                Ok(result) => result,
                Err(_) => Err(providers::Error::transient("destroy timed out")),
            };
            Done::OrphanDestroyed {
                account,
                lease_id: runner_ref.lease_id,
                result,
            }
        });
    }

    // ----- reconciliation ------------------------------------------------------------------

    /// Lists the tenant's runners at every account; orphans are destroyed when the lists
    /// come back.
    fn reconcile(&mut self, ctx: &mut Ctx<'_, Self>) {
        let now = ctx.now_ms();
        // Overwritten when the round ends; stands if it never does.
        self.next_reconcile_at = Some(now.saturating_add(ms(self.book.timing.reconcile_interval)));
        if self.reconciling > 0 {
            return;
        }
        self.round_started(now);
        let tenant = self.name.clone();
        for (name, account) in &self.accounts {
            let Ok(client) = account.client.clone() else {
                continue;
            };
            let account = name.clone();
            let tenant = tenant.clone();
            let timeout = self.book.timing.create_timeout;
            self.reconciling += 1;
            ctx.spawn(async move {
                let result = match tokio::time::timeout(timeout, client.list(&tenant)).await {
                    Ok(result) => result,
                    Err(_) => Err(providers::Error::transient("list timed out")),
                };
                Done::Listed { account, result }
            });
        }
        if self.reconciling == 0 {
            // No account can be listed: nothing to do until one is configured again.
            self.round = None;
            self.next_reconcile_at = None;
        }
    }

    /// Destroys the listed runners that belong to a lease of this tenant that has ended.
    /// A runner whose lease berth has no record of is left alone: berth writes every lease
    /// before it asks for its runner, so such a runner is not berth's (another installation
    /// sharing the account, a restored backup) and destroying it is not berth's call.
    async fn listed(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        account: &str,
        result: Result<Vec<providers::Runner>, providers::Error>,
    ) -> Result<(), Error> {
        self.listing_done(ctx, result.is_ok());
        let runners = match result {
            Ok(runners) => runners,
            Err(err) => {
                tracing::warn!(tenant = %self.name, %account, error = %err, "reconciliation could not list runners");
                return Ok(());
            }
        };
        let Ok(client) = self.client(account) else {
            return Ok(());
        };
        for runner in runners {
            // Only this tenant's runners, and only those no open lease owns. An open lease
            // whose create is in flight owns its runner even before the create reports back.
            if runner.tenant != self.name || self.book.get(&runner.lease_id).is_some() {
                continue;
            }
            let known: Option<String> =
                sqlx::query_scalar("SELECT state FROM leases WHERE id = ?1")
                    .bind(&runner.lease_id)
                    .fetch_optional(ctx.db().await?)
                    .await?;
            if known.is_none() {
                tracing::warn!(tenant = %self.name, %account, lease = %runner.lease_id, "a runner for a lease berth has no record of; not berth's to destroy, leaving it");
                continue;
            }
            let runner_ref = providers::RunnerRef {
                tenant: self.name.clone(),
                lease_id: runner.lease_id.clone(),
                id: Some(runner.id),
            };
            let account = account.to_owned();
            let client = client.clone();
            let timeout = self.book.timing.destroy_timeout;
            tracing::info!(tenant = %self.name, %account, lease = %runner_ref.lease_id, "orphan runner found; destroying it");
            self.provider_work(ctx);
            ctx.spawn(async move {
                let result = match tokio::time::timeout(timeout, client.destroy(&runner_ref)).await
                {
                    Ok(result) => result,
                    Err(_) => Err(providers::Error::transient("destroy timed out")),
                };
                Done::OrphanDestroyed {
                    account,
                    lease_id: runner_ref.lease_id,
                    result,
                }
            });
        }
        Ok(())
    }

    // ----- events and budget ---------------------------------------------------------------

    /// Stores an event and broadcasts it after the commit.
    async fn emit(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        kind: &str,
        data: &impl serde::Serialize,
    ) -> Result<(), Error> {
        let seq = self.next_seq;
        let at = ctx.now_ms();
        let event = Event {
            seq,
            kind: kind.to_owned(),
            at,
            data: serde_json::value::to_raw_value(data).map_err(Error::corrupt)?,
        };
        ctx.put(writer::EVENTS, &(seq, at, kind, &event.data))?;
        self.prunable(at.saturating_add(EVENT_RETENTION_MS));
        self.next_seq += 1;
        self.enqueue(ctx, &event.message()).await?;
        ctx.emit(event);
        Ok(())
    }

    /// Announces every budget threshold (50, 80, 100 % of a cap) crossed since the last
    /// announcement of the period.
    async fn check_budget(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<(), Error> {
        let now = ctx.now_ms();
        let mut marks = self.budget.clone();
        let mut announcements = Vec::new();
        for (period, mark) in [
            (Period::Day, &mut marks.day),
            (Period::Month, &mut marks.month),
        ] {
            let Some(cap) = self.book.cap(period) else {
                continue;
            };
            let start = period.bounds(now).0;
            if mark.0 != start {
                *mark = (start, 0, false);
            }
            let spent = self.book.spent(period, now);
            let percent = if cap == 0 {
                100
            } else {
                i64::try_from(i128::from(spent) * 100 / i128::from(cap)).unwrap_or(i64::MAX)
            };
            for threshold in THRESHOLDS {
                if percent >= threshold && mark.1 < threshold {
                    mark.1 = threshold;
                    announcements.push(json!({
                        "period": period.as_str(),
                        "period_start": rfc3339(start),
                        "threshold_percent": threshold,
                        "spent_micros": spent,
                        "cap_micros": cap,
                    }));
                }
            }
        }
        if marks != self.budget {
            ctx.kv_put("budget", &marks)?;
            self.budget = marks;
        }
        for data in announcements {
            self.emit(ctx, "budget.threshold", &data).await?;
        }
        Ok(())
    }

    /// Announces `budget.exhausted` once per period when the spend cap refuses or ends a
    /// lease.
    async fn announce_exhausted(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<(), Error> {
        let now = ctx.now_ms();
        let mut marks = self.budget.clone();
        let mut announcements = Vec::new();
        for (period, mark) in [
            (Period::Day, &mut marks.day),
            (Period::Month, &mut marks.month),
        ] {
            let Some(cap) = self.book.cap(period) else {
                continue;
            };
            let start = period.bounds(now).0;
            if mark.0 != start {
                *mark = (start, 0, false);
            }
            let spent = self.book.spent(period, now);
            if !mark.2 {
                mark.2 = true;
                announcements.push(json!({
                    "period": period.as_str(),
                    "period_start": rfc3339(start),
                    "spent_micros": spent,
                    "cap_micros": cap,
                }));
            }
        }
        if marks != self.budget {
            ctx.kv_put("budget", &marks)?;
            self.budget = marks;
        }
        for data in announcements {
            self.emit(ctx, "budget.exhausted", &data).await?;
        }
        Ok(())
    }

    // ----- reports -------------------------------------------------------------------------

    async fn usage(
        &self,
        ctx: &mut Ctx<'_, Self>,
        period: Period,
        at: i64,
    ) -> Result<wire::Usage, Error> {
        let (start, end) = period.bounds(at);
        let charged: Vec<(String, i64, i64)> = sqlx::query_as(&format!(
            "SELECT pool, {LEDGER_SUM} FROM ledger WHERE kind = 'charge' AND at >= ?1 AND at < ?2 GROUP BY pool"
        ))
        .bind(start)
        .bind(end)
        .fetch_all(ctx.db().await?)
        .await?;
        let mut by_pool: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for (pool, high, low) in charged {
            let entry = by_pool.entry(pool).or_default();
            entry.0 = entry.0.saturating_add(ledger_sum(high, low));
        }
        for lease in self.book.open() {
            if lease.reserved_micros > 0 {
                let entry = by_pool.entry(lease.pool.clone()).or_default();
                entry.1 = entry.1.saturating_add(lease.reserved_micros);
            }
        }
        let charged_micros = by_pool
            .values()
            .fold(0_i64, |sum, (charged, _)| sum.saturating_add(*charged));
        let reserved_micros = self.book.open_reserved();
        let cap_micros = self.book.cap(period);
        Ok(wire::Usage {
            period: period.as_str().to_owned(),
            period_start: rfc3339(start),
            period_end: rfc3339(end),
            charged_micros,
            reserved_micros,
            cap_micros,
            available_micros: cap_micros.map(|cap| {
                cap.saturating_sub(charged_micros)
                    .saturating_sub(reserved_micros)
            }),
            by_pool: by_pool
                .into_iter()
                .map(
                    |(pool, (charged_micros, reserved_micros))| wire::PoolUsage {
                        pool,
                        charged_micros,
                        reserved_micros,
                    },
                )
                .collect(),
        })
    }
}

/// Largest hourly price accepted: a million currency units per hour.
const MAX_PRICE: i64 = 1_000_000_000_000;

fn not_found(id: &str) -> Rejection {
    Rejection::NotFound(format!("lease `{}` not found", super::printable(id)))
}

fn name_rule(what: &str) -> String {
    format!(
        "a {what} name is 1–63 characters of lowercase letters, digits and `-`, starting with a letter or digit"
    )
}

fn refusal(block: Block, book: &Book, pool: &str, metrics: &super::Metrics) -> Rejection {
    match block {
        Block::Concurrency => {
            metrics.rejected_concurrency.fetch_add(1, Ordering::Relaxed);
            if book.active() >= book.limits.max_active_leases {
                Rejection::ConcurrencyCap(format!(
                    "{} of max_active_leases {} leases are active",
                    book.active(),
                    book.limits.max_active_leases
                ))
            } else {
                let cap = book
                    .pools
                    .get(pool)
                    .and_then(|p| p.max_active)
                    .unwrap_or_default();
                Rejection::ConcurrencyCap(format!(
                    "pool `{pool}` has {} of its max_active {cap} leases active",
                    book.active_in(pool)
                ))
            }
        }
        Block::Spend => {
            metrics.rejected_spend.fetch_add(1, Ordering::Relaxed);
            Rejection::SpendCap(
                "the lease's reservation (price × TTL) would pass the tenant's spend cap".into(),
            )
        }
    }
}

fn pool_view(pool: &PoolRecord) -> wire::Pool {
    wire::Pool {
        name: pool.name.clone(),
        provider: pool.provider.clone(),
        machine_type: pool.machine_type.clone(),
        hourly_price_micros: pool.hourly_price_micros,
        price_source: if pool.from_provider {
            wire::PriceSource::Provider
        } else {
            wire::PriceSource::Pool
        },
        max_active: pool.max_active,
        image: pool.image.clone(),
        region: pool.region.clone(),
        command: pool.command.clone(),
        labels: pool.labels.clone(),
        updated_at: rfc3339(pool.updated_at),
    }
}

fn build_client(
    env: &Env,
    tenant: &str,
    account: &str,
    kind: &str,
    config: &serde_json::Value,
    sealed: Option<&[u8]>,
) -> Result<Arc<dyn providers::Provider>, String> {
    let credentials = match sealed {
        None => json!({}),
        Some(sealed) => {
            let plaintext = env
                .keys
                .open(tenant, account, sealed)
                .map_err(|err| format!("provider account `{account}`: {err}"))?;
            serde_json::from_slice(&plaintext).map_err(|_| {
                format!("provider account `{account}`: stored credentials are not JSON")
            })?
        }
    };
    let account = providers::Account {
        tenant: tenant.to_owned(),
        name: account.to_owned(),
        kind: kind.to_owned(),
        config: config.clone(),
        credentials,
    };
    providers::build(&account, &env.providers)
        .map_err(|err| format!("provider account `{}`: {err}", account.name))
}

/// Applies a limits patch and checks the result.
fn apply_patch(mut limits: Limits, patch: &LimitsPatch) -> Result<Limits, String> {
    if let Some(v) = patch.max_active_leases {
        limits.max_active_leases = v;
    }
    if let Some(v) = patch.max_queued {
        limits.max_queued = v;
    }
    if let Some(v) = patch.spend_cap_daily_micros {
        limits.spend_cap_daily_micros = v;
    }
    if let Some(v) = patch.spend_cap_monthly_micros {
        limits.spend_cap_monthly_micros = v;
    }
    if let Some(v) = patch.default_ttl_s {
        limits.default_ttl_s = v;
    }
    if let Some(v) = patch.max_ttl_s {
        limits.max_ttl_s = v;
    }
    if let Some(v) = patch.default_idle_timeout_s {
        limits.default_idle_timeout_s = v;
    }
    if !(0..=1_000_000_000).contains(&limits.max_active_leases) {
        return Err("`max_active_leases` must be between 0 and 1000000000".into());
    }
    if !(0..=1_000_000).contains(&limits.max_queued) {
        return Err("`max_queued` must be between 0 and 1000000".into());
    }
    for (name, cap) in [
        ("spend_cap_daily_micros", limits.spend_cap_daily_micros),
        ("spend_cap_monthly_micros", limits.spend_cap_monthly_micros),
    ] {
        if cap.is_some_and(|cap| !(0..=MAX_SPEND_CAP).contains(&cap)) {
            return Err(format!("`{name}` must be between 0 and 10^18"));
        }
    }
    if !(1..=MAX_TTL_LIMIT_S).contains(&limits.max_ttl_s) {
        return Err(format!(
            "`max_ttl_s` must be between 1 and {MAX_TTL_LIMIT_S}"
        ));
    }
    if !(1..=limits.max_ttl_s).contains(&limits.default_ttl_s) {
        return Err("`default_ttl_s` must be between 1 and max_ttl_s".into());
    }
    if limits
        .default_idle_timeout_s
        .is_some_and(|idle| !(1..=MAX_TTL_LIMIT_S).contains(&idle))
    {
        return Err(format!(
            "`default_idle_timeout_s` must be between 1 and {MAX_TTL_LIMIT_S}"
        ));
    }
    Ok(limits)
}

fn validate_pool(pool: &wire::PoolPut, kind: &str) -> Result<(), String> {
    if pool.machine_type.is_empty() || pool.machine_type.len() > 200 {
        return Err("`machine_type` must be 1–200 characters".into());
    }
    if pool
        .max_active
        .is_some_and(|m| !(0..=1_000_000_000).contains(&m))
    {
        return Err("`max_active` must be between 0 and 1000000000".into());
    }
    for (field, value) in [("image", &pool.image), ("region", &pool.region)] {
        if value
            .as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > 200)
        {
            return Err(format!("`{field}` must be 1–200 characters"));
        }
    }
    let command = pool.command.as_deref().unwrap_or_default();
    if command.len() > 256
        || command
            .iter()
            .any(|arg| arg.len() > 4096 || arg.contains('\0'))
    {
        return Err(
            "`command` takes at most 256 arguments of at most 4096 bytes, without NUL".into(),
        );
    }
    if kind == "process" && command.is_empty() {
        return Err(
            "a pool of a `process` provider needs a `command` (the argv each runner runs)".into(),
        );
    }
    let labels = pool.labels.as_deref().unwrap_or_default();
    if labels.len() > 32 || labels.iter().any(|l| l.is_empty() || l.len() > 100) {
        return Err("`labels` takes at most 32 labels of 1–100 characters".into());
    }
    Ok(())
}

fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > 32 {
        return Err("a lease takes at most 32 labels".into());
    }
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.len() <= 63
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
        if !key_ok {
            return Err(format!(
                "label key `{}` must be 1–63 characters of letters, digits, `-`, `_`, `.` and `/`",
                key.chars().take(64).collect::<String>()
            ));
        }
        if value.len() > 255 || value.chars().any(char::is_control) {
            return Err(format!(
                "label `{key}`: values are at most 255 bytes, without control characters"
            ));
        }
    }
    Ok(())
}

/// Sums ledger amounts in SQL without SQLite's `integer overflow` error (a plain `SUM` past
/// `i64::MAX` fails the statement, and the request with it): the high and low 32 bits of each
/// amount are summed apart — each sum stays inside an `i64` for billions of rows — and joined
/// by [`ledger_sum`], saturating. (`/` truncates and `%` keeps the dividend's sign in SQLite,
/// so `amount = high × 2^32 + low` holds for negative amounts too.)
const LEDGER_SUM: &str =
    "COALESCE(SUM(amount_micros / 4294967296), 0), COALESCE(SUM(amount_micros % 4294967296), 0)";

/// Joins the two halves [`LEDGER_SUM`] selects into one saturated sum.
fn ledger_sum(high: i64, low: i64) -> i64 {
    book::saturate(i128::from(high) * (1 << 32) + i128::from(low))
}

async fn charged_since(ctx: &mut Ctx<'_, TenantBroker>, since: i64) -> Result<i64, Error> {
    let (high, low): (i64, i64) = sqlx::query_as(&format!(
        "SELECT {LEDGER_SUM} FROM ledger WHERE kind = 'charge' AND at >= ?1"
    ))
    .bind(since)
    .fetch_one(ctx.db().await?)
    .await?;
    Ok(ledger_sum(high, low))
}

/// Appends a ledger row (zero amounts are not written).
async fn ledger(
    ctx: &mut Ctx<'_, TenantBroker>,
    at: i64,
    lease: &Lease,
    kind: wire::LedgerKind,
    amount: i64,
) -> Result<(), Error> {
    if amount == 0 {
        return Ok(());
    }
    ctx.put(
        writer::LEDGER,
        &(at, &lease.id, &lease.pool, kind.as_str(), amount),
    )
}

async fn ledger_page(
    ctx: &mut Ctx<'_, TenantBroker>,
    after: i64,
    limit: usize,
) -> Result<wire::Page<wire::LedgerEntry>, Error> {
    let rows: Vec<(i64, i64, String, String, String, i64)> = sqlx::query_as(
        "SELECT seq, at, lease_id, pool, kind, amount_micros FROM ledger WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )
    .bind(after)
    .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
    .fetch_all(ctx.db().await?)
    .await?;
    let mut items = Vec::with_capacity(rows.len());
    for (seq, at, lease_id, pool, kind, amount_micros) in rows {
        let kind = match kind.as_str() {
            "reserve" => wire::LedgerKind::Reserve,
            "release" => wire::LedgerKind::Release,
            "charge" => wire::LedgerKind::Charge,
            other => return Err(Error::corrupt_value("ledger kind", other)),
        };
        items.push(wire::LedgerEntry {
            seq,
            at: rfc3339(at),
            lease_id,
            pool,
            kind,
            amount_micros,
        });
    }
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|e| e.seq.to_string())
    } else {
        None
    };
    Ok(wire::Page { items, next_cursor })
}

async fn events_after(
    ctx: &mut Ctx<'_, TenantBroker>,
    after: i64,
    limit: usize,
) -> Result<Vec<Event>, Error> {
    let rows: Vec<(i64, i64, String, String)> = sqlx::query_as(
        "SELECT seq, at, type, data FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )
    .bind(after)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(ctx.db().await?)
    .await?;
    rows.into_iter()
        .map(|(seq, at, kind, data)| {
            Ok(Event {
                seq,
                kind,
                at,
                data: RawValue::from_string(data).map_err(Error::corrupt)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::*;

    /// Ledger sums past `i64::MAX` saturate instead of failing the statement (a plain `SUM`
    /// answers SQLite's `integer overflow`), and stay exact below it, negative amounts too.
    #[tokio::test]
    async fn ledger_sums_saturate() {
        let mut db = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("in-memory SQLite");
        sqlx::query("CREATE TABLE ledger (amount_micros INTEGER NOT NULL)")
            .execute(&mut db)
            .await
            .expect("table");
        async fn sum(db: &mut sqlx::SqliteConnection) -> i64 {
            let (high, low): (i64, i64) =
                sqlx::query_as(&format!("SELECT {LEDGER_SUM} FROM ledger"))
                    .fetch_one(db)
                    .await
                    .expect("the sum never fails");
            ledger_sum(high, low)
        }
        assert_eq!(sum(&mut db).await, 0);
        for amount in [i64::MAX - 7, 5_000_000_123, -3] {
            sqlx::query("INSERT INTO ledger VALUES (?1)")
                .bind(amount)
                .execute(&mut db)
                .await
                .expect("insert");
        }
        let plain: Result<(i64,), _> = sqlx::query_as("SELECT SUM(amount_micros) FROM ledger")
            .fetch_one(&mut db)
            .await;
        assert!(plain.is_err(), "SQLite's SUM overflows: {plain:?}");
        assert_eq!(sum(&mut db).await, i64::MAX);
        sqlx::query("DELETE FROM ledger WHERE amount_micros > 5000000123")
            .execute(&mut db)
            .await
            .expect("delete");
        assert_eq!(sum(&mut db).await, 5_000_000_120);
    }
}
