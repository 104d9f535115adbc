//! The GitHub runners client against the local fake of GitHub's API the end-to-end suites
//! use too (`tests/support/fake_github.rs`, included by path), which answers as
//! `../shared/reference/github-jit-runners.md` says: JIT registration with 409 on a taken
//! name, listing by name and by page, removal with 404 and 422 busy, rate limits, and the App
//! token exchange with the JWT verified against the app's public key.

#[path = "../../tests/support/fake_github.rs"]
mod fake_github;

use std::time::Duration;

use fake_github::{APP_ID, APP_KEY, FakeGithub, INSTALLATION, TOKEN};
use providers::Environment;
use providers::github::{Connection, Credentials, Github, Removal, Scope};

fn env() -> Environment {
    let dir = std::env::temp_dir();
    let mut env = Environment::new(&dir, &dir);
    env.allow_private_network = true;
    env
}

fn client(fake: &FakeGithub, credentials: Credentials) -> Github {
    Github::new(
        Connection {
            api_url: fake.api_url().parse().expect("a valid value"),
            scope: Scope::Org("acme".into()),
            runner_group_id: 1,
            credentials,
        },
        &env(),
    )
    .expect("a valid connection")
}

fn labels() -> Vec<String> {
    vec!["self-hosted".into(), "linux-8c".into()]
}

/// Register, find, list, remove: the lifecycle a lease drives.
#[tokio::test]
async fn a_registration_lives_and_is_removed() {
    let fake = FakeGithub::start();
    let github = client(&fake, Credentials::Token(TOKEN.into()));
    let jit = github
        .register("berth-lease-1", &labels())
        .await
        .expect("the call succeeds");
    assert_eq!(jit.name, "berth-lease-1");
    assert_eq!(fake.configs(), vec![jit.encoded_config().to_string()]);
    assert_eq!(fake.runners()[0].labels, labels());

    let found = github
        .find("berth-lease-1")
        .await
        .expect("the call succeeds")
        .expect("registered");
    assert_eq!(found.id, jit.runner_id);
    assert_eq!(
        github
            .find("berth-lease-2")
            .await
            .expect("the call succeeds"),
        None
    );

    assert_eq!(
        github
            .remove(jit.runner_id)
            .await
            .expect("the call succeeds"),
        Removal::Removed
    );
    assert_eq!(
        github
            .remove(jit.runner_id)
            .await
            .expect("the call succeeds"),
        Removal::Gone
    );
    assert!(fake.runners().is_empty());
}

/// A name already registered (a retry after a lost answer) is removed and registered afresh
/// when idle; a busy one is refused, permanently, and left alone.
#[tokio::test]
async fn a_taken_name_is_reclaimed_only_when_idle() {
    let fake = FakeGithub::start();
    let github = client(&fake, Credentials::Token(TOKEN.into()));
    let first = github
        .register("berth-lease-1", &labels())
        .await
        .expect("the call succeeds");
    let second = github
        .register("berth-lease-1", &labels())
        .await
        .expect("the call succeeds");
    assert_ne!(first.runner_id, second.runner_id);
    assert_eq!(fake.runners().len(), 1);

    fake.set_busy("berth-lease-1", true);
    let refused = github
        .register("berth-lease-1", &labels())
        .await
        .expect_err("the call fails");
    assert!(!refused.is_retryable(), "{refused:?}");
    assert!(
        refused.to_string().contains("already running a job"),
        "{refused}"
    );
    let id = fake.runners()[0].id;
    assert_eq!(
        github.remove(id).await.expect("the call succeeds"),
        Removal::Busy
    );
    assert_eq!(fake.runners().len(), 1);
}

/// Listings page through every registration.
#[tokio::test]
async fn listings_read_every_page() {
    let fake = FakeGithub::start();
    let github = client(&fake, Credentials::Token(TOKEN.into()));
    for i in 0..205 {
        github
            .register(&format!("r-{i}"), &labels())
            .await
            .expect("the call succeeds");
    }
    let listed = github.list().await.expect("the call succeeds");
    assert_eq!(listed.len(), 205);
    let mut names: Vec<String> = listed.into_iter().map(|r| r.name).collect();
    names.dedup();
    assert_eq!(names.len(), 205);
}

/// A primary rate limit is transient with the wait until its reset; GitHub's refusals that
/// a person must fix are permanent and say GitHub's message; no error carries a secret.
#[tokio::test]
async fn rate_limits_wait_and_refusals_are_permanent() {
    let fake = FakeGithub::start();
    let github = client(&fake, Credentials::Token(TOKEN.into()));
    fake.rate_limit_next(120);
    let limited = github
        .register("r", &labels())
        .await
        .expect_err("the call fails");
    match &limited {
        providers::Error::Transient {
            retry_after: Some(wait),
            ..
        } => assert!(
            *wait > Duration::from_secs(100) && *wait <= Duration::from_secs(120),
            "{wait:?}"
        ),
        other => panic!("not a rate limit: {other:?}"),
    }

    let other_org = Github::new(
        Connection {
            api_url: fake.api_url().parse().expect("a valid value"),
            scope: Scope::Org("someone-else".into()),
            runner_group_id: 1,
            credentials: Credentials::Token(TOKEN.into()),
        },
        &env(),
    )
    .expect("the call succeeds");
    let missing = other_org
        .register("r", &labels())
        .await
        .expect_err("the call fails");
    assert!(!missing.is_retryable());
    assert!(missing.to_string().contains("Not Found"), "{missing}");

    let bad_token = client(&fake, Credentials::Token("ghp_wrong".into()));
    let refused = bad_token
        .register("r", &labels())
        .await
        .expect_err("the call fails");
    assert!(!refused.is_retryable());
    assert!(refused.to_string().contains("Bad credentials"), "{refused}");
    for error in [&limited, &missing, &refused] {
        let text = format!("{error} {error:?}");
        assert!(
            !text.contains(TOKEN)
                && !text.contains("ghp_wrong")
                && fake
                    .configs()
                    .iter()
                    .all(|config| !text.contains(config.as_str()))
        );
    }
}

/// An App's JWT verifies at GitHub; its installation token is cached while it has more than
/// five minutes left and renewed after.
#[tokio::test]
async fn app_tokens_are_exchanged_cached_and_renewed() {
    let fake = FakeGithub::start();
    let app = || Credentials::App {
        app_id: APP_ID,
        installation_id: INSTALLATION,
        private_key_pem: APP_KEY.into(),
    };
    let github = client(&fake, app());
    github
        .register("a", &labels())
        .await
        .expect("the call succeeds");
    github.find("a").await.expect("the call succeeds");
    github.list().await.expect("the call succeeds");
    let issued = fake.issued();
    assert_eq!(issued.len(), 1);
    assert!(fake.bearers().iter().all(|b| *b == issued[0]));

    // Tokens that expire within five minutes are renewed at every use.
    fake.token_valid_for(120);
    let short = client(&fake, app());
    short.find("a").await.expect("the call succeeds");
    short.find("a").await.expect("the call succeeds");
    assert_eq!(fake.issued_tokens(), 3);

    // Another installation: GitHub's refusal, permanent.
    let other = client(
        &fake,
        Credentials::App {
            app_id: APP_ID,
            installation_id: 78,
            private_key_pem: APP_KEY.into(),
        },
    );
    let refused = other.find("a").await.expect_err("the call fails");
    assert!(!refused.is_retryable(), "{refused:?}");
}

/// Bad settings are refused before any request: a key that is not RSA, an empty token, a URL
/// that is not http(s).
#[test]
fn bad_connections_are_refused() {
    let connection = |api_url: &str, credentials| Connection {
        api_url: api_url.parse().expect("a valid value"),
        scope: Scope::Org("acme".into()),
        runner_group_id: 1,
        credentials,
    };
    let key = Credentials::App {
        app_id: 1,
        installation_id: 1,
        private_key_pem: "-----BEGIN RSA PRIVATE KEY-----\nnope\n-----END RSA PRIVATE KEY-----"
            .into(),
    };
    assert!(Github::new(connection("https://api.github.com", key), &env()).is_err());
    assert!(
        Github::new(
            connection("https://api.github.com", Credentials::Token(" ".into())),
            &env()
        )
        .is_err()
    );
    assert!(
        Github::new(
            connection("ftp://api.github.com", Credentials::Token("t".into())),
            &env()
        )
        .is_err()
    );
    assert!(
        Github::new(
            connection("https://api.github.com", Credentials::Token("t".into())),
            &env()
        )
        .is_ok()
    );
}

/// Without the operator's leave, an API URL on a private address is refused before anything
/// is sent (a tenant cannot aim berth at the operator's network).
#[tokio::test]
async fn a_private_api_url_is_refused_by_default() {
    let fake = FakeGithub::start();
    let dir = std::env::temp_dir();
    let github = Github::new(
        Connection {
            api_url: fake.api_url().parse().expect("a valid value"),
            scope: Scope::Org("acme".into()),
            runner_group_id: 1,
            credentials: Credentials::Token(TOKEN.into()),
        },
        &Environment::new(&dir, &dir),
    )
    .expect("the call succeeds");
    let refused = github
        .register("r", &labels())
        .await
        .expect_err("the call fails");
    assert!(!refused.is_retryable(), "{refused:?}");
    assert!(fake.bearers().is_empty());
}
