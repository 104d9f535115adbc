//! The `fake` provider through the `Provider` trait, built the way the broker builds it.
//!
//! Every test names its own cloud: the clouds are process-global and the tests run in
//! parallel.

mod fixtures;

use std::sync::Arc;
use std::time::Duration;

use fixtures::{build, by_lease, env, spec};
use providers::fake::{self, EventKind};
use providers::{Error, Provider, RunnerRef};
use serde_json::{Value, json};

fn fake(config: Value) -> Arc<dyn Provider> {
    build(
        "fake",
        config,
        json!({}),
        &env(std::path::Path::new("/nonexistent"), false),
    )
}

/// A second create for the same lease returns the same runner and counts no new one.
#[tokio::test]
async fn create_is_idempotent_by_lease() {
    let provider = fake(json!({"cloud": "idempotent"}));
    let first = provider.create(&spec("acme", "lease_1")).await.unwrap();
    let second = provider.create(&spec("acme", "lease_1")).await.unwrap();
    assert_eq!(first, second);
    assert!(first.ready);
    assert_eq!(
        (first.tenant.as_str(), first.lease_id.as_str()),
        ("acme", "lease_1")
    );

    let cloud = fake::cloud_of("acme", "idempotent");
    assert_eq!(cloud.created_total(), 1);
    assert_eq!(cloud.create_calls(), 2);
    assert_eq!(cloud.live_count(), 1);
    assert_eq!(cloud.runner_for("acme", "lease_1"), Some(first));
}

/// Concurrent creates of one lease make one runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_make_one_runner() {
    let provider = fake(json!({"cloud": "concurrent"}));
    let calls = (0..32).map(|_| {
        let provider = provider.clone();
        tokio::spawn(async move { provider.create(&spec("acme", "lease_c")).await })
    });
    let mut ids = Vec::new();
    for call in calls {
        ids.push(call.await.unwrap().unwrap().id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!(fake::cloud_of("acme", "concurrent").created_total(), 1);
}

/// Destroying an unknown runner, by id or by lease, is a success and counts nothing.
#[tokio::test]
async fn destroy_unknown_is_ok() {
    let provider = fake(json!({"cloud": "destroy-unknown"}));
    provider
        .destroy(&by_lease("acme", "lease_none"))
        .await
        .unwrap();
    let by_id = RunnerRef {
        id: Some("fake-999".to_string()),
        ..by_lease("acme", "lease_none")
    };
    provider.destroy(&by_id).await.unwrap();
    let cloud = fake::cloud_of("acme", "destroy-unknown");
    assert_eq!(cloud.destroyed_total(), 0);
    assert_eq!(cloud.destroy_calls(), 2);
}

/// Destroy by id and by lease (id unknown to the broker) both remove the runner; the history
/// shows each runner created once and destroyed once.
#[tokio::test]
async fn destroy_by_id_and_by_lease() {
    let provider = fake(json!({"cloud": "destroy"}));
    let one = provider.create(&spec("acme", "lease_1")).await.unwrap();
    provider.create(&spec("acme", "lease_2")).await.unwrap();
    provider
        .destroy(&RunnerRef {
            id: Some(one.id.clone()),
            ..by_lease("acme", "lease_1")
        })
        .await
        .unwrap();
    provider
        .destroy(&by_lease("acme", "lease_2"))
        .await
        .unwrap();
    provider
        .destroy(&by_lease("acme", "lease_2"))
        .await
        .unwrap();

    let cloud = fake::cloud_of("acme", "destroy");
    assert_eq!(cloud.live_count(), 0);
    assert_eq!((cloud.created_total(), cloud.destroyed_total()), (2, 2));
    let kinds: Vec<(EventKind, String)> = cloud
        .history()
        .into_iter()
        .map(|event| (event.kind, event.lease_id))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::Created, "lease_1".to_string()),
            (EventKind::Created, "lease_2".to_string()),
            (EventKind::Destroyed, "lease_1".to_string()),
            (EventKind::Destroyed, "lease_2".to_string()),
        ]
    );
}

/// A runner of another tenant is not destroyed through this tenant, even by id.
#[tokio::test]
async fn destroy_is_scoped_to_the_tenant() {
    let provider = fake(json!({"cloud": "tenants"}));
    let theirs = provider.create(&spec("other", "lease_o")).await.unwrap();
    provider
        .destroy(&RunnerRef {
            id: Some(theirs.id),
            ..by_lease("acme", "lease_o")
        })
        .await
        .unwrap();
    assert_eq!(fake::cloud_of("acme", "tenants").live_count(), 1);
    assert!(provider.list("acme").await.unwrap().is_empty());
    assert_eq!(provider.list("other").await.unwrap().len(), 1);
}

/// An orphan inserted by a test is listed for its tenant and can be destroyed by lease.
#[tokio::test]
async fn orphans_are_listed_and_destroyable() {
    let provider = fake(json!({"cloud": "orphans"}));
    let cloud = fake::cloud_of("acme", "orphans");
    let orphan = cloud.insert_orphan("acme", "lease_lost").unwrap();
    assert_eq!(provider.list("acme").await.unwrap(), vec![orphan]);
    provider
        .destroy(&by_lease("acme", "lease_lost"))
        .await
        .unwrap();
    assert_eq!(cloud.live_count(), 0);
    assert_eq!((cloud.created_total(), cloud.destroyed_total()), (1, 1));
    assert_eq!(cloud.history()[0].kind, EventKind::InsertedOrphan);
}

/// Outcomes of `create` for one seed, in call order.
async fn create_outcomes(cloud: &str, seed: u64, rate: f64, n: usize) -> Vec<bool> {
    let provider = fake(json!({"cloud": cloud, "seed": seed, "create_failure_rate": rate}));
    let mut outcomes = Vec::with_capacity(n);
    for i in 0..n {
        outcomes.push(
            provider
                .create(&spec("acme", &format!("lease_{i}")))
                .await
                .is_ok(),
        );
    }
    outcomes
}

/// The same seed gives the same failures; the share of failures is roughly the rate.
#[tokio::test]
async fn seeded_failures_are_deterministic() {
    let a = create_outcomes("seed-a", 42, 0.3, 1000).await;
    let b = create_outcomes("seed-b", 42, 0.3, 1000).await;
    let c = create_outcomes("seed-c", 43, 0.3, 1000).await;
    assert_eq!(a, b);
    assert_ne!(a, c);
    let failures = a.iter().filter(|ok| !**ok).count();
    assert!(
        (200..=400).contains(&failures),
        "{failures} failures of 1000 at rate 0.3"
    );
    let cloud = fake::cloud_of("acme", "seed-a");
    assert_eq!(cloud.counters().create_failures as usize, failures);
    assert_eq!(cloud.created_total() as usize, 1000 - failures);
}

/// Rebuilding an account with the same seed continues the sequence instead of restarting it.
#[tokio::test]
async fn same_seed_rebuild_does_not_restart_sequence() {
    let first = create_outcomes("seed-rebuild", 7, 0.5, 64).await;
    let again = create_outcomes("seed-rebuild", 7, 0.5, 64).await;
    assert_ne!(first, again, "a rebuild replayed the same failures");
}

/// Rates 0 and 1 never and always fail; the configured failure kind is what comes back.
#[tokio::test]
async fn failure_kinds() {
    let never = fake(json!({"cloud": "never", "create_failure_rate": 0.0}));
    assert!(never.create(&spec("acme", "lease_1")).await.is_ok());

    let cases = [
        ("transient", "always-transient"),
        ("permanent", "always-permanent"),
        ("capacity", "always-capacity"),
    ];
    for (kind, cloud) in cases {
        let always = fake(json!({
            "cloud": cloud, "create_failure_rate": 1.0, "destroy_failure_rate": 1.0, "failure": kind
        }));
        let error = always.create(&spec("acme", "lease_1")).await.unwrap_err();
        let destroy_error = always
            .destroy(&by_lease("acme", "lease_1"))
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string().replace("create", "destroy"),
            destroy_error.to_string()
        );
        match (kind, error) {
            ("transient", Error::Transient { .. })
            | ("permanent", Error::Permanent(_))
            | ("capacity", Error::Capacity(_)) => {}
            (kind, error) => panic!("{kind}: {error:?}"),
        }
        assert_eq!(fake::cloud_of("acme", cloud).live_count(), 0);
    }
}

/// `hang: true` makes create never return; it still counts as a call.
#[tokio::test(start_paused = true)]
async fn hang_never_returns() {
    let provider = fake(json!({"cloud": "hang", "hang": true}));
    let outcome = tokio::time::timeout(
        Duration::from_secs(3600),
        provider.create(&spec("acme", "lease_h")),
    )
    .await;
    assert!(outcome.is_err(), "create returned: {outcome:?}");
    let cloud = fake::cloud_of("acme", "hang");
    assert_eq!((cloud.create_calls(), cloud.created_total()), (1, 0));
}

/// The boot delay makes a new runner's create take that long (tokio time, paused), while an
/// idempotent repeat returns at once.
#[tokio::test(start_paused = true)]
async fn boot_delay_applies_to_new_runners() {
    let provider = fake(json!({"cloud": "boot", "boot_delay_ms": 5000, "ready": false}));
    let started = tokio::time::Instant::now();
    let runner = provider.create(&spec("acme", "lease_b")).await.unwrap();
    assert!(!runner.ready);
    assert!(started.elapsed() >= Duration::from_secs(5));
    let again = tokio::time::Instant::now();
    provider.create(&spec("acme", "lease_b")).await.unwrap();
    assert_eq!(again.elapsed(), Duration::ZERO);
}

/// With a state dir, a fresh cloud on the same directory (as after a restart) sees the
/// runners, never reuses an id, and destroys remove the files.
#[tokio::test]
async fn state_dir_survives_a_new_instance() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("cloud");
    let before = fake(json!({"cloud": "state-1", "state_dir": state_dir}));
    let kept = before.create(&spec("acme", "lease_1")).await.unwrap();
    let gone = before.create(&spec("acme", "lease_2")).await.unwrap();
    before.destroy(&by_lease("acme", "lease_2")).await.unwrap();
    assert_eq!(
        fake::read_state_dir(&state_dir).unwrap(),
        vec![kept.clone()]
    );

    let after = fake(json!({"cloud": "state-2", "state_dir": state_dir}));
    assert_eq!(after.list("acme").await.unwrap(), vec![kept.clone()]);
    assert_eq!(after.create(&spec("acme", "lease_1")).await.unwrap(), kept);
    let new = after.create(&spec("acme", "lease_3")).await.unwrap();
    assert_ne!(new.id, kept.id);
    assert_ne!(new.id, gone.id);
    after.destroy(&by_lease("acme", "lease_1")).await.unwrap();
    after.destroy(&by_lease("acme", "lease_3")).await.unwrap();
    assert!(fake::read_state_dir(&state_dir).unwrap().is_empty());
}

/// Prices come from the config; unknown machine types have none.
#[tokio::test]
async fn prices_from_config() {
    let provider = fake(json!({"cloud": "prices", "prices": {"small": 12_000, "large": 90_500}}));
    assert_eq!(provider.price("small", None).await.unwrap(), Some(12_000));
    assert_eq!(
        provider.price("large", Some("fsn1")).await.unwrap(),
        Some(90_500)
    );
    assert_eq!(provider.price("huge", None).await.unwrap(), None);
    assert_eq!(provider.kind(), "fake");
}

/// Bad configs and any credentials are refused with a clear message.
#[test]
fn bad_config_is_refused() {
    let environment = env(std::path::Path::new("/nonexistent"), false);
    let refuse = |config: Value, credentials: Value| {
        providers::build(
            &fixtures::account("fake", config, credentials),
            &environment,
        )
        .expect_err("config should be refused")
        .0
    };
    assert!(refuse(json!({"clod": "x"}), json!({})).contains("unknown field `clod`"));
    assert!(refuse(json!({"create_failure_rate": 1.5}), json!({})).contains("create_failure_rate"));
    assert!(refuse(json!({"failure": "sometimes"}), json!({})).contains("unknown variant"));
    assert!(refuse(json!({"prices": {"small": -1}}), json!({})).contains("negative"));
    assert!(refuse(json!([]), json!({})).contains("JSON object"));
    let message = refuse(json!({}), json!({"token": "very-secret-value"}));
    assert!(
        message.contains("no credentials") && !message.contains("very-secret-value"),
        "{message}"
    );
    assert!(
        providers::build(
            &fixtures::account("fake", Value::Null, Value::Null),
            &environment
        )
        .is_ok()
    );
}

/// A cloud cannot be mirrored to two state dirs at once.
#[test]
fn one_state_dir_per_cloud() {
    let environment = env(std::path::Path::new("/nonexistent"), false);
    let dir = tempfile::tempdir().unwrap();
    let account = |sub: &str| {
        fixtures::account(
            "fake",
            json!({"cloud": "two-dirs", "state_dir": dir.path().join(sub)}),
            json!({}),
        )
    };
    assert!(providers::build(&account("a"), &environment).is_ok());
    assert!(providers::build(&account("a"), &environment).is_ok());
    let error = providers::build(&account("b"), &environment).err().unwrap();
    assert!(error.0.contains("another state_dir"), "{error}");
}

/// An unknown kind is refused and the known kinds are listed.
#[test]
fn unknown_kind_is_refused() {
    let environment = env(std::path::Path::new("/nonexistent"), false);
    let error = providers::build(
        &fixtures::account("aws", json!({}), json!({})),
        &environment,
    )
    .err()
    .unwrap();
    assert!(
        error.0.contains("unknown provider kind `aws`") && error.0.contains("`hetzner`"),
        "{error}"
    );
}

/// Runners carry their installation's id: another installation on the same fake cloud lists
/// and destroys none of them, while runners without an id (made as before ids existed) are
/// seen by both.
#[tokio::test]
async fn another_installation_on_the_same_cloud_sees_none_of_the_runners() {
    let as_installation = |installation: &str| {
        let environment = providers::Environment {
            installation_id: Some(installation.to_string()),
            ..env(std::path::Path::new("/nonexistent"), false)
        };
        build(
            "fake",
            json!({"cloud": "installations"}),
            json!({}),
            &environment,
        )
    };
    let first = as_installation("1111aaaa");
    let second = as_installation("2222bbbb");
    let runner = first.create(&spec("acme", "lease_inst")).await.unwrap();
    assert_eq!(runner.metadata[fake::INSTALLATION_KEY], "1111aaaa");
    let cloud = fake::cloud_of("acme", "installations");
    let orphan = cloud.insert_orphan("acme", "lease_old").unwrap();

    let seen = second.list("acme").await.unwrap();
    assert_eq!(seen, vec![orphan.clone()]);
    second
        .destroy(&by_lease("acme", "lease_inst"))
        .await
        .unwrap();
    second
        .destroy(&RunnerRef {
            id: Some(runner.id.clone()),
            ..by_lease("acme", "lease_inst")
        })
        .await
        .unwrap();
    assert!(cloud.runner_for("acme", "lease_inst").is_some());
    assert_eq!(first.list("acme").await.unwrap().len(), 2);
}
