//! [`TenantBroker`]: the tenant's durable object — what it holds in memory, how it opens, and
//! how each event reaches the module that handles it. Requests are typed messages
//! ([`Handler`] impls at the end of this file dispatch them to `commands`); provider and
//! webhook results come back as [`Completion`]s; the alarm runs what is due. After every
//! event that may have changed something, [`TenantBroker::settle`] starts due webhook
//! deliveries and sets the one alarm to the earliest thing left to do.

use std::sync::LazyLock;

use crate::objects::{self, Answer, Call, Error, Handler, Message, Object};
use crate::wire::{Limits, Quota};

use super::accounts::Accounts;
use super::book::{Book, Charged};
use super::budget::BudgetMarks;
use super::commands::{self, github};
use super::event::Event;
use super::lease::Lease;
use super::money::Period;
use super::outbox::Outbox;
use super::pool::Pool;
use super::rejection::{self, Rejection};
use super::upkeep::Upkeep;
use super::watch::{self, Watch};
use super::{Ctx, Env, effects, jit, ledger, provisioning, quota, reconcile, row, transition};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/tenant");

/// The `_berth_kv` key of the running charge totals of the current day and month (a
/// [`Charged`], written at creation and with every charge so that a wake need not sum the
/// ledger).
pub(super) const CHARGED_KEY: &str = "charged";

/// One tenant: the object's state in memory. Each part belongs to the module named beside it;
/// the others go through its methods.
pub struct TenantBroker {
    /// The tenant's name (the object's).
    pub(super) name: String,
    /// When the tenant was created; `None` until `Create`.
    pub(super) created_at: Option<i64>,
    /// The operator's ceilings; `book.limits()` always fit them ([`quota`]).
    pub(super) quota: Quota,
    /// Open leases, pools, limits and spend ([`super::book`]).
    pub(super) book: Book,
    /// Provider accounts and their clients ([`super::accounts`]).
    pub(super) accounts: Accounts,
    /// The next event's sequence number ([`effects::emit`]).
    pub(super) next_seq: i64,
    /// Webhook endpoints and their delivery heads ([`super::outbox`]).
    pub(super) outbox: Outbox,
    /// Budget thresholds announced this period ([`super::budget`]).
    pub(super) budget: BudgetMarks,
    /// When reconciliation and pruning are due ([`super::upkeep`]).
    pub(super) upkeep: Upkeep,
    /// What reconciliation remembers between rounds ([`super::watch`]).
    pub(super) watch: Watch,
    /// The GitHub integration, if configured ([`github`]).
    pub(super) github: Option<github::Config>,
    /// GitHub just-in-time runners: the connection's client and registrations ([`jit`]).
    pub(super) jit: jit::Runners,
    /// Breaks ties between lease ids made in the same millisecond.
    pub(super) lease_counter: u64,
}

/// The result of background work, delivered back to the object as an event.
pub enum Completion {
    /// The provider's create of a lease's runner answered.
    Created {
        lease_id: String,
        /// The account the create went to (the lease's).
        account: String,
        result: Result<providers::Runner, providers::Error>,
    },
    /// The provider's destroy of a lease's runner answered.
    Destroyed {
        lease_id: String,
        result: Result<(), providers::Error>,
    },
    /// One account's listing of a reconciliation round came back.
    Listed {
        account: String,
        /// When the round started (every runner a listing shows existed then or later).
        started_at: i64,
        result: Result<Vec<providers::Runner>, providers::Error>,
    },
    /// Reconciliation's destroy of a runner no open lease owns answered.
    OrphanDestroyed {
        account: String,
        lease_id: String,
        runner_id: String,
        /// When reconciliation first saw it; `None` for a runner a create made for a lease
        /// that had closed.
        first_seen_at: Option<i64>,
        result: Result<(), providers::Error>,
    },
    /// A lease's GitHub registration answered ([`jit::registered`]); `create`: a create waits
    /// for it.
    Registered {
        lease_id: String,
        create: bool,
        result: Result<providers::github::Jit, providers::Error>,
    },
    /// The removal of a lease's GitHub registration answered.
    Deregistered {
        lease_id: String,
        result: Result<providers::github::Removal, providers::Error>,
    },
    /// Reconciliation's listing of the GitHub scope's registrations came back.
    GithubListed {
        result: Result<Vec<providers::github::Registration>, providers::Error>,
    },
    /// A webhook delivery attempt ended.
    Delivered {
        endpoint: String,
        delivery: i64,
        attempt: crate::webhooks::Attempt,
    },
}

/// The tenant's batched writers (see [`Object::writers`]): the rows written on the lease hot
/// path, each declared once with `row::table!`. Rarer rows are written with `row::insert`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Writer {
    Leases,
    Ledger,
    Events,
    Deliveries,
    Pools,
}

impl Writer {
    /// The writers, in the order of their indexes.
    const ALL: [Writer; 5] = [
        Writer::Leases,
        Writer::Ledger,
        Writer::Events,
        Writer::Deliveries,
        Writer::Pools,
    ];

    fn declare(self) -> objects::Writer {
        match self {
            Writer::Leases => row::writer::<Lease>(),
            Writer::Ledger => row::writer::<ledger::Entry>(),
            Writer::Events => row::writer::<Event>(),
            Writer::Deliveries => row::writer::<super::outbox::Delivery>(),
            Writer::Pools => row::writer::<Pool>(),
        }
    }

    /// Queues `row` (a `row::AsRow` of this writer's table) in the event.
    pub(super) fn put(self, ctx: &mut Ctx<'_>, row: &impl serde::Serialize) -> Result<(), Error> {
        ctx.put(self as usize, row)
    }
}

static WRITERS: LazyLock<[objects::Writer; 5]> = LazyLock::new(|| Writer::ALL.map(Writer::declare));

impl Object for TenantBroker {
    const NAMESPACE: &'static str = "tenant";
    type Env = Env;
    type Request = Call<Self>;
    type Reply = Answer;
    type Completion = Completion;
    type Event = Event;

    fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }

    fn writers() -> &'static [objects::Writer] {
        &*WRITERS
    }

    async fn load(ctx: &mut Ctx<'_>) -> Result<Self, Error> {
        let name = ctx
            .name()
            .ok_or_else(|| Error::corrupt("tenant object without a name"))?
            .to_owned();
        let now = ctx.now_ms();
        let limits: Limits = ctx.kv_get("limits")?.unwrap_or_default();
        // A tenant made before quotas has none stored: it gets the quota its limits match.
        let quota = match ctx.kv_get("quota")? {
            Some(quota) => quota,
            None => quota::matching(&limits),
        };
        let created_at: Option<i64> = ctx.kv_get("created_at")?;
        let budget: BudgetMarks = ctx.kv_get("budget")?.unwrap_or_default();
        // The running totals are written at creation and with every charge.
        let stored: Charged = ctx.kv_get(CHARGED_KEY)?.unwrap_or_default();
        let (day, month) = (Period::Day.bounds(now).0, Period::Month.bounds(now).0);
        // A period the stored totals do not cover (it began while the tenant slept, or the
        // totals predate them) is summed from the ledger: at the first wake of a day or a
        // month, so it is not in the load list, whose every statement each wake prepares. One
        // statement sums both periods.
        let charged = if stored.day.0 == day && stored.month.0 == month {
            stored
        } else {
            let (on_day, in_month) = ledger::charged_since(ctx.db()?, day, month)?;
            Charged {
                day: (day, on_day),
                month: (month, in_month),
            }
        };
        let tables = super::load::read(ctx.db()?)?;
        let mut book = Book::new(limits, ctx.env().timing.clone(), charged);
        let env = ctx.env().clone();
        let accounts = Accounts::from_rows(tables.accounts, tables.retired, &env, &name);
        for pool in tables.pools {
            book.put_pool(pool);
        }
        for lease in tables.leases {
            book.put(lease);
        }
        let runners = jit::Runners::from_rows(tables.runners);
        let mut upkeep = Upkeep::from_rows(ctx, tables.prunable_from)?;
        // Last: an endpoint's head is one more read each.
        let outbox = Outbox::from_rows(ctx, &name, tables.endpoints, tables.last_delivery).await?;
        let github = ctx.kv_get("github")?;
        let watch: Watch = ctx.kv_get(watch::KEY)?.unwrap_or_default();
        if watch.pending() {
            // An orphan in its grace period or a runner missed once waits for a round.
            upkeep.keep_looking(true, now);
        }
        Ok(TenantBroker {
            name,
            created_at,
            quota,
            book,
            accounts,
            next_seq: tables.last_seq.saturating_add(1),
            outbox,
            budget,
            upkeep,
            watch,
            github,
            jit: runners,
            lease_counter: 0,
        })
    }

    async fn activated(&mut self, ctx: &mut Ctx<'_>) -> Result<(), Error> {
        super::reseal::reseal(self, ctx).await?;
        let env = ctx.env().clone();
        jit::connect(self, &env);
        // Nothing is in flight after an activation: restart what the stored state calls for.
        let now = ctx.now_ms();
        let ids: Vec<String> = self.book.open().map(|l| l.id.clone()).collect();
        for id in ids {
            if let Some(lease) = self.book.take(&id) {
                let resumed = transition::resume(lease, now, self.book.timing());
                effects::apply(self, ctx, resumed).await?;
            }
        }
        reconcile::after_restart(self, ctx);
        // Ready pools are topped up to their min_ready (a runner made before a crash and never
        // recorded is found by reconciliation, labelled with its lease id).
        super::warm::refill_all(self, ctx).await?;
        self.settle(ctx).await
    }

    async fn handle(&mut self, ctx: &mut Ctx<'_>, call: Call<Self>) -> Result<Answer, Error> {
        // Read-only messages must not write, spawn or move the alarm: they skip `settle`.
        let read_only = call.read_only();
        let answer = call.dispatch(self, ctx).await?;
        if !read_only {
            self.settle(ctx).await?;
        }
        Ok(answer)
    }

    async fn complete(&mut self, ctx: &mut Ctx<'_>, completion: Completion) -> Result<(), Error> {
        match completion {
            Completion::Created {
                lease_id,
                account,
                result,
            } => {
                provisioning::created(self, ctx, &lease_id, &account, result).await?;
            }
            Completion::Destroyed { lease_id, result } => {
                provisioning::destroyed(self, ctx, &lease_id, result).await?;
            }
            Completion::Listed {
                account,
                started_at,
                result,
            } => {
                reconcile::listed(self, ctx, &account, started_at, result).await?;
            }
            Completion::OrphanDestroyed {
                account,
                lease_id,
                runner_id,
                first_seen_at,
                result,
            } => {
                let destroyed = reconcile::Destroyed {
                    account,
                    lease_id,
                    runner_id,
                    first_seen_at,
                };
                reconcile::orphan_destroyed(self, ctx, destroyed, result).await?;
            }
            Completion::Delivered {
                endpoint,
                delivery,
                attempt,
            } => super::outbox::delivered(self, ctx, &endpoint, delivery, attempt).await?,
            Completion::Registered {
                lease_id,
                create,
                result,
            } => jit::registered(self, ctx, lease_id, create, result).await?,
            Completion::Deregistered { lease_id, result } => {
                jit::deregistered(self, ctx, &lease_id, result)?;
            }
            Completion::GithubListed { result } => jit::listed(self, ctx, result).await?,
        }
        self.settle(ctx).await
    }

    async fn alarm(&mut self, ctx: &mut Ctx<'_>) -> Result<(), Error> {
        let now = ctx.now_ms();
        for id in self.book.due(now) {
            if let Some(lease) = self.book.take(&id) {
                let due = transition::deadline(lease, now, self.book.timing());
                effects::apply(self, ctx, due).await?;
            }
        }
        if self.upkeep.reconcile_due(now) {
            reconcile::start(self, ctx);
        }
        if self.upkeep.prune_due(now) {
            super::upkeep::prune(self, ctx).await?;
        }
        // Ready pools whose refills paused after failures, or that a spend cap held back.
        super::warm::refill_all(self, ctx).await?;
        jit::run_due(self, ctx);
        // A new spend period may have freed budget for queued leases.
        effects::drain_queue(self, ctx).await?;
        self.settle(ctx).await
    }
}

impl TenantBroker {
    /// After every event that may have changed something: start due webhook deliveries and
    /// set the alarm.
    async fn settle(&mut self, ctx: &mut Ctx<'_>) -> Result<(), Error> {
        super::outbox::pump(self, ctx).await?;
        self.rearm(ctx);
        ctx.env().metrics.families.report_open(
            &self.name,
            self.book.active(),
            self.book.queued(),
            self.book.warm().totals(),
        );
        Ok(())
    }

    /// Sets the alarm to the earliest thing the object must do: a lease deadline, a delivery
    /// retry, the next reconciliation or pruning, or — while queued leases wait on a spend
    /// cap — the start of the next day.
    fn rearm(&self, ctx: &mut Ctx<'_>) {
        let mut next = self
            .book
            .next_deadline()
            .into_iter()
            .chain(self.outbox.next_due())
            .chain(self.jit.next_due())
            .min();
        let mut consider = |at: i64| next = Some(next.map_or(at, |n| n.min(at)));
        if self.created_at.is_some() {
            if let Some(at) = self.upkeep.next_reconcile(!self.accounts.is_empty()) {
                consider(at);
            }
            if let Some(at) = self.upkeep.next_prune() {
                consider(at);
            }
        }
        if let Some(at) = self.book.warm().next_unpause(ctx.now_ms()) {
            consider(at);
        }
        let limits = self.book.limits();
        if self.book.queued() > 0
            && (limits.spend_cap_daily_micros.is_some()
                || limits.spend_cap_monthly_micros.is_some())
        {
            consider(Period::Day.bounds(ctx.now_ms()).1);
        }
        match next {
            Some(at) => ctx.set_alarm(at),
            None => ctx.delete_alarm(),
        }
    }

    /// The tenant as the API shows it.
    pub(super) fn tenant_view(&self) -> crate::wire::Tenant {
        crate::wire::Tenant {
            name: self.name.clone(),
            created_at: objects::clock::rfc3339(self.created_at.unwrap_or_default()),
            limits: self.book.limits().clone(),
            quota: self.quota.clone(),
        }
    }

    /// A lease as the API shows it, with its queue position.
    pub(super) fn lease_view(&self, lease: &Lease) -> crate::wire::Lease {
        let mut view = lease.to_wire(&self.name, self.book.queue_position(&lease.id));
        view.github = self.jit.view(&lease.id);
        view
    }

    /// A new lease id: `lease_<ms hex><counter hex><random hex>`, sorting by creation time.
    pub(super) fn new_lease_id(&mut self, now: i64) -> String {
        self.lease_counter = self.lease_counter.wrapping_add(1);
        let random: u32 = rand::random();
        format!(
            "lease_{:012x}{:06x}{:08x}",
            now.max(0),
            self.lease_counter & 0xff_ffff,
            random
        )
    }
}

/// Implements [`Handler`] for each message: refuse everything but `Create` for a tenant that
/// does not exist, run the command, and turn its [`rejection::Failure`] into the reply.
macro_rules! handlers {
    ($( $message:ty => $command:path $(, $creates:ident)? ;)*) => {$(
        impl Handler<$message> for TenantBroker {
            async fn handle(
                &mut self,
                ctx: &mut Ctx<'_>,
                message: $message,
            ) -> Result<<$message as Message>::Reply, Error> {
                if !handlers!(@creates $($creates)?) && self.created_at.is_none() {
                    return Ok(Err(Rejection::NoTenant));
                }
                rejection::reply($command(self, ctx, message).await)
            }
        }
    )*};
    (@creates creates) => { true };
    (@creates) => { false };
}

handlers! {
    commands::tenant::Create => commands::tenant::create, creates;
    commands::tenant::Get => commands::tenant::get;
    commands::tenant::Patch => commands::tenant::patch;
    commands::accounts::PutProvider => commands::accounts::put;
    commands::accounts::ListProviders => commands::accounts::list;
    commands::accounts::ProviderHandle => commands::accounts::handle;
    commands::pools::PutPool => commands::pools::put;
    commands::pools::ListPools => commands::pools::list;
    commands::request::RequestLease => commands::request::request;
    commands::leases::GetLease => commands::leases::get;
    commands::leases::ListLeases => commands::leases::list;
    commands::heartbeat::Heartbeat => commands::heartbeat::heartbeat;
    commands::release::Release => commands::release::release;
    commands::release::RunnerDone => commands::release::runner_done;
    commands::ready::RunnerReady => commands::ready::runner_ready;
    commands::exited::RunnerExited => commands::exited::runner_exited;
    commands::logs::LeaseRunner => commands::logs::runner;
    commands::reports::Usage => commands::reports::usage;
    commands::reports::Ledger => commands::reports::ledger;
    commands::reports::Events => commands::reports::events;
    commands::reports::LatestEvent => commands::reports::latest_event;
    commands::webhooks::PutWebhook => commands::webhooks::put;
    commands::webhooks::GetWebhook => commands::webhooks::get;
    commands::webhooks::ListWebhooks => commands::webhooks::list;
    commands::webhooks::DeleteWebhook => commands::webhooks::delete;
    commands::webhooks::TestWebhook => commands::webhooks::test;
    commands::webhooks::ListDeliveries => commands::webhooks::deliveries;
    github::PutGithub => github::put;
    github::GetGithub => github::get;
    github::GithubSecret => github::secret;
    github::GithubDelivery => github::delivery;
    jit::RunnerJitConfig => jit::runner_config;
    commands::dashboard::Status => commands::dashboard::status;
    commands::dashboard::SpendHistory => commands::dashboard::spend_history;
    commands::dashboard::QueueHistory => commands::dashboard::queue_history;
    commands::restored::Restored => commands::restored::restored;
}
