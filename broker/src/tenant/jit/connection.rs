//! A tenant's GitHub connection: where just-in-time runners are registered (an organisation or
//! a repository at an API URL, a runner group) and with which credentials (a token, or a GitHub
//! App's id, installation and private key).
//!
//! It is part of the stored GitHub integration (kv `github`, `commands::github::Config`), as a
//! field with a serde default, so configurations stored before it existed read as webhook-only.
//! The credentials are sealed with the tenant's keys under the name [`SEALED_AS`] (a name no
//! provider account can have) and are write-only: [`Connection::view`] shows their kind and the
//! App's ids, never the token or the key.

use serde::{Deserialize, Serialize};
use url::Url;

use crate::secrets::Keys;
use crate::wire;

/// What the credentials are sealed under (bound to the tenant too). `:` is not allowed in an
/// account name, so no provider account's sealed blob can stand in for it.
pub const SEALED_AS: &str = "github:credentials";
/// The runner group used when none is set (an organisation's default group).
pub const DEFAULT_RUNNER_GROUP: i64 = 1;

/// The stored connection (credentials sealed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// `org` or `owner/repo`, as [`providers::github::Scope::parse`] reads it.
    pub scope: String,
    /// The API base URL.
    pub api_url: String,
    pub runner_group_id: i64,
    pub credentials: Sealed,
}

/// The credentials, sealed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Sealed {
    /// A token.
    Token { sealed: Vec<u8> },
    /// A GitHub App: the ids in the clear, the private key (PEM) sealed.
    App {
        app_id: u64,
        installation_id: u64,
        sealed_key: Vec<u8>,
    },
}

impl Connection {
    /// The connection a `PUT` asks for: `None` when it sets none of the connection's fields
    /// (a webhook-only integration). Every refusal names the field.
    pub fn from_put(
        put: &wire::GithubPut,
        keys: &Keys,
        tenant: &str,
        allow_private: bool,
    ) -> Result<Option<Connection>, String> {
        let app =
            put.app_id.is_some() || put.installation_id.is_some() || put.private_key.is_some();
        let any = put.scope.is_some()
            || put.api_url.is_some()
            || put.runner_group_id.is_some()
            || put.token.is_some()
            || app;
        if !any {
            return Ok(None);
        }
        let Some(scope) = &put.scope else {
            return Err(
                "`scope` is required with GitHub credentials, `api_url` or `runner_group_id` (`org` or `owner/repo`)"
                    .into(),
            );
        };
        let scope = providers::github::Scope::parse(scope).map_err(|e| format!("`scope`: {e}"))?;
        let api_url = put
            .api_url
            .as_deref()
            .unwrap_or(providers::github::DEFAULT_API_URL);
        let url = Url::parse(api_url).map_err(|e| format!("`api_url`: not a URL: {e}"))?;
        if url.host().is_none() || url.query().is_some() || !url.username().is_empty() {
            return Err("`api_url` must be http(s)://host[/path], without query or user".into());
        }
        providers::net::check_static(&url, allow_private).map_err(|e| format!("`api_url`: {e}"))?;
        let runner_group_id = put.runner_group_id.unwrap_or(DEFAULT_RUNNER_GROUP);
        if runner_group_id < 1 {
            return Err("`runner_group_id` must be at least 1".into());
        }
        let credentials = match (&put.token, app) {
            (Some(_), true) => {
                return Err(
                    "`token` and `app_id`/`installation_id`/`private_key` exclude each other: give one kind of credentials"
                        .into(),
                );
            }
            (Some(token), false) => {
                if token.trim().is_empty() || token.chars().any(char::is_whitespace) {
                    return Err("`token` must not be empty nor contain spaces".into());
                }
                Sealed::Token {
                    sealed: keys.seal(tenant, SEALED_AS, token.as_bytes()),
                }
            }
            (None, true) => {
                let id = |value: Option<i64>, field: &str| match value {
                    Some(v) if v >= 1 => {
                        u64::try_from(v).map_err(|_| format!("`{field}` must be positive"))
                    }
                    Some(_) => Err(format!("`{field}` must be positive")),
                    None => Err(format!(
                        "`{field}` is required with a GitHub App (`app_id`, `installation_id` and `private_key` go together)"
                    )),
                };
                let app_id = id(put.app_id, "app_id")?;
                let installation_id = id(put.installation_id, "installation_id")?;
                let Some(key) = &put.private_key else {
                    return Err(
                        "`private_key` is required with a GitHub App (`app_id`, `installation_id` and `private_key` go together)"
                            .into(),
                    );
                };
                providers::github::AppKey::from_pem(key).map_err(|_| {
                    "`private_key`: not an RSA private key in PEM (PKCS#1 or PKCS#8)".to_owned()
                })?;
                Sealed::App {
                    app_id,
                    installation_id,
                    sealed_key: keys.seal(tenant, SEALED_AS, key.as_bytes()),
                }
            }
            (None, false) => {
                return Err(
                    "GitHub credentials are required with `scope`: `token`, or `app_id` + `installation_id` + `private_key`"
                        .into(),
                );
            }
        };
        Ok(Some(Connection {
            scope: scope.to_string(),
            api_url: url.as_str().trim_end_matches('/').to_owned(),
            runner_group_id,
            credentials,
        }))
    }

    /// A client of this connection (credentials opened), or why there is none.
    pub fn client(
        &self,
        keys: &Keys,
        tenant: &str,
        env: &providers::Environment,
    ) -> Result<providers::github::Github, String> {
        let scope = providers::github::Scope::parse(&self.scope)?;
        let api_url = Url::parse(&self.api_url).map_err(|e| format!("github api_url: {e}"))?;
        let open = |sealed: &[u8]| {
            keys.open(tenant, SEALED_AS, sealed)
                .map_err(|_| {
                    "the GitHub credentials do not open with this server's master key".to_owned()
                })
                .and_then(|bytes| {
                    String::from_utf8(bytes)
                        .map_err(|_| "the GitHub credentials are not text".to_owned())
                })
        };
        let credentials = match &self.credentials {
            Sealed::Token { sealed } => providers::github::Credentials::Token(open(sealed)?),
            Sealed::App {
                app_id,
                installation_id,
                sealed_key,
            } => providers::github::Credentials::App {
                app_id: *app_id,
                installation_id: *installation_id,
                private_key_pem: open(sealed_key)?,
            },
        };
        providers::github::Github::new(
            providers::github::Connection {
                api_url,
                scope,
                runner_group_id: self.runner_group_id,
                credentials,
            },
            env,
        )
        .map_err(|e| e.to_string())
    }

    /// Moves the sealed credentials to the current master key if they open only under the
    /// previous one; whether they changed.
    pub fn reseal(&mut self, keys: &Keys, tenant: &str) -> bool {
        let sealed = match &mut self.credentials {
            Sealed::Token { sealed } => sealed,
            Sealed::App { sealed_key, .. } => sealed_key,
        };
        match keys.reseal(tenant, SEALED_AS, sealed) {
            Some(fresh) => {
                *sealed = fresh;
                true
            }
            None => false,
        }
    }

    /// The connection as the API shows it: never a secret.
    pub fn view(&self) -> wire::GithubConnection {
        let (credentials, app_id, installation_id) = match &self.credentials {
            Sealed::Token { .. } => ("token", None, None),
            Sealed::App {
                app_id,
                installation_id,
                ..
            } => (
                "app",
                i64::try_from(*app_id).ok(),
                i64::try_from(*installation_id).ok(),
            ),
        };
        wire::GithubConnection {
            scope: self.scope.clone(),
            api_url: self.api_url.clone(),
            runner_group_id: self.runner_group_id,
            credentials: credentials.to_owned(),
            app_id,
            installation_id,
        }
    }
}
