//! GitHub's REST API for self-hosted runners: one just-in-time registration per lease, the
//! registrations named after leases, and their removal (`../shared/reference/github-jit-runners.md`).
//!
//! A JIT config registers exactly one runner for exactly one job; whoever holds it may take a
//! job of the repository. It is a secret: [`Jit`] never prints it, and no error of this
//! module carries it or a credential. GitHub's own message is kept (bounded) in errors, since
//! it is what tells an operator why a registration was refused.
//!
//! Errors use the providers' classification: a rate limit or a 5xx is transient (with the wait
//! GitHub asked for), a refusal that only a person can fix (bad credentials, unknown
//! organisation or runner group, invalid labels) is permanent.
//!
//! The API base URL is the tenant's setting, so every request passes the same private-address
//! guard as the other providers: a tenant cannot aim berth's requests at the operator's
//! network unless the operator allowed private targets.

mod app;

use std::fmt;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use url::Url;

use crate::client::{self, now_ms};
use crate::{ConfigError, Environment, Error};

pub use app::AppKey;

/// The API version berth speaks (`X-GitHub-Api-Version`).
pub const API_VERSION: &str = "2022-11-28";
/// GitHub.com's API; GitHub Enterprise Server is `https://<host>/api/v3`.
pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// Each request's deadline.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read (a page of 100 runners with their labels is far smaller).
const BODY_LIMIT: usize = 4 << 20;
/// Runners listed per page, and the most pages read in one listing (10,000 runners).
const PAGE_SIZE: usize = 100;
const MAX_PAGES: usize = 100;
/// GitHub's message is kept in errors up to this many characters.
const MESSAGE_LIMIT: usize = 300;

/// Where runners are registered: an organisation or one repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Org(String),
    Repo { owner: String, repo: String },
}

impl Scope {
    /// `OWNER` is an organisation, `OWNER/REPO` a repository. Each part is what GitHub allows
    /// in such names (letters, digits, `-`, `_`, `.`; 1–100 characters), so no part can change
    /// the path it is placed in.
    pub fn parse(text: &str) -> Result<Scope, String> {
        let part = |p: &str| {
            !p.is_empty()
                && p.len() <= 100
                && p != "."
                && p != ".."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        match text.split_once('/') {
            None if part(text) => Ok(Scope::Org(text.to_string())),
            Some((owner, repo)) if part(owner) && part(repo) => Ok(Scope::Repo {
                owner: owner.to_string(),
                repo: repo.to_string(),
            }),
            _ => Err(format!(
                "`{}` is neither an organisation (`acme`) nor a repository (`acme/app`)",
                text.escape_debug()
            )),
        }
    }

    /// The path of this scope's runners.
    fn runners_path(&self) -> String {
        match self {
            Scope::Org(org) => format!("/orgs/{org}/actions/runners"),
            Scope::Repo { owner, repo } => format!("/repos/{owner}/{repo}/actions/runners"),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Org(org) => f.write_str(org),
            Scope::Repo { owner, repo } => write!(f, "{owner}/{repo}"),
        }
    }
}

/// How berth authenticates: a fine-grained token, or a GitHub App installation.
pub enum Credentials {
    Token(String),
    App {
        app_id: u64,
        installation_id: u64,
        /// The app's private key, PEM (PKCS#1 or PKCS#8).
        private_key_pem: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
            Credentials::App {
                app_id,
                installation_id,
                ..
            } => write!(
                f,
                "App {{ app_id: {app_id}, installation_id: {installation_id}, private_key_pem: <redacted> }}"
            ),
        }
    }
}

/// A tenant's GitHub connection.
#[derive(Debug)]
pub struct Connection {
    pub api_url: Url,
    pub scope: Scope,
    /// The runner group new runners join (organisations; `1` is the default group).
    pub runner_group_id: i64,
    pub credentials: Credentials,
}

/// A just-in-time registration: the runner GitHub registered, and the config that starts it.
pub struct Jit {
    pub runner_id: i64,
    pub name: String,
    encoded_config: String,
}

impl Jit {
    /// The encoded config for `run.sh --jitconfig`: hand it to the lease's runner only.
    pub fn encoded_config(&self) -> &str {
        &self.encoded_config
    }
}

impl fmt::Debug for Jit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jit")
            .field("runner_id", &self.runner_id)
            .field("name", &self.name)
            .field("encoded_config", &"<redacted>")
            .finish()
    }
}

/// A registered runner as GitHub lists it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Registration {
    pub id: i64,
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub busy: bool,
}

/// What removing a registration did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// It was not there (already removed, or it removed itself after its job): success.
    Gone,
    /// It is running a job; try again later.
    Busy,
}

/// A client of one tenant's GitHub connection. Cheap to share; an App's installation token is
/// cached inside and renewed before it expires.
pub struct Github {
    api_url: Url,
    scope: Scope,
    runner_group_id: i64,
    auth: Auth,
    http: reqwest::Client,
    allow_private: bool,
}

enum Auth {
    Token(String),
    App(app::App),
}

impl Github {
    /// A client for `connection` under the network policy of `env`. Refuses a URL that is not
    /// http(s) and an App key that is not an RSA private key.
    pub fn new(connection: Connection, env: &Environment) -> Result<Github, ConfigError> {
        let Connection {
            api_url,
            scope,
            runner_group_id,
            credentials,
        } = connection;
        if !matches!(api_url.scheme(), "https" | "http") || api_url.host().is_none() {
            return Err(ConfigError(
                "the GitHub API URL must be http(s)://host[/path]".into(),
            ));
        }
        if api_url.query().is_some() || !api_url.username().is_empty() {
            return Err(ConfigError(
                "the GitHub API URL takes no query and no user name".into(),
            ));
        }
        let auth = match credentials {
            Credentials::Token(token) if token.trim().is_empty() => {
                return Err(ConfigError("the GitHub token is empty".into()));
            }
            Credentials::Token(token) => Auth::Token(token),
            Credentials::App {
                app_id,
                installation_id,
                private_key_pem,
            } => Auth::App(app::App::new(
                app_id,
                installation_id,
                AppKey::from_pem(&private_key_pem)?,
            )),
        };
        Ok(Github {
            api_url,
            scope,
            runner_group_id,
            auth,
            http: client::shared(env),
            allow_private: env.allow_private_network,
        })
    }

    /// Registers a runner named `name` with `labels` for one job. A name already registered
    /// (a retry after a lost answer, or a crash before berth recorded it) is removed and
    /// registered again when it has not taken a job; a busy one is a permanent error.
    pub async fn register(&self, name: &str, labels: &[String]) -> Result<Jit, Error> {
        let path = format!("{}/generate-jitconfig", self.scope.runners_path());
        let body = json!({
            "name": name,
            "runner_group_id": self.runner_group_id,
            "labels": labels,
            "work_folder": "_work",
        });
        for attempt in 0..2 {
            let answer = self.call(Method::POST, &path, &[], Some(&body)).await?;
            match answer.status {
                StatusCode::CREATED | StatusCode::OK => {
                    let created: Created = parse("generate-jitconfig", &answer.body)?;
                    return Ok(Jit {
                        runner_id: created.runner.id,
                        name: created.runner.name,
                        encoded_config: created.encoded_jit_config,
                    });
                }
                StatusCode::CONFLICT if attempt == 0 => match self.find(name).await? {
                    Some(old) if old.busy => {
                        return Err(Error::Permanent(format!(
                            "github: a runner named {name} is already running a job"
                        )));
                    }
                    Some(old) if self.remove(old.id).await? == Removal::Busy => {
                        return Err(Error::transient(format!(
                            "github: the runner named {name} is busy"
                        )));
                    }
                    // Removed (or gone between the two calls): register again.
                    Some(_) => {}
                    None => {}
                },
                _ => return Err(answer.error("generate-jitconfig")),
            }
        }
        Err(Error::transient(format!(
            "github: the name {name} stayed taken"
        )))
    }

    /// The registration named exactly `name`, if any.
    pub async fn find(&self, name: &str) -> Result<Option<Registration>, Error> {
        let path = self.scope.runners_path();
        let answer = self
            .call(
                Method::GET,
                &path,
                &[("name", name), ("per_page", "100")],
                None,
            )
            .await?;
        if answer.status != StatusCode::OK {
            return Err(answer.error("list runners"));
        }
        let page: Page = parse("list runners", &answer.body)?;
        Ok(page.runners.into_iter().find(|r| r.name == name))
    }

    /// Every registration of the scope (at most 10,000; more is an error rather than a
    /// partial listing, since reconciliation acts on what is missing from it).
    pub async fn list(&self) -> Result<Vec<Registration>, Error> {
        let path = self.scope.runners_path();
        let per_page = PAGE_SIZE.to_string();
        let mut runners = Vec::new();
        for page in 1..=MAX_PAGES {
            let number = page.to_string();
            let answer = self
                .call(
                    Method::GET,
                    &path,
                    &[("per_page", &per_page), ("page", &number)],
                    None,
                )
                .await?;
            if answer.status != StatusCode::OK {
                return Err(answer.error("list runners"));
            }
            let listed: Page = parse("list runners", &answer.body)?;
            let count = listed.runners.len();
            runners.extend(listed.runners);
            if count < PAGE_SIZE || runners.len() as u64 >= listed.total_count {
                return Ok(runners);
            }
        }
        Err(Error::Permanent(format!(
            "github: more than {} runners registered in {}",
            PAGE_SIZE * MAX_PAGES,
            self.scope
        )))
    }

    /// Removes registration `id`: gone already is success, busy is [`Removal::Busy`].
    pub async fn remove(&self, id: i64) -> Result<Removal, Error> {
        let path = format!("{}/{id}", self.scope.runners_path());
        let answer = self.call(Method::DELETE, &path, &[], None).await?;
        match answer.status {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(Removal::Removed),
            StatusCode::NOT_FOUND => Ok(Removal::Gone),
            StatusCode::UNPROCESSABLE_ENTITY => Ok(Removal::Busy),
            _ => Err(answer.error("remove runner")),
        }
    }

    /// One request with GitHub's headers and berth's credentials; a transport failure or a rate
    /// limit is an error here, any other status is the caller's to read.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, Error> {
        let url = self.url(path, query)?;
        client::guard("github", &url, self.allow_private).await?;
        let bearer = match &self.auth {
            Auth::Token(token) => token.clone(),
            Auth::App(app) => app.token(self).await?,
        };
        let mut request = self
            .http
            .request(method, url)
            .timeout(REQUEST_TIMEOUT)
            .header(ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", API_VERSION)
            .header(AUTHORIZATION, format!("Bearer {bearer}"));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| client::transport_error("github", &e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = client::read_body("github", response, BODY_LIMIT).await?;
        let answer = Answer {
            status,
            headers,
            body,
        };
        if let Some(wait) = answer.rate_limited() {
            return Err(Error::Transient {
                message: format!("github: rate limited: {}", answer.message()),
                retry_after: Some(wait),
            });
        }
        if status == StatusCode::UNAUTHORIZED
            && let Auth::App(app) = &self.auth
        {
            // The installation token may have been revoked early: the next call makes a new one.
            app.forget().await;
        }
        Ok(answer)
    }

    /// `path` (with its query) under the API URL, which may itself have a path (`/api/v3`).
    fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url, Error> {
        let base = self.api_url.as_str().trim_end_matches('/');
        let mut url = Url::parse(&format!("{base}{path}"))
            .map_err(|e| Error::Permanent(format!("github: bad API URL: {e}")))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }
}

/// An answer read whole.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    /// How long to wait when this answer is a rate limit: `Retry-After` (secondary limits), or
    /// `x-ratelimit-reset` when `x-ratelimit-remaining` is 0 (the primary limit, in epoch seconds).
    fn rate_limited(&self) -> Option<Duration> {
        if !matches!(
            self.status,
            StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
        ) {
            return None;
        }
        if let Some(wait) = client::retry_after(&self.headers) {
            return Some(wait.max(Duration::from_secs(1)));
        }
        let header = |name: &str| {
            self.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
        };
        if header("x-ratelimit-remaining") == Some(0) {
            let reset_ms = header("x-ratelimit-reset")?.saturating_mul(1000);
            let wait_ms = reset_ms.saturating_sub(now_ms()).max(1000);
            return Some(Duration::from_millis(wait_ms.unsigned_abs()));
        }
        (self.status == StatusCode::TOO_MANY_REQUESTS).then_some(Duration::from_secs(60))
    }

    /// GitHub's `message`, bounded and printable, or the status.
    fn message(&self) -> String {
        #[derive(Deserialize)]
        struct Problem {
            message: String,
        }
        match serde_json::from_slice::<Problem>(&self.body) {
            Ok(problem) => problem
                .message
                .chars()
                .filter(|c| !c.is_control())
                .take(MESSAGE_LIMIT)
                .collect(),
            Err(_) => self.status.to_string(),
        }
    }

    /// This answer as an error of `what`: 5xx and 408 transient, any other refusal permanent.
    fn error(&self, what: &str) -> Error {
        let message = format!("github: {what}: {} ({})", self.message(), self.status);
        if self.status.is_server_error() || self.status == StatusCode::REQUEST_TIMEOUT {
            Error::transient(message)
        } else {
            Error::Permanent(message)
        }
    }
}

#[derive(Deserialize)]
struct Created {
    runner: Registration,
    encoded_jit_config: String,
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    total_count: u64,
    #[serde(default)]
    runners: Vec<Registration>,
}

/// Parses an answer of `what`; a malformed one is transient (a proxy's error page, a partial
/// answer) and names no part of the body, which may hold a config.
fn parse<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| {
        Error::transient(format!(
            "github: {what}: unexpected answer (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_refuse_path_tricks() {
        assert_eq!(Scope::parse("acme"), Ok(Scope::Org("acme".into())));
        assert_eq!(
            Scope::parse("acme/app.rs"),
            Ok(Scope::Repo {
                owner: "acme".into(),
                repo: "app.rs".into()
            })
        );
        for bad in [
            "", "/", "acme/", "/app", "a/b/c", "..", "acme/..", "a b", "a?b", "a%2f",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            Scope::parse("acme/app").unwrap().runners_path(),
            "/repos/acme/app/actions/runners"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let jit = Jit {
            runner_id: 1,
            name: "l".into(),
            encoded_config: "SECRETCONFIG".into(),
        };
        assert!(!format!("{jit:?}").contains("SECRETCONFIG"));
        let token = Credentials::Token("ghp_SECRET".into());
        assert!(!format!("{token:?}").contains("ghp_SECRET"));
    }
}
