//! Who is calling: the operator's admin token, or a tenant token with scopes.
//!
//! Tokens are stored only as SHA-256 hashes: the admin token's hash in memory, tenant
//! tokens' hashes in the directory (`keys` kind `token`), so authenticating a request opens
//! no object. A token of tenant A gets 404 for anything of tenant B — the same answer as for
//! a tenant that does not exist — so it learns nothing about B.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};

use super::State;
use super::error::ApiError;
use crate::secrets;
use crate::wire::Scope;

/// Directory kind of token records (key: the token's hash).
pub const TOKEN_KIND: &str = "token";
/// Directory kind of the token-id index (key: `<tenant>/<id>`, value: the hash).
pub const TOKEN_ID_KIND: &str = "token-id";

/// What the directory stores for a tenant token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub tenant: String,
    pub scopes: Vec<Scope>,
    pub name: Option<String>,
    pub created_at: i64,
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub enum Principal {
    /// The operator.
    Admin,
    /// A token of one tenant.
    Tenant { tenant: String, scopes: Vec<Scope> },
}

/// The admin token, as its hash. It may be replaced while berth runs (`berth
/// rotate-admin-token` rewrites the token file, which the server reads again).
pub struct Auth {
    admin_hash: std::sync::RwLock<String>,
}

impl Auth {
    pub fn new(admin_token: &str) -> Auth {
        Auth {
            admin_hash: std::sync::RwLock::new(secrets::token_hash(admin_token)),
        }
    }

    /// Accepts `admin_token` from now on, and no longer the one before.
    pub fn replace_admin_token(&self, admin_token: &str) {
        let hash = secrets::token_hash(admin_token);
        *self
            .admin_hash
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = hash;
    }

    fn is_admin(&self, hash: &str) -> bool {
        let admin = self
            .admin_hash
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        secrets::hashes_equal(hash, &admin)
    }
}

impl FromRequestParts<State> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &State) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("send a token as `Authorization: Bearer <token>`")
            })?;
        let hash = secrets::token_hash(token);
        if state.auth.is_admin(&hash) {
            return Ok(Principal::Admin);
        }
        let record = state
            .runtime
            .directory()
            .key(TOKEN_KIND, &hash)
            .and_then(|json| serde_json::from_str::<TokenRecord>(&json).ok())
            .ok_or_else(|| ApiError::unauthorized("unknown or revoked token"))?;
        Ok(Principal::Tenant {
            tenant: record.tenant,
            scopes: record.scopes,
        })
    }
}

impl Principal {
    /// Whether this principal holds `scope` (or a wider one).
    pub fn has(&self, scope: Scope) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Tenant { scopes, .. } => scopes.iter().any(|s| *s >= scope),
        }
    }

    /// Allows the request on `tenant` with `scope`, or answers 404 (another tenant's, or no
    /// such tenant) or 403 (this tenant's, but a narrower token).
    pub fn require(&self, state: &State, tenant: &str, scope: Scope) -> Result<(), ApiError> {
        let not_found = || {
            ApiError::not_found(format!(
                "tenant `{}` not found",
                crate::tenant::printable(tenant)
            ))
        };
        if let Principal::Tenant { tenant: mine, .. } = self
            && mine != tenant
        {
            return Err(not_found());
        }
        if !state.tenant_exists(tenant) {
            return Err(not_found());
        }
        if !self.has(scope) {
            return Err(ApiError::forbidden(format!(
                "this token lacks the `{}` scope",
                scope.as_str()
            )));
        }
        Ok(())
    }

    /// Allows what only the operator may change on a tenant (its quota): 403
    /// `operator_only` for a tenant token, saying what `what` was refused.
    pub fn require_operator(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Tenant { .. } => Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "operator_only",
                format!("only the operator's admin token may change {what}"),
            )),
        }
    }

    /// Allows operator-only routes.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Tenant { .. } => Err(ApiError::forbidden(
                "only the operator's admin token may do this",
            )),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is case-insensitive
/// (RFC 9110 §11.1), so `bearer` and `BEARER` work as well.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}
