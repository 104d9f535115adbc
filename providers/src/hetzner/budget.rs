//! The rate-limit budget of one Hetzner project, shared by every account of this process that
//! uses the project's token.
//!
//! Hetzner limits requests per project (default 3600 per hour) with a budget that refills
//! gradually — one request per second at 3600/h — and tells us where we stand on every answer:
//! `RateLimit-Limit` (the size of the budget), `RateLimit-Remaining` and `RateLimit-Reset`
//! (the Unix second at which the budget is *full* again). Waiting for the reset after a 429
//! would wait for the whole budget, up to an hour, when one request's worth of refill is a
//! second away. So the budget is modelled as a token bucket:
//!
//! - the refill rate is what the headers imply, `(limit − remaining) / (reset − now)`
//!   requests per second; when they imply nothing (a full budget, a reset already past), the
//!   documented `limit / 3600` per second;
//! - every answer carrying the headers sets the estimate of what is left; a 429 sets it to
//!   nothing left (or, with a `Retry-After`, to what makes the next request due exactly then);
//! - a request may go when one token is available, else it waits for the refill of the
//!   missing part of one token ([`Admission`]).
//!
//! Creates and destroys never wait longer than they must: they (and the lookups they make)
//! are [`Priority::Mutation`] and queue for refills in order, each reserving its token.
//! Listings and price lookups are [`Priority::Background`]: they go only while a reserve of
//! the budget (a twentieth, at most 100 requests) is left for mutations, and never reserve a
//! future token, so a reconciliation of many tenants never stands in front of a create.
//!
//! Budgets are found by a SHA-256 of the API's base URL and the token, never by the token
//! itself; two tokens of one project get two budgets (nothing tells us they share one), which
//! only costs an occasional 429.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::Duration;

use reqwest::header::HeaderMap;
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use crate::client;

/// The refill rate when nothing better is known: 3600 requests per hour.
const DEFAULT_RATE_PER_S: f64 = 1.0;
/// The wait after a 429 that says nothing about the budget ("back off at least 1 s").
const UNKNOWN_BACKOFF: Duration = Duration::from_secs(1);
/// The shortest wait of a background request before it looks at the budget again.
const MIN_RECHECK: Duration = Duration::from_millis(10);

/// Who asks: creates and destroys go first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Priority {
    /// Creating or destroying a server, and the lookups and action polls that belong to it.
    Mutation,
    /// Listing for reconciliation, prices.
    Background,
}

/// What a request may do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Send it.
    Now,
    /// Its token is reserved: send it after this wait.
    After(Duration),
    /// Look again after this wait (background requests reserve nothing).
    Recheck(Duration),
    /// The wait is longer than the caller may wait: hand it back to the broker.
    TooLong(Duration),
}

/// One project's budget. Cheap to share; never held across an await.
#[derive(Debug)]
pub(crate) struct Budget {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Requests available at `at`, as far as we know; below zero when mutations queue for
    /// refills. `None` until an answer told us anything: nothing is paced then.
    tokens: Option<f64>,
    /// When `tokens` was true.
    at: Instant,
    /// Refill rate in requests per second, always positive.
    rate: f64,
    /// The size of the budget (`RateLimit-Limit`).
    limit: f64,
    /// No request before this: a 429 that said nothing else.
    not_before: Option<Instant>,
}

/// Every budget in use, by the SHA-256 of base URL and token. Entries die with the last
/// account that uses them and are pruned when a new one is made.
static BUDGETS: LazyLock<Mutex<HashMap<[u8; 32], Weak<Budget>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

impl Budget {
    /// The budget of the project behind `token` at `base_url`, shared with every other
    /// account of this process that uses the same pair.
    pub(crate) fn shared(base_url: &str, token: &str) -> Arc<Budget> {
        let mut hasher = Sha256::new();
        hasher.update(base_url.as_bytes());
        hasher.update(b"\n");
        hasher.update(token.as_bytes());
        let key: [u8; 32] = hasher.finalize().into();
        let mut budgets = BUDGETS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(budget) = budgets.get(&key).and_then(Weak::upgrade) {
            return budget;
        }
        budgets.retain(|_, budget| budget.strong_count() > 0);
        let budget = Arc::new(Budget::new());
        budgets.insert(key, Arc::downgrade(&budget));
        budget
    }

    /// A budget of its own, knowing nothing yet.
    pub(crate) fn new() -> Budget {
        Budget {
            state: Mutex::new(State {
                tokens: None,
                at: Instant::now(),
                rate: DEFAULT_RATE_PER_S,
                limit: f64::INFINITY,
                not_before: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few numbers, consistent after every statement: poisoning is moot.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a request of `priority` may go now, waiting at most `max_wait`. A mutation
    /// that is told to wait has its token reserved; see [`Admission`].
    pub(crate) fn admit(&self, priority: Priority, max_wait: Duration) -> Admission {
        self.lock().admit(Instant::now(), priority, max_wait)
    }

    /// How long a mutation would wait now, without reserving anything: the `retry_after` to
    /// give the broker.
    pub(crate) fn wait_for_one(&self) -> Duration {
        self.lock().wait(Instant::now(), Priority::Mutation)
    }

    /// Learns from an answer: its rate-limit headers, whether it was a 429, and the
    /// `Retry-After` it carried.
    pub(crate) fn observe(
        &self,
        headers: &HeaderMap,
        rate_limited: bool,
        retry_after: Option<Duration>,
    ) {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .and_then(|text| text.trim().parse::<u64>().ok())
        };
        let limits = Limits {
            limit: number("ratelimit-limit"),
            remaining: number("ratelimit-remaining"),
            reset_s: number("ratelimit-reset"),
        };
        self.lock().observe(
            Instant::now(),
            client::now_ms(),
            &limits,
            rate_limited,
            retry_after,
        );
    }
}

/// The rate-limit headers of one answer.
#[derive(Clone, Copy, Debug, Default)]
struct Limits {
    limit: Option<u64>,
    remaining: Option<u64>,
    /// Unix seconds at which the budget is full again.
    reset_s: Option<u64>,
}

impl State {
    /// Tokens available at `now`: the estimate refilled since, up to the limit.
    fn available(&self, now: Instant) -> Option<f64> {
        let tokens = self.tokens?;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        Some((tokens + elapsed * self.rate).min(self.limit))
    }

    /// What a request of `priority` needs available: one token, plus the mutations' reserve
    /// for a background request.
    fn needed(&self, priority: Priority) -> f64 {
        match priority {
            Priority::Mutation => 1.0,
            Priority::Background => 1.0 + self.reserve(),
        }
    }

    /// The part of the budget background requests leave to mutations: a twentieth, at least
    /// one and at most 100 requests, and never the whole budget.
    fn reserve(&self) -> f64 {
        if !self.limit.is_finite() {
            return 0.0;
        }
        (self.limit / 20.0)
            .floor()
            .clamp(1.0, 100.0)
            .min((self.limit - 1.0).max(0.0))
    }

    /// How long a request of `priority` would wait at `now`.
    fn wait(&self, now: Instant, priority: Priority) -> Duration {
        let floor = self
            .not_before
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
        let Some(available) = self.available(now) else {
            return floor;
        };
        let missing = self.needed(priority) - available;
        let refill = if missing > 0.0 {
            Duration::try_from_secs_f64(missing / self.rate).unwrap_or(Duration::MAX)
        } else {
            Duration::ZERO
        };
        floor.max(refill)
    }

    fn admit(&mut self, now: Instant, priority: Priority, max_wait: Duration) -> Admission {
        let wait = self.wait(now, priority);
        if wait > max_wait {
            return Admission::TooLong(wait);
        }
        let take = |state: &mut State| {
            if let Some(available) = state.available(now) {
                state.tokens = Some(available - 1.0);
                state.at = now;
            }
        };
        match priority {
            Priority::Mutation => {
                // Reserving puts the estimate below zero when it waits: the next mutation
                // then waits for the refill after this one's, so they never all wake at once.
                take(self);
                if wait.is_zero() {
                    Admission::Now
                } else {
                    Admission::After(wait)
                }
            }
            Priority::Background if wait.is_zero() => {
                take(self);
                Admission::Now
            }
            Priority::Background => Admission::Recheck(wait.max(MIN_RECHECK)),
        }
    }

    fn observe(
        &mut self,
        now: Instant,
        now_ms: i64,
        limits: &Limits,
        rate_limited: bool,
        retry_after: Option<Duration>,
    ) {
        if let (Some(limit), Some(remaining)) = (limits.limit, limits.remaining) {
            let (limit, remaining) = (limit as f64, (remaining.min(limit)) as f64);
            self.limit = limit.max(1.0);
            let to_reset_s = limits
                .reset_s
                .and_then(|reset| i64::try_from(reset).ok())
                .map(|reset| (reset.saturating_mul(1000).saturating_sub(now_ms)) as f64 / 1000.0)
                .unwrap_or(0.0);
            if limit > remaining && to_reset_s > 0.0 {
                self.rate = (limit - remaining) / to_reset_s;
            } else if self.tokens.is_none() {
                self.rate = (limit / 3600.0).max(f64::MIN_POSITIVE);
            }
            // Mutations queued below zero keep their places: the API's count cannot know
            // about requests that have not been sent yet.
            let estimate = self.available(now);
            self.tokens = Some(match estimate {
                Some(estimate) if estimate < 0.0 => estimate.min(remaining),
                _ => remaining,
            });
            self.at = now;
            self.not_before = None;
        }
        if !rate_limited {
            return;
        }
        match (self.available(now), retry_after) {
            // Nothing is left, or exactly as much as makes the next request due when the API
            // said: one token after `retry_after`.
            (Some(available), Some(after)) => {
                self.tokens = Some(available.min(1.0 - after.as_secs_f64() * self.rate));
                self.at = now;
            }
            (Some(available), None) => {
                self.tokens = Some(available.min(0.0));
                self.at = now;
            }
            (None, after) => {
                self.not_before = Some(now + after.unwrap_or(UNKNOWN_BACKOFF));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: i64 = 3_600_000;

    fn limits(limit: u64, remaining: u64, reset_s: u64) -> Limits {
        Limits {
            limit: Some(limit),
            remaining: Some(remaining),
            reset_s: Some(reset_s),
        }
    }

    /// After a 429 with the whole hour to the reset (3600/h, nothing left), a mutation waits
    /// one request's worth (1 s), the next one a second more; a background request waits
    /// until the mutations' reserve is back.
    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_waits_one_request_not_the_reset() {
        let mut state = Budget::new().state.into_inner().unwrap();
        let now = Instant::now();
        let now_ms = 1_767_225_600_000;
        let reset = u64::try_from((now_ms + HOUR_MS) / 1000).unwrap();
        state.observe(now, now_ms, &limits(3600, 0, reset), true, None);
        let long = Duration::from_secs(600);
        assert_eq!(
            state.admit(now, Priority::Mutation, long),
            Admission::After(Duration::from_secs(1))
        );
        assert_eq!(
            state.admit(now, Priority::Mutation, long),
            Admission::After(Duration::from_secs(2))
        );
        // Two tokens are owed and 100 kept for mutations: 103 s until a listing may go.
        assert_eq!(
            state.admit(now, Priority::Background, long),
            Admission::Recheck(Duration::from_secs(103))
        );
        assert_eq!(
            state.admit(now, Priority::Mutation, Duration::from_millis(500)),
            Admission::TooLong(Duration::from_secs(3))
        );
    }

    /// A `Retry-After` on a 429 makes the next request due exactly then.
    #[tokio::test(start_paused = true)]
    async fn retry_after_sets_the_next_slot() {
        let mut state = Budget::new().state.into_inner().unwrap();
        let now = Instant::now();
        let now_ms = 1_767_225_600_000;
        let reset = u64::try_from((now_ms + HOUR_MS) / 1000).unwrap();
        state.observe(
            now,
            now_ms,
            &limits(3600, 0, reset),
            true,
            Some(Duration::from_secs(7)),
        );
        assert_eq!(state.wait(now, Priority::Mutation), Duration::from_secs(7));
        // A 429 without any header: one second.
        let mut blind = Budget::new().state.into_inner().unwrap();
        blind.observe(now, now_ms, &Limits::default(), true, None);
        assert_eq!(blind.wait(now, Priority::Mutation), UNKNOWN_BACKOFF);
        assert_eq!(
            blind.wait(now + UNKNOWN_BACKOFF, Priority::Mutation),
            Duration::ZERO
        );
    }

    /// A budget with room paces nothing; one that nears the end paces background requests
    /// first; time refills it.
    #[tokio::test(start_paused = true)]
    async fn background_requests_leave_the_reserve_to_mutations() {
        let mut state = Budget::new().state.into_inner().unwrap();
        let now = Instant::now();
        assert_eq!(
            state.admit(now, Priority::Background, Duration::ZERO),
            Admission::Now,
            "nothing known: nothing paced"
        );
        let now_ms = 1_767_225_600_000;
        // 40 of 3600 left, full again in 3560 s: one per second.
        let reset = u64::try_from(now_ms / 1000 + 3560).unwrap();
        state.observe(now, now_ms, &limits(3600, 40, reset), false, None);
        assert_eq!(
            state.admit(now, Priority::Mutation, Duration::ZERO),
            Admission::Now
        );
        assert!(matches!(
            state.admit(now, Priority::Background, Duration::from_secs(600)),
            Admission::Recheck(wait) if wait == Duration::from_secs(62)
        ));
        let later = now + Duration::from_secs(62);
        assert_eq!(
            state.admit(later, Priority::Background, Duration::ZERO),
            Admission::Now
        );
    }
}
