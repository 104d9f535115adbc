//! Creating a server: the request body (name, labels, user data), the create itself with its
//! name-conflict lookup, and the create action followed until it settles (see the module
//! docs of `hetzner`).

use std::collections::BTreeMap;
use std::sync::PoisonError;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::api::{Action, ActionReply, ApiError, CreateReply, Failure, Server, classify};
use super::budget::Priority;
use super::call::Call;
use super::names::render_user_data;
use super::{
    ACTION_POLL_FIRST, ACTION_POLL_MAX, Hetzner, LABEL_INSTALLATION, LABEL_LEASE, LABEL_MANAGED_BY,
    LABEL_TENANT, MAX_REMEMBERED_ACTIONS, MAX_USER_DATA, RESERVED_LABELS, label_value, server_name,
    valid_label_key, valid_label_value,
};
use crate::{Error, Runner, RunnerSpec, settings};

impl Hetzner {
    /// The current state of an action; `None` when the API no longer knows it.
    pub(super) async fn action(&self, id: u64) -> Result<Option<Action>, Error> {
        let call = Call::new(Method::GET, format!("actions/{id}"), Priority::Mutation);
        match self.request::<ActionReply>(&call).await {
            Ok(reply) => Ok(Some(reply.action)),
            Err(Failure::Api(api)) if api.code == "not_found" => Ok(None),
            Err(failure) => Err(failure.into_error()),
        }
    }

    fn remember_action(&self, lease_id: &str, action_id: u64) {
        let mut actions = self.actions.lock().unwrap_or_else(PoisonError::into_inner);
        if actions.len() >= MAX_REMEMBERED_ACTIONS {
            actions.clear();
        }
        actions.insert(lease_id.to_string(), action_id);
    }

    fn forget_action(&self, lease_id: &str) {
        self.actions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(lease_id);
    }

    fn remembered_action(&self, lease_id: &str) -> Option<u64> {
        self.actions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(lease_id)
            .copied()
    }

    /// Waits for the create action of a new server to end, within `action_timeout_ms`. An
    /// `error` deletes the server and fails the create; a deadline that passes returns the
    /// runner (the server exists; its callback or the ready timeout decides).
    async fn settle(
        &self,
        spec: &RunnerSpec,
        server_id: u64,
        mut action: Action,
        runner: Runner,
    ) -> Result<Runner, Error> {
        self.remember_action(&spec.lease_id, action.id);
        let deadline = Instant::now() + Duration::from_millis(self.config.action_timeout_ms);
        let mut pause = ACTION_POLL_FIRST;
        // Bounded by the deadline: every pass sleeps (at least until the deadline) or returns.
        loop {
            match action.status.as_str() {
                "success" => {
                    self.forget_action(&spec.lease_id);
                    return Ok(runner);
                }
                "error" => return Err(self.failed_create(spec, server_id, &action).await),
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::info!(lease_id = %spec.lease_id, server_id, action_id = action.id, "hetzner create action still running at action_timeout_ms; the runner's callback decides");
                return Ok(runner);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(ACTION_POLL_MAX);
            match self.action(action.id).await {
                Ok(Some(next)) => action = next,
                // Actions are kept for a long time; one that vanished tells us nothing.
                Ok(None) => {
                    self.forget_action(&spec.lease_id);
                    return Ok(runner);
                }
                // Keep looking until the deadline: the server exists either way.
                Err(e) => {
                    tracing::debug!(lease_id = %spec.lease_id, action_id = action.id, error = %e, "reading a hetzner create action failed");
                }
            }
        }
    }

    /// The error of a create whose action ended in `error`, after deleting its server so
    /// that a retry starts afresh. If the delete fails too the error is transient: the
    /// retried create finds the server, looks at the remembered action and tries again.
    async fn failed_create(&self, spec: &RunnerSpec, server_id: u64, action: &Action) -> Error {
        let (code, message) = action
            .error
            .as_ref()
            .map(|e| (e.code.as_str(), e.message.as_str()))
            .unwrap_or(("unknown", ""));
        let code = if code.is_empty() { "unknown" } else { code };
        let text = format!(
            "hetzner create_server action {} of server {server_id} failed: {code}: {}",
            action.id,
            settings::truncate(message, 500)
        );
        let text = self.scrub(text, &spec.secrets());
        tracing::warn!(lease_id = %spec.lease_id, server_id, error = %text, "hetzner create action failed; deleting the server");
        match self.delete(&server_id.to_string()).await {
            Ok(()) => {
                self.forget_action(&spec.lease_id);
                classify(code, None).error(text, None)
            }
            Err(delete) => Error::Transient {
                message: format!("{text}; deleting the failed server failed too: {delete}"),
                retry_after: None,
            },
        }
    }

    /// Returns a server found for a lease, unless its remembered create action ended in
    /// `error` (then the create fails as it would have at once).
    async fn adopt(&self, server: Server, spec: &RunnerSpec) -> Result<Runner, Error> {
        let server_id = server.id;
        let runner = server.into_runner(&spec.tenant, &spec.lease_id);
        let Some(action_id) = self.remembered_action(&spec.lease_id) else {
            return Ok(runner);
        };
        // One look only: the broker's timeout already ran out once on this create.
        match self.action(action_id).await {
            Ok(Some(action)) if action.status == "error" => {
                Err(self.failed_create(spec, server_id, &action).await)
            }
            Ok(Some(action)) if action.status == "running" => Ok(runner),
            Ok(_) => {
                self.forget_action(&spec.lease_id);
                Ok(runner)
            }
            Err(_) => Ok(runner),
        }
    }

    /// After `uniqueness_error` on create: the name is taken, most likely by this lease's
    /// server from a concurrent or retried create. Look it up by its exact name (the label
    /// index may not show it yet); it is used only if its labels say it is this lease's.
    async fn after_name_conflict(
        &self,
        spec: &RunnerSpec,
        conflict: ApiError,
    ) -> Result<Runner, Error> {
        let name = server_name(&spec.lease_id);
        let secrets = spec.secrets();
        let conflict = conflict.into_error().to_string();
        let retry = |why: String| Error::Transient {
            message: format!("{conflict}; {why}; the create is retried"),
            retry_after: Some(Duration::from_secs(1)),
        };
        let servers = match self
            .servers(("name", name.clone()), Priority::Mutation, &secrets)
            .await
        {
            Ok(servers) => servers,
            Err(e) => return Err(retry(format!("looking up the server `{name}` failed: {e}"))),
        };
        match servers.into_iter().find(|server| server.name == name) {
            Some(server) if self.owns(&server, &spec.tenant, Some(&spec.lease_id)) => {
                self.adopt(server, spec).await
            }
            Some(server) => Err(Error::Permanent(format!(
                "a server named `{name}` (id {}) exists and is not this lease's: berth neither \
                 uses nor deletes it ({conflict})",
                server.id
            ))),
            None => Err(retry(format!("no server named `{name}` is visible yet"))),
        }
    }

    fn create_body(&self, spec: &RunnerSpec) -> Result<Value, Error> {
        let image = spec
            .image
            .as_ref()
            .or(self.config.image.as_ref())
            .ok_or_else(|| {
                Error::Permanent(
                    "no image: set the pool's image or the account's `image`".to_string(),
                )
            })?;
        let mut labels = BTreeMap::new();
        for (key, value) in &spec.labels {
            if !valid_label_key(key) {
                return Err(Error::Permanent(format!(
                    "label `{}` breaks Hetzner's label rules (name: up to 63 of [A-Za-z0-9._-], \
                     alphanumeric at both ends; optional DNS prefix)",
                    settings::printable(key),
                )));
            }
            if RESERVED_LABELS.contains(&key.as_str()) {
                return Err(Error::Permanent(format!(
                    "label `{key}` is reserved for berth"
                )));
            }
            labels.insert(key.clone(), label_value(value));
        }
        labels.insert(LABEL_MANAGED_BY.to_string(), "berth".to_string());
        labels.insert(LABEL_TENANT.to_string(), label_value(&spec.tenant));
        labels.insert(LABEL_LEASE.to_string(), spec.lease_id.clone());
        if let Some(installation) = &self.installation {
            labels.insert(LABEL_INSTALLATION.to_string(), installation.clone());
        }

        let mut body = json!({
            "name": server_name(&spec.lease_id),
            "server_type": spec.machine_type,
            "image": image,
            "labels": labels,
            "start_after_create": true,
        });
        let location = spec.region.as_ref().or(self.config.location.as_ref());
        if let Some(location) = location {
            body["location"] = json!(location);
        }
        if !self.config.ssh_keys.is_empty() {
            body["ssh_keys"] = json!(self.config.ssh_keys);
        }
        if !self.config.firewall_ids.is_empty() {
            let firewalls: Vec<Value> = self
                .config
                .firewall_ids
                .iter()
                .map(|id| json!({"firewall": id}))
                .collect();
            body["firewalls"] = json!(firewalls);
        }
        if let Some(template) = &self.config.user_data {
            let user_data = render_user_data(template, spec);
            if user_data.len() > MAX_USER_DATA {
                return Err(Error::Permanent(format!(
                    "user_data is larger than {MAX_USER_DATA} bytes once filled in"
                )));
            }
            body["user_data"] = json!(user_data);
        }
        Ok(body)
    }

    pub(super) async fn create_server(
        &self,
        spec: &RunnerSpec,
        secrets: &[&str],
    ) -> Result<Runner, Error> {
        if spec.tenant.is_empty() {
            return Err(Error::Permanent("the tenant is empty".to_string()));
        }
        if spec.lease_id.is_empty() || !valid_label_value(&spec.lease_id) {
            return Err(Error::Permanent(format!(
                "lease id `{}` cannot be a Hetzner label value (up to 63 of [A-Za-z0-9._-], \
                 alphanumeric at both ends)",
                settings::printable(&spec.lease_id)
            )));
        }
        let body = self.create_body(spec)?;
        if let Some(existing) = self
            .servers_of_lease(&spec.tenant, &spec.lease_id, secrets)
            .await?
            .into_iter()
            .next()
        {
            return self.adopt(existing, spec).await;
        }
        let mut call = Call::new(Method::POST, "servers", Priority::Mutation);
        call.body = Some(&body);
        call.secrets = secrets;
        match self.request::<CreateReply>(&call).await {
            Ok(reply) => {
                let server_id = reply.server.id;
                tracing::info!(lease_id = %spec.lease_id, server_id, "hetzner server created");
                let runner = reply.server.into_runner(&spec.tenant, &spec.lease_id);
                match reply.action {
                    Some(action) => self.settle(spec, server_id, action, runner).await,
                    None => Ok(runner),
                }
            }
            // A concurrent or retried create of this lease won the name: use its server.
            Err(Failure::Api(api)) if api.code == "uniqueness_error" => {
                self.after_name_conflict(spec, api).await
            }
            Err(failure) => Err(failure.into_error()),
        }
    }
}
