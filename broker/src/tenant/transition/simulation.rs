//! A property test: random sequences of transitions through a pure simulation of the object
//! (the book, the queue, provider answers, a clock), checking the invariants the integration
//! suites check end to end: never more active leases than the cap, and a ledger that balances.

use proptest::prelude::*;

use super::tests::{NOW, book, requested, runner, timing};
use super::*;
use crate::wire::Limits;

/// One step of the simulation.
#[derive(Clone, Debug)]
enum Step {
    Request {
        ttl_s: i64,
        wait: bool,
    },
    Answer {
        pick: usize,
        ok: bool,
    },
    Heartbeat {
        pick: usize,
        extend_s: Option<i64>,
    },
    Release {
        pick: usize,
    },
    /// The runner of a lease exits on its own (or after its end, which changes nothing).
    Exit {
        pick: usize,
    },
    Advance {
        ms: i64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1_i64..1_200, any::<bool>()).prop_map(|(ttl_s, wait)| Step::Request { ttl_s, wait }),
        4 => (any::<usize>(), prop::bool::weighted(0.8)).prop_map(|(pick, ok)| Step::Answer { pick, ok }),
        1 => (any::<usize>(), prop::option::of(1_i64..600)).prop_map(|(pick, extend_s)| Step::Heartbeat { pick, extend_s }),
        2 => any::<usize>().prop_map(|pick| Step::Release { pick }),
        1 => any::<usize>().prop_map(|pick| Step::Exit { pick }),
        2 => (1_i64..400_000).prop_map(|ms| Step::Advance { ms }),
    ]
}

/// The object, reduced to its book and ledger, applying transitions the way `effects` does.
struct Sim {
    book: Book,
    now: i64,
    next_id: u32,
    /// `(lease, kind, amount)` of every ledger row.
    ledger: Vec<(String, LedgerKind, i64)>,
    /// Most active leases seen at once.
    most_active: i64,
}

impl Sim {
    fn apply(&mut self, t: Transition) {
        let id = t.lease.id.clone();
        for effect in &t.effects {
            match *effect {
                Effect::Ledger(kind, amount) if amount > 0 => {
                    self.ledger.push((id.clone(), kind, amount));
                }
                Effect::Charge(amount) => self.book.add_charge(self.now, amount),
                _ => {}
            }
        }
        self.book.put(t.lease);
        self.most_active = self.most_active.max(self.book.active());
        if t.effects.contains(&Effect::DrainQueue) {
            self.drain();
        }
    }

    fn drain(&mut self) {
        for id in self.book.waiting(self.now) {
            let Some(lease) = self.book.get(&id) else {
                continue;
            };
            let reservation = money::reservation(lease.hourly_price_micros, lease.ttl_s);
            if self.book.admit(&lease.pool, reservation, self.now).is_ok() {
                let lease = self.book.take(&id).expect("open");
                self.apply(grant(lease, self.now, &timing()));
            }
        }
    }

    fn pick(&self, pick: usize, want: impl Fn(&Lease) -> bool) -> Option<String> {
        let ids: Vec<String> = self
            .book
            .open()
            .filter(|l| want(l))
            .map(|l| l.id.clone())
            .collect();
        (!ids.is_empty()).then(|| ids[pick % ids.len()].clone())
    }

    fn run(&mut self, step: Step) {
        match step {
            Step::Request { ttl_s, wait } => {
                self.next_id += 1;
                let lease = Lease {
                    ttl_s,
                    ..requested(&format!("lease_{:06}", self.next_id))
                };
                let reservation = money::reservation(lease.hourly_price_micros, ttl_s);
                if self.book.admit("p", reservation, self.now).is_ok() {
                    self.apply(grant(lease, self.now, &timing()));
                } else if wait && self.book.queued() < self.book.limits().max_queued {
                    self.apply(queue(lease, self.now + 60_000));
                }
            }
            Step::Answer { pick, ok } => {
                let Some(id) = self.pick(pick, |l| l.op.is_some()) else {
                    return;
                };
                let lease = self.book.take(&id).expect("open");
                let t = match lease.op {
                    Some((Op::Create, _)) => {
                        let result = if ok {
                            Ok(runner(&id, true))
                        } else {
                            Err(providers::Error::transient("flaky"))
                        };
                        created(lease, result, self.now, &timing())
                    }
                    _ => {
                        let result = if ok {
                            Ok(())
                        } else {
                            Err(providers::Error::transient("flaky"))
                        };
                        destroyed(lease, result, self.now, &timing())
                    }
                };
                self.apply(t);
            }
            Step::Heartbeat { pick, extend_s } => {
                let Some(id) = self.pick(pick, |_| true) else {
                    return;
                };
                let lease = self.book.take(&id).expect("open");
                match heartbeat(lease, &self.book, self.now, extend_s) {
                    Ok(t) => self.apply(t),
                    Err(refused) => self.book.put(*refused.lease),
                }
            }
            Step::Release { pick } => {
                let Some(id) = self.pick(pick, |_| true) else {
                    return;
                };
                let lease = self.book.take(&id).expect("open");
                self.apply(end(lease, EndReason::Released, self.now, &timing()));
            }
            Step::Exit { pick } => {
                let Some(id) = self.pick(pick, |l| l.granted_at.is_some()) else {
                    return;
                };
                let lease = self.book.take(&id).expect("open");
                let status = providers::exits::ExitStatus::Code(1);
                self.apply(runner_exited(lease, status, None, self.now, &timing()));
            }
            Step::Advance { ms } => {
                self.now += ms;
                for id in self.book.due(self.now) {
                    if let Some(lease) = self.book.take(&id) {
                        self.apply(deadline(lease, self.now, &timing()));
                    }
                }
                self.drain();
            }
        }
    }
}

proptest! {
    /// Random requests, provider answers (20 % failing), heartbeats, releases, runner exits and
    /// time: never more active leases than the cap, never more reserved than the spend cap
    /// allows at a grant; once every lease is released and every runner confirmed gone, each lease's
    /// reservations were all released and nothing is left reserved.
    #[test]
    fn transitions_keep_the_caps_and_balance_the_ledger(steps in prop::collection::vec(step(), 1..120)) {
        const CAP: i64 = 3;
        let mut sim = Sim {
            book: book(Limits {
                max_active_leases: CAP,
                max_queued: 4,
                spend_cap_daily_micros: Some(10_000),
                max_ttl_s: 1_800,
                ..Limits::default()
            }),
            now: NOW,
            next_id: 0,
            ledger: Vec::new(),
            most_active: 0,
        };
        for step in steps {
            sim.run(step);
            prop_assert!(sim.book.active() <= CAP, "{} active", sim.book.active());
        }
        prop_assert!(sim.most_active <= CAP);
        // Wind down: release everything, answer every provider call successfully.
        for _ in 0..200 {
            let ids: Vec<String> = sim.book.open().map(|l| l.id.clone()).collect();
            if ids.is_empty() {
                break;
            }
            for id in ids {
                let Some(lease) = sim.book.take(&id) else { continue };
                let t = match lease.op {
                    Some((Op::Create, _)) => created(lease, Ok(runner(&id, true)), sim.now, &timing()),
                    Some((Op::Destroy, _)) => destroyed(lease, Ok(()), sim.now, &timing()),
                    None if lease.state == LeaseState::Releasing => {
                        let mut lease = lease;
                        lease.next_attempt_at = None;
                        resume(lease, sim.now, &timing())
                    }
                    None => end(lease, EndReason::Released, sim.now, &timing()),
                };
                sim.apply(t);
            }
            sim.now += 1_000;
        }
        prop_assert_eq!(sim.book.open().count(), 0, "every lease ended");
        prop_assert_eq!(sim.book.open_reserved(), 0);
        let mut balance: BTreeMap<&str, i64> = BTreeMap::new();
        for (id, kind, amount) in &sim.ledger {
            let entry = balance.entry(id.as_str()).or_default();
            match kind {
                LedgerKind::Reserve | LedgerKind::WarmReserve => *entry += amount,
                LedgerKind::Release | LedgerKind::WarmRelease => *entry -= amount,
                LedgerKind::Charge | LedgerKind::WarmCharge => {}
            }
        }
        for (id, left) in balance {
            prop_assert_eq!(left, 0, "lease {} kept a reservation", id);
        }
    }
}
