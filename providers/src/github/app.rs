//! GitHub App authentication: a JWT signed with the app's private key (RS256, valid about
//! nine minutes) is exchanged for an installation token (valid one hour), which is cached and
//! renewed once less than five minutes of it remain.

use std::fmt;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{API_VERSION, BODY_LIMIT, Github, REQUEST_TIMEOUT, parse};
use crate::client::{self, now_ms};
use crate::{ConfigError, Error};

/// An installation token is renewed when less than this much of it remains.
const RENEW_BEFORE_MS: i64 = 5 * 60_000;

/// An app's private key, ready to sign. Never printed.
pub struct AppKey(EncodingKey);

impl AppKey {
    /// The key of a PEM text (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<AppKey, ConfigError> {
        EncodingKey::from_rsa_pem(pem.as_bytes())
            .map(AppKey)
            .map_err(|_| ConfigError("the GitHub App key is not an RSA private key in PEM".into()))
    }
}

impl fmt::Debug for AppKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AppKey(<redacted>)")
    }
}

#[derive(Serialize)]
struct Claims {
    iat: i64,
    exp: i64,
    iss: String,
}

#[derive(Deserialize)]
struct Issued {
    token: String,
    expires_at: chrono::DateTime<chrono::Utc>,
}

struct Cached {
    token: String,
    expires_at_ms: i64,
}

/// One installation of one app, with its cached token.
pub(super) struct App {
    app_id: u64,
    installation_id: u64,
    key: AppKey,
    /// Held across an exchange, so concurrent calls wait for one new token instead of each
    /// making their own.
    cached: Mutex<Option<Cached>>,
}

impl App {
    pub(super) fn new(app_id: u64, installation_id: u64, key: AppKey) -> App {
        App {
            app_id,
            installation_id,
            key,
            cached: Mutex::new(None),
        }
    }

    /// A valid installation token: the cached one while more than five minutes of it remain,
    /// else a new one.
    pub(super) async fn token(&self, github: &Github) -> Result<String, Error> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref()
            && token.expires_at_ms - now_ms() > RENEW_BEFORE_MS
        {
            return Ok(token.token.clone());
        }
        let issued = self.exchange(github).await?;
        let token = issued.token.clone();
        *cached = Some(Cached {
            token: issued.token,
            expires_at_ms: issued.expires_at.timestamp_millis(),
        });
        Ok(token)
    }

    /// Drops the cached token (GitHub refused it).
    pub(super) async fn forget(&self) {
        *self.cached.lock().await = None;
    }

    /// The app's JWT: issued a minute in the past (clock drift), expiring in nine minutes
    /// (GitHub allows at most ten).
    fn jwt(&self) -> Result<String, Error> {
        let now = now_ms() / 1000;
        let claims = Claims {
            iat: now - 60,
            exp: now + 9 * 60,
            iss: self.app_id.to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key.0)
            .map_err(|e| Error::Permanent(format!("github: cannot sign the app's JWT: {e}")))
    }

    async fn exchange(&self, github: &Github) -> Result<Issued, Error> {
        let what = "github app token";
        let path = format!("/app/installations/{}/access_tokens", self.installation_id);
        let url = github.url(&path, &[])?;
        client::guard(what, &url, github.allow_private).await?;
        let response = github
            .http
            .post(url)
            .timeout(REQUEST_TIMEOUT)
            .header(ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", API_VERSION)
            .header(AUTHORIZATION, format!("Bearer {}", self.jwt()?))
            .send()
            .await
            .map_err(|e| client::transport_error(what, &e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = client::read_body(what, response, BODY_LIMIT).await?;
        let answer = super::Answer {
            status,
            headers,
            body,
        };
        if let Some(wait) = answer.rate_limited() {
            return Err(Error::Transient {
                message: format!("{what}: rate limited: {}", answer.message()),
                retry_after: Some(wait),
            });
        }
        if status != StatusCode::CREATED && status != StatusCode::OK {
            return Err(answer.error("app token"));
        }
        parse(what, &answer.body)
    }
}
