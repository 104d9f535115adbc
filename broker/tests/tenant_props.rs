//! Property test of the tenant object: random sequences of lease requests, heartbeats,
//! releases, clock advances and restarts, checked after every step against the invariants of
//! DESIGN.md §4.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use broker::objects::{Clock, Handler, ManualClock, Message, Namespace, Options, Runtime};
use broker::secrets::Keys;
use broker::tenant::money;
use broker::tenant::{self, Env, Filter, TenantBroker, Timing};
use broker::wire::{self, LeaseState, LimitsPatch};
use proptest::prelude::*;

const T0: i64 = 1_800_000_000_000;
const CAP: i64 = 3;
const SPEND_CAP: i64 = 2_000_000;
const PRICE: i64 = 3_600_000; // 1,000 micros per second

#[derive(Clone, Debug)]
enum Op {
    Request {
        ttl_s: i64,
        wait_s: i64,
        idle_s: Option<i64>,
    },
    Heartbeat {
        pick: usize,
        extend_s: Option<i64>,
    },
    Release {
        pick: usize,
    },
    Advance {
        ms: i64,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1i64..900, prop_oneof![Just(0i64), 1i64..120], proptest::option::weighted(0.3, 5i64..200))
            .prop_map(|(ttl_s, wait_s, idle_s)| Op::Request { ttl_s, wait_s, idle_s }),
        2 => (any::<usize>(), proptest::option::weighted(0.5, 1i64..600))
            .prop_map(|(pick, extend_s)| Op::Heartbeat { pick, extend_s }),
        2 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        3 => (1i64..300_000).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Restart),
    ]
}

struct World {
    dir: tempfile::TempDir,
    clock: ManualClock,
    runtime: Runtime,
    ns: Namespace<TenantBroker>,
    cloud: String,
    ids: Vec<String>,
}

fn env(dir: &std::path::Path) -> Arc<Env> {
    Arc::new(Env {
        keys: Keys::from_master(&[3; 32]),
        providers: providers::Environment {
            allow_private_network: true,
            enable_fake: true,
            ..providers::Environment::new(dir, dir.join("runners"))
        },
        public_url: "http://127.0.0.1:9".into(),
        timing: Timing::default(),
        metrics: Arc::new(tenant::Metrics::default()),
        webhooks: Arc::new(tenant::WebhookSender::new(true, None, 8)),
    })
}

async fn open(dir: &std::path::Path, clock: &ManualClock) -> (Runtime, Namespace<TenantBroker>) {
    let mut options = Options::new(dir);
    options.clock = Arc::new(clock.clone());
    // Speed over durability: these runs check logic, not fsyncs.
    options.durability = broker::objects::Durability::Off;
    let runtime = Runtime::open(options).await.expect("runtime");
    let ns = runtime.namespace::<TenantBroker>(env(dir));
    (runtime, ns)
}

impl World {
    async fn new() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(T0);
        let (runtime, ns) = open(dir.path(), &clock).await;
        let cloud = format!("props-{:016x}", rand::random::<u64>());
        let world = World {
            dir,
            clock,
            runtime,
            ns,
            cloud,
            ids: Vec::new(),
        };
        world
            .call(tenant::Create {
                limits: Some(LimitsPatch {
                    max_active_leases: Some(CAP),
                    max_queued: Some(4),
                    spend_cap_daily_micros: Some(Some(SPEND_CAP)),
                    max_ttl_s: Some(1_200),
                    default_ttl_s: Some(600),
                    ..LimitsPatch::default()
                }),
                quota: None,
            })
            .await
            .expect("created");
        world
            .call(tenant::PutProvider {
                name: "cloud".into(),
                account: wire::ProviderPut {
                    kind: "fake".into(),
                    config: serde_json::json!({ "cloud": world.cloud }),
                    credentials: serde_json::json!({}),
                },
                by_operator: true,
                force: false,
            })
            .await
            .expect("provider");
        world
            .call(tenant::PutPool {
                name: "p".into(),
                pool: wire::PoolPut {
                    provider: "cloud".into(),
                    machine_type: "m".into(),
                    hourly_price_micros: Some(PRICE),
                    max_active: None,
                    image: None,
                    region: None,
                    command: None,
                    labels: None,
                    alternatives: None,
                    min_ready: None,
                    max_ready: None,
                    warm_ttl_s: None,
                    github: None,
                },
                provider_price: None,
                by_operator: true,
            })
            .await
            .expect("pool");
        world
    }

    async fn call<M, T>(&self, message: M) -> Result<T, tenant::Rejection>
    where
        M: Message<Reply = Result<T, tenant::Rejection>>,
        TenantBroker: Handler<M>,
    {
        self.ns
            .get_by_name("acme")
            .ask(message)
            .await
            .expect("object answers")
    }

    async fn apply(&mut self, op: &Op) {
        match op {
            Op::Request {
                ttl_s,
                wait_s,
                idle_s,
            } => {
                let request = wire::LeaseRequest {
                    pool: "p".into(),
                    ttl_s: Some(*ttl_s),
                    idle_timeout_s: *idle_s,
                    wait_s: Some(*wait_s),
                    labels: BTreeMap::new(),
                };
                if let Ok(tenant::Requested { lease, .. }) = self
                    .call(tenant::RequestLease {
                        request,
                        idempotency_key: None,
                    })
                    .await
                {
                    self.ids.push(lease.id);
                }
            }
            Op::Heartbeat { pick, extend_s } if !self.ids.is_empty() => {
                let id = self.ids[pick % self.ids.len()].clone();
                let _ = self
                    .call(tenant::Heartbeat {
                        id,
                        extend_ttl_s: *extend_s,
                    })
                    .await;
            }
            Op::Release { pick } if !self.ids.is_empty() => {
                let id = self.ids[pick % self.ids.len()].clone();
                let _ = self.call(tenant::Release { id }).await;
            }
            Op::Advance { ms } => {
                let now = self.clock.now_ms();
                self.clock.set(now + ms);
            }
            Op::Restart => {
                self.runtime.shutdown(Duration::from_secs(10)).await;
                let (runtime, ns) = open(self.dir.path(), &self.clock).await;
                self.runtime = runtime;
                self.ns = ns;
            }
            _ => {}
        }
    }

    async fn leases(&self) -> Vec<wire::Lease> {
        self.call(tenant::ListLeases {
            filter: Filter {
                limit: 10_000,
                ..Filter::default()
            },
        })
        .await
        .expect("leases")
        .items
    }

    async fn ledger(&self) -> Vec<wire::LedgerEntry> {
        self.call(tenant::Ledger {
            after: 0,
            limit: 100_000,
        })
        .await
        .expect("ledger")
        .items
    }

    /// Waits (bounded) until background work and due alarms have run: nothing provisioning
    /// or releasing (the fake provider answers at once), and no open lease past a deadline.
    /// Returns the leases, or an error naming the stuck one.
    async fn settle(&self) -> Result<Vec<wire::Lease>, String> {
        let mut last = Vec::new();
        for _ in 0..1_000 {
            let now = self.clock.now_ms();
            last = self.leases().await;
            let stuck = last.iter().find(|l| !settled(l, now));
            if stuck.is_none() {
                return Ok(last);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let now = self.clock.now_ms();
        Err(format!(
            "not settled at {now}: {:?}",
            last.iter().find(|l| !settled(l, now))
        ))
    }
}

fn ms(text: &Option<String>) -> Option<i64> {
    text.as_deref().map(|t| {
        chrono::DateTime::parse_from_rfc3339(t)
            .expect("rfc3339")
            .timestamp_millis()
    })
}

/// A lease is settled when no background work or due deadline is pending for it.
fn settled(lease: &wire::Lease, now: i64) -> bool {
    match lease.state {
        LeaseState::Provisioning | LeaseState::Releasing => false,
        LeaseState::Queued => ms(&lease.wait_until).is_some_and(|at| at > now),
        LeaseState::Ready => {
            let idle_at = lease.idle_timeout_s.map(|idle| {
                ms(&lease.last_heartbeat_at)
                    .or(ms(&lease.granted_at))
                    .unwrap_or(0)
                    + idle * 1_000
            });
            ms(&lease.expires_at).is_some_and(|at| at > now) && idle_at.is_none_or(|at| at > now)
        }
        _ => true,
    }
}

/// The invariants, checked on a settled state.
fn check(leases: &[wire::Lease], ledger: &[wire::LedgerEntry], now: i64) -> Result<(), String> {
    let active = leases.iter().filter(|l| l.state.is_active()).count() as i64;
    if active > CAP {
        return Err(format!("{active} active leases, cap {CAP}"));
    }
    // A queued lease that fits is a lost grant.
    let queued = leases
        .iter()
        .filter(|l| l.state == LeaseState::Queued)
        .count();
    let reserved: i64 = leases.iter().map(|l| l.cost.reserved_micros).sum();
    let (day_start, _) = money::Period::Day.bounds(now);
    let mut by_lease: HashMap<&str, (i64, i64, i64)> = HashMap::new();
    let mut charged_today = 0;
    for entry in ledger {
        let slot = by_lease.entry(entry.lease_id.as_str()).or_default();
        match entry.kind {
            wire::LedgerKind::Reserve | wire::LedgerKind::WarmReserve => {
                slot.0 += entry.amount_micros
            }
            wire::LedgerKind::Release | wire::LedgerKind::WarmRelease => {
                slot.1 += entry.amount_micros
            }
            wire::LedgerKind::Charge | wire::LedgerKind::WarmCharge => {
                slot.2 += entry.amount_micros;
                if ms(&Some(entry.at.clone())).unwrap_or(0) >= day_start {
                    charged_today += entry.amount_micros;
                }
            }
        }
    }
    // A runner that outlives its TTL (the clock jumped past the deadline, as when berth was
    // down) is charged for its whole life: that excess is the only spend allowed past the cap.
    let overage_today: i64 = leases
        .iter()
        .filter(|l| {
            l.state.is_terminal() && ms(&l.runner_destroyed_at).is_some_and(|at| at >= day_start)
        })
        .map(|l| {
            let (reserve, _, charge) = by_lease.get(l.id.as_str()).copied().unwrap_or_default();
            (charge - reserve).max(0)
        })
        .sum();
    if charged_today - overage_today + reserved > SPEND_CAP {
        return Err(format!(
            "spent {charged_today} (of which {overage_today} past TTLs) + reserved {reserved} passes the cap {SPEND_CAP}"
        ));
    }
    for lease in leases {
        let (reserve, release, charge) =
            by_lease.get(lease.id.as_str()).copied().unwrap_or_default();
        if reserve - release != lease.cost.reserved_micros {
            return Err(format!(
                "{}: ledger holds {} open, lease says {}",
                lease.id,
                reserve - release,
                lease.cost.reserved_micros
            ));
        }
        if lease.state.is_terminal() {
            if lease.cost.reserved_micros != 0 {
                return Err(format!("{} ended with an open reservation", lease.id));
            }
            if charge != lease.cost.charged_micros {
                return Err(format!(
                    "{}: charged {} in the ledger, {} on the lease",
                    lease.id, charge, lease.cost.charged_micros
                ));
            }
            if let (Some(granted), Some(destroyed)) =
                (ms(&lease.granted_at), ms(&lease.runner_destroyed_at))
            {
                let expected = money::charge(PRICE, granted, destroyed);
                if charge != expected {
                    return Err(format!(
                        "{}: charged {charge}, runner lifetime says {expected}",
                        lease.id
                    ));
                }
                let outlasted = ms(&lease.expires_at).is_some_and(|expires| destroyed > expires);
                if charge > reserve && !outlasted {
                    return Err(format!(
                        "{}: charge {charge} passed reservation {reserve} without outlasting its TTL",
                        lease.id
                    ));
                }
            } else if charge != 0 || reserve != 0 {
                return Err(format!("{}: never granted but has ledger rows", lease.id));
            }
        }
    }
    // No queued lease may fit: the slot a lease frees goes to the queue in the same event.
    if queued > 0 && active < CAP {
        // Real spend here: an overage consumed budget like any charge.
        let spent = charged_today + reserved;
        for lease in leases.iter().filter(|l| l.state == LeaseState::Queued) {
            let needs = money::reservation(PRICE, lease.ttl_s);
            if spent + needs <= SPEND_CAP {
                return Err(format!(
                    "{} waits in the queue although a slot and budget are free",
                    lease.id
                ));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random request / heartbeat / release / clock / restart sequences keep every
    /// invariant: active ≤ cap, spend ≤ cap, a balanced ledger with exact charges, and no
    /// lease left open past its deadline once the alarm ran.
    #[test]
    fn random_sequences_keep_the_invariants(ops in proptest::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
        let outcome: Result<(), String> = runtime.block_on(async {
            let mut world = World::new().await;
            for (step, op) in ops.iter().enumerate() {
                world.apply(op).await;
                let leases = world.settle().await.map_err(|e| format!("after step {step} {op:?}: {e}"))?;
                let ledger = world.ledger().await;
                check(&leases, &ledger, world.clock.now_ms()).map_err(|e| format!("after step {step} {op:?}: {e}"))?;
            }
            world.runtime.shutdown(Duration::from_secs(10)).await;
            Ok(())
        });
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}
