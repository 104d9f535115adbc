//! Fresh PostgreSQL databases for tests of cluster mode.
//!
//! Tests read the server's URL from `BERTH_TEST_POSTGRES` (any database on it: it is only used
//! to create and drop others), defaulting to the local server CI starts. Each test gets a
//! database of its own, so tests run in parallel and leave nothing behind.

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// Where tests find PostgreSQL when `BERTH_TEST_POSTGRES` is unset.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn base_url() -> String {
    std::env::var("BERTH_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

async fn admin() -> PgConnection {
    let url = base_url();
    let options: PgConnectOptions = url
        .parse()
        .unwrap_or_else(|e| panic!("BERTH_TEST_POSTGRES={url} is not a PostgreSQL URL: {e}"));
    PgConnection::connect_with(&options).await.unwrap_or_else(|e| {
        panic!(
            "cluster tests need PostgreSQL at {url} (set BERTH_TEST_POSTGRES; README, \"Running the tests\", says how to get one): {e}"
        )
    })
}

/// Creates an empty database and returns its URL.
///
/// # Panics
///
/// When PostgreSQL cannot be reached: the message says how to get it.
pub async fn fresh_database() -> String {
    let mut conn = admin().await;
    let name = format!("berth_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    let _ = conn.close().await;
    let mut url = url::Url::parse(&base_url()).expect("BERTH_TEST_POSTGRES is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// Drops a database made by [`fresh_database`], disconnecting whoever still uses it.
pub async fn drop_database(url: &str) {
    let path = url::Url::parse(url).map(|u| u.path().trim_start_matches('/').to_owned());
    let Some(name) = path.ok().filter(|n| n.starts_with("berth_test_")) else {
        return;
    };
    let mut conn = admin().await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
}
