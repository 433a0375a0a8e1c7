//! The operator-facing service (centralctl, the dashboard). Every call carries a bearer API
//! token; roles are viewer (read), operator (also commands, enrollment tokens, fleet push) and
//! admin (also API tokens, replacement enrollment tokens, the audit trail). Every change is
//! written to the audit trail in the change's own transaction: a change whose record cannot be
//! written is not made, and the caller is told so. Lists that grow with the fleet come in pages.
//! A viewer never sees a workload's `env` values. Console codes (issue 12): an operator may
//! have staff codes, an admin technician codes too.

use std::sync::Arc;

use backroom_api::node::central_message::Body as CBody;
use backroom_api::node::{CentralMessage, Desired};
use backroom_api::operator::operator_server::Operator;
use backroom_api::operator::{
    Alert, AlertGroup, ApiTokenInfo, AuditRecord, CommandInfo, CreateApiTokenReply,
    CreateApiTokenRequest, CreateConsoleCodeReply, CreateConsoleCodeRequest,
    CreateEnrollTokenReply, CreateEnrollTokenRequest, EnrollTokenInfo, FleetPushReply,
    FleetPushRequest, FleetStatusReply, FleetStatusRequest, GetCommandRequest, GetStoreReply,
    GetStoreRequest, ListAlertsReply, ListAlertsRequest, ListApiTokensReply, ListApiTokensRequest,
    ListAuditReply, ListAuditRequest, ListEnrollTokensReply, ListEnrollTokensRequest,
    ListStoresReply, ListStoresRequest, PushOutcome, RevokeApiTokenReply, RevokeApiTokenRequest,
    RevokeEnrollTokenReply, RevokeEnrollTokenRequest, RevokeStoreReply, RevokeStoreRequest,
    SendCommandRequest, StoreEvent, StoreProfile, StoreSummary, Workload,
};
use backroom_session::console_code::Role as ConsoleRole;
use backroom_session::token::EnrollToken;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::app::{App, StatusJson};
use crate::console_codes::{self, ConsoleCodeError};
use crate::db::{
    AlertKey, ApiTokenRow, AuditFilter, CommandRow, EnrollTokenRow, PushedStore, StoreRow, token_id,
};

/// Page sizes: (default, most) per list.
const STORES_PAGE: (u32, u32) = (1000, 1000);
const FLEET_STATUS_PAGE: (u32, u32) = (100, 500);
const ALERTS_PAGE: (u32, u32) = (1000, 1000);
const AUDIT_PAGE: (u32, u32) = (100, 1000);

fn page_size(asked: u32, (default, most): (u32, u32)) -> u32 {
    if asked == 0 { default } else { asked.min(most) }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

pub fn hash_api_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

pub fn new_api_token() -> String {
    format!("bko1.{:032x}{:032x}", rand::random::<u128>(), rand::random::<u128>())
}

pub struct OperatorSvc {
    app: Arc<App>,
}

impl OperatorSvc {
    pub fn new(app: Arc<App>) -> Self {
        OperatorSvc { app }
    }

    /// Who is calling, if their token's role is at least `need`.
    async fn auth<T>(&self, req: &Request<T>, need: Role) -> Result<String, Status> {
        self.caller(req, need).await.map(|(name, _)| name)
    }

    /// Who is calling and with which role, if it is at least `need`.
    async fn caller<T>(&self, req: &Request<T>, need: Role) -> Result<(String, Role), Status> {
        let header =
            req.metadata().get("authorization").and_then(|v| v.to_str().ok()).ok_or_else(|| {
                Status::unauthenticated("no API token: pass --token or set BACKROOM_TOKEN")
            })?;
        let token = header.strip_prefix("Bearer ").unwrap_or(header);
        let (name, role) =
            self.app
                .db
                .api_token(&hash_api_token(token))
                .await
                .map_err(internal)?
                .ok_or_else(|| Status::unauthenticated("this API token is not known to central"))?;
        let role = Role::parse(&role).unwrap_or(Role::Viewer);
        if role < need {
            return Err(Status::permission_denied(format!(
                "token `{name}` has the {role:?} role; this needs {need:?}"
            )));
        }
        Ok((name, role))
    }

    fn summary(&self, row: &StoreRow) -> StoreSummary {
        let status = StatusJson::parse(&row.status_json);
        let healthy = status.workloads.iter().filter(|w| w.healthy).count();
        StoreSummary {
            store_id: row.id.clone(),
            region: row.region.clone(),
            online: self.app.hub.is_online(&row.id),
            last_seen_unix_ms: row.last_seen_ms,
            desired_revision: row.desired_revision.clone(),
            applied_revision: row.applied_revision.clone(),
            workloads_healthy: u32::try_from(healthy).unwrap_or(u32::MAX),
            workloads_total: u32::try_from(status.workloads.len()).unwrap_or(u32::MAX),
            agent_version: row.agent_version.clone(),
            enrolled: row.enrolled_ms != 0,
            last_apply_error: if row.last_apply_ok {
                String::new()
            } else {
                row.last_apply_message.clone()
            },
        }
    }
}

fn internal(e: impl std::error::Error + 'static) -> Status {
    let e = backroom_daemon::chain(&e);
    tracing::error!(error = %e, "operator service");
    Status::internal(format!("central could not do that: {e}"))
}

/// A change that was not made, because it (or its audit record) could not be written.
fn not_done(e: impl std::error::Error + 'static) -> Status {
    let e = backroom_daemon::chain(&e);
    tracing::error!(error = %e, "operator service: a change was not made");
    Status::internal(format!("nothing was changed: {e}"))
}

fn command_info(c: &CommandRow) -> CommandInfo {
    CommandInfo {
        id: c.id.clone(),
        store_id: c.store_id.clone(),
        kind: c.kind.clone(),
        workload: c.workload.clone(),
        state: c.state.clone(),
        result: c.result.clone(),
        created_unix_ms: c.created_ms,
        expires_unix_ms: c.expires_ms,
        finished_unix_ms: c.finished_ms,
    }
}

fn enroll_token_info(t: &EnrollTokenRow, now_ms: i64) -> EnrollTokenInfo {
    EnrollTokenInfo {
        id: t.id.clone(),
        store_id: t.store_id.clone(),
        region: t.region.clone(),
        created_unix_ms: t.created_ms,
        expires_unix_ms: t.expires_ms,
        state: t.state(now_ms).to_string(),
        used_unix_ms: t.used_ms,
        revoked_unix_ms: t.revoked_ms,
        created_by: t.created_by.clone(),
    }
}

fn api_token_info(t: &ApiTokenRow) -> ApiTokenInfo {
    ApiTokenInfo {
        id: t.id.clone(),
        name: t.name.clone(),
        role: t.role.clone(),
        created_unix_ms: t.created_ms,
        revoked: t.revoked_ms != 0,
        revoked_unix_ms: t.revoked_ms,
    }
}

fn store_event(e: crate::db::EventRow) -> StoreEvent {
    StoreEvent {
        seq: e.seq,
        at_unix_ms: e.at_ms,
        kind: e.kind,
        workload: e.workload,
        message: e.message,
        subject: e.subject,
    }
}

fn console_code_status(e: ConsoleCodeError) -> Status {
    match e {
        ConsoleCodeError::UnknownStore(_) => Status::not_found(e.to_string()),
        ConsoleCodeError::NotEnrolled(_) | ConsoleCodeError::NoSecret(_) => {
            Status::failed_precondition(e.to_string())
        }
        ConsoleCodeError::Code(_) => Status::invalid_argument(e.to_string()),
        ConsoleCodeError::BadSecret(_) => internal(e),
        ConsoleCodeError::Db(_) => not_done(e),
    }
}

fn valid_store_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[tonic::async_trait]
impl Operator for OperatorSvc {
    async fn create_enroll_token(
        &self,
        req: Request<CreateEnrollTokenRequest>,
    ) -> Result<Response<CreateEnrollTokenReply>, Status> {
        let (who, role) = self.caller(&req, Role::Operator).await?;
        let r = req.into_inner();
        if !valid_store_id(&r.store_id) {
            return Err(Status::invalid_argument(format!(
                "`{}` is not a store id: use lower-case letters, digits and dashes",
                backroom_daemon::text::short(&r.store_id, 80)
            )));
        }
        if r.region.len() > 63 {
            return Err(Status::invalid_argument("a region name has at most 63 characters"));
        }
        // A token for an enrolled store replaces the server running there once it is used:
        // that is for an admin who says so, never a side effect of a typo in a store id.
        let existing = self.app.db.get_store(&r.store_id).await.map_err(internal)?;
        let enrolled = existing.as_ref().is_some_and(|s| s.enrolled_ms != 0);
        if enrolled && !r.replace {
            return Err(Status::failed_precondition(format!(
                "store {} is enrolled: a token for it would replace its running server when \
                 used; for a replacement server an admin passes --replace",
                r.store_id
            )));
        }
        if enrolled && role < Role::Admin {
            return Err(Status::permission_denied(format!(
                "token `{who}` has the {role:?} role; replacing an enrolled store's server needs Admin"
            )));
        }
        let ttl_ms = if r.ttl_seconds == 0 {
            86_400_000
        } else {
            i64::try_from(r.ttl_seconds).unwrap_or(i64::MAX / 2000).min(365 * 86_400) * 1000
        };
        let now = self.app.now_ms();
        let token = EnrollToken::generate(&r.store_id, self.app.ca.fingerprint());
        let expires = now + ttl_ms;
        let hash = token.secret_hash();
        let (action, detail) = if enrolled {
            (
                "enroll-token-replace",
                format!(
                    "{} for enrolled store {} (region {:?}): its running server is replaced when used",
                    token_id(&hash),
                    r.store_id,
                    r.region
                ),
            )
        } else {
            (
                "enroll-token",
                format!("{} for store {} (region {:?})", token_id(&hash), r.store_id, r.region),
            )
        };
        let audit = self.app.audit_entry(&who, action, &r.store_id, detail);
        self.app
            .db
            .insert_enroll_token(
                &crate::db::NewEnrollToken {
                    hash: &hash,
                    store_id: &r.store_id,
                    region: &r.region,
                    created_ms: now,
                    expires_ms: expires,
                    created_by: &who,
                },
                &audit,
            )
            .await
            .map_err(not_done)?;
        Ok(Response::new(CreateEnrollTokenReply {
            token: token.to_string(),
            expires_unix_ms: expires,
            id: token_id(&hash),
        }))
    }

    async fn fleet_push(
        &self,
        req: Request<FleetPushRequest>,
    ) -> Result<Response<FleetPushReply>, Status> {
        let who = self.auth(&req, Role::Operator).await?;
        let stores = req.into_inner().stores;
        // Never trust the client's rendering: render every store again, refuse the push whole.
        // Rendering a fleet is seconds of CPU: it runs beside the runtime, not on it, so
        // sessions and other calls go on meanwhile.
        let (stores, checked) = tokio::task::spawn_blocking(move || {
            let checked = check_push(&stores);
            (stores, checked)
        })
        .await
        .map_err(|e| Status::internal(format!("checking the push failed: {e}")))?;
        let regions = checked.map_err(|problems| {
            Status::invalid_argument(format!(
                "nothing was recorded: {} of {} stores are invalid: {}",
                problems.len(),
                stores.len(),
                problems.join(" | ")
            ))
        })?;
        let pushed: Vec<PushedStore<'_>> = stores
            .iter()
            .zip(&regions)
            .map(|(s, region)| PushedStore {
                store_id: &s.store_id,
                region,
                revision: &s.revision,
                profile_yaml: &s.profile_yaml,
                source: &s.source,
            })
            .collect();
        // The revisions and the audit record of each change commit together, or nothing does.
        let results =
            self.app.db.record_push(&pushed, &who, self.app.now_ms()).await.map_err(not_done)?;
        for (r, s) in results.iter().zip(&stores) {
            if r.changed {
                let msg = CentralMessage {
                    body: Some(CBody::Desired(Desired {
                        revision: s.revision.clone(),
                        profile_yaml: s.profile_yaml.clone(),
                    })),
                };
                self.app.hub.send(&s.store_id, msg);
            }
        }
        Ok(Response::new(FleetPushReply {
            stores: results
                .into_iter()
                .map(|r| PushOutcome {
                    store_id: r.store_id,
                    revision: r.revision,
                    changed: r.changed,
                    previous_revision: r.previous,
                })
                .collect(),
        }))
    }

    async fn fleet_status(
        &self,
        req: Request<FleetStatusRequest>,
    ) -> Result<Response<FleetStatusReply>, Status> {
        let (_, role) = self.caller(&req, Role::Viewer).await?;
        let r = req.into_inner();
        let limit = page_size(r.page_size, FLEET_STATUS_PAGE);
        let rows = self.app.db.list_stores_page(&r.page_token, limit).await.map_err(internal)?;
        let next_page_token = next_token(&rows, limit, |s| s.id.clone());
        let mut stores = Vec::new();
        for row in rows {
            if row.desired_revision.is_empty() {
                continue;
            }
            let yaml = self
                .app
                .db
                .revision_yaml(&row.id, &row.desired_revision)
                .await
                .map_err(internal)?
                .unwrap_or_default();
            stores.push(StoreProfile {
                store_id: row.id,
                revision: row.desired_revision,
                profile_yaml: yaml,
                source: String::new(),
            });
        }
        let env_redacted = role == Role::Viewer;
        if env_redacted {
            stores = tokio::task::spawn_blocking(move || {
                for s in &mut stores {
                    s.profile_yaml = crate::redact::profile_yaml(
                        &format!("central:{}", s.store_id),
                        &s.profile_yaml,
                    );
                }
                stores
            })
            .await
            .map_err(|e| Status::internal(format!("redacting profiles failed: {e}")))?;
        }
        Ok(Response::new(FleetStatusReply { stores, next_page_token, env_redacted }))
    }

    async fn list_stores(
        &self,
        req: Request<ListStoresRequest>,
    ) -> Result<Response<ListStoresReply>, Status> {
        self.auth(&req, Role::Viewer).await?;
        let r = req.into_inner();
        let limit = page_size(r.page_size, STORES_PAGE);
        let rows = self.app.db.list_stores_page(&r.page_token, limit).await.map_err(internal)?;
        Ok(Response::new(ListStoresReply {
            stores: rows.iter().map(|r| self.summary(r)).collect(),
            next_page_token: next_token(&rows, limit, |s| s.id.clone()),
        }))
    }

    async fn get_store(
        &self,
        req: Request<GetStoreRequest>,
    ) -> Result<Response<GetStoreReply>, Status> {
        self.auth(&req, Role::Viewer).await?;
        let r = req.into_inner();
        let row =
            self.app.db.get_store(&r.store_id).await.map_err(internal)?.ok_or_else(|| {
                Status::not_found(format!("central knows no store `{}`", r.store_id))
            })?;
        let status = StatusJson::parse(&row.status_json);
        let n = if r.events == 0 { 20 } else { r.events.min(1000) };
        let events = self.app.db.recent_events(&row.id, n).await.map_err(internal)?;
        let console = self.app.db.console_events(&row.id, 20).await.map_err(internal)?;
        let commands = self.app.db.recent_commands(&row.id, 10).await.map_err(internal)?;
        Ok(Response::new(GetStoreReply {
            summary: Some(self.summary(&row)),
            workloads: status
                .workloads
                .iter()
                .map(|w| Workload {
                    name: w.name.clone(),
                    kind: w.kind.clone(),
                    state: w.state.clone(),
                    healthy: w.healthy,
                    since_unix_ms: w.since_ms,
                    restarts: w.restarts,
                    reason: w.reason.clone(),
                    addresses: w.addresses.clone(),
                })
                .collect(),
            events: events.into_iter().map(store_event).collect(),
            console: console.into_iter().map(store_event).collect(),
            commands: commands.iter().map(command_info).collect(),
            problems: status.problems.iter().map(|p| p.to_proto()).collect(),
        }))
    }

    async fn send_command(
        &self,
        req: Request<SendCommandRequest>,
    ) -> Result<Response<CommandInfo>, Status> {
        let who = self.auth(&req, Role::Operator).await?;
        let r = req.into_inner();
        match r.kind.as_str() {
            "restart" if r.workload.is_empty() => {
                return Err(Status::invalid_argument("restart needs the workload to restart"));
            }
            "restart" | "reconcile" | "rollback" => {}
            other => {
                return Err(Status::invalid_argument(format!(
                    "`{other}` is not a command: use restart, reconcile or rollback"
                )));
            }
        }
        if self.app.db.get_store(&r.store_id).await.map_err(internal)?.is_none() {
            return Err(Status::not_found(format!("central knows no store `{}`", r.store_id)));
        }
        let now = self.app.now_ms();
        let ttl = if r.ttl_seconds == 0 {
            3_600_000
        } else {
            i64::try_from(r.ttl_seconds).unwrap_or(i64::MAX / 2000) * 1000
        };
        let mut c = CommandRow {
            id: format!("cmd-{:016x}", rand::random::<u64>()),
            store_id: r.store_id.clone(),
            kind: r.kind.clone(),
            workload: r.workload.clone(),
            state: "queued".into(),
            result: String::new(),
            created_ms: now,
            expires_ms: now + ttl,
            finished_ms: 0,
        };
        let audit = self.app.audit_entry(
            &who,
            "command",
            &c.store_id,
            format!("{} {} {} ({})", c.kind, c.store_id, c.workload, c.id),
        );
        let cap = self.app.settings.max_queued_commands;
        if !self.app.db.insert_command_capped(&c, &who, cap, now, &audit).await.map_err(not_done)? {
            return Err(Status::resource_exhausted(format!(
                "store `{}` already has {cap} commands waiting (queued, or sent and not answered): \
                 wait for them to finish or expire before sending more",
                c.store_id
            )));
        }
        // The store's session delivers it; it is `sent` once the node acknowledges it.
        if self.app.hub.wake(&c.store_id) {
            c.state = "sending".into();
        }
        Ok(Response::new(command_info(&c)))
    }

    async fn get_command(
        &self,
        req: Request<GetCommandRequest>,
    ) -> Result<Response<CommandInfo>, Status> {
        self.auth(&req, Role::Viewer).await?;
        let id = req.into_inner().id;
        self.app.db.expire_commands(self.app.now_ms()).await.map_err(internal)?;
        let c = self
            .app
            .db
            .get_command(&id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no command `{id}`")))?;
        Ok(Response::new(command_info(&c)))
    }

    async fn list_alerts(
        &self,
        req: Request<ListAlertsRequest>,
    ) -> Result<Response<ListAlertsReply>, Status> {
        self.auth(&req, Role::Viewer).await?;
        let r = req.into_inner();
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(AlertKey::parse(&r.page_token).ok_or_else(|| {
                Status::invalid_argument("that page token is not one central gave out")
            })?)
        };
        let limit = page_size(r.page_size, ALERTS_PAGE);
        let rows = self
            .app
            .db
            .alerts_page(r.include_resolved, after.as_ref(), limit)
            .await
            .map_err(internal)?;
        let next_page_token = next_token(&rows, limit, |a| AlertKey::of(a).token());
        let mut groups: Vec<AlertGroup> = Vec::new();
        for a in rows {
            let alert = Alert {
                id: a.id,
                store_id: a.store_id,
                subject: a.subject,
                message: a.message,
                since_unix_ms: a.since_ms,
                resolved: a.resolved_ms != 0,
                resolved_unix_ms: a.resolved_ms,
            };
            match groups.iter_mut().find(|g| g.kind == a.kind) {
                Some(g) => g.alerts.push(alert),
                None => groups.push(AlertGroup {
                    title: crate::alerts::title(&a.kind).into(),
                    kind: a.kind,
                    alerts: vec![alert],
                }),
            }
        }
        Ok(Response::new(ListAlertsReply { groups, next_page_token }))
    }

    async fn list_audit(
        &self,
        req: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditReply>, Status> {
        self.auth(&req, Role::Admin).await?;
        let r = req.into_inner();
        let before = if r.page_token.is_empty() {
            None
        } else {
            let bad = || Status::invalid_argument("that page token is not one central gave out");
            let (at, id) = r.page_token.split_once('/').ok_or_else(bad)?;
            Some((at.parse::<i64>().map_err(|_| bad())?, id.to_string()))
        };
        let limit = page_size(r.page_size, AUDIT_PAGE);
        let rows = self
            .app
            .db
            .audit_page(&AuditFilter {
                store_id: r.store_id,
                actor: r.actor,
                since_ms: r.since_unix_ms,
                before,
                limit,
            })
            .await
            .map_err(internal)?;
        let next_page_token = next_token(&rows, limit, |a| format!("{}/{}", a.at_ms, a.id));
        Ok(Response::new(ListAuditReply {
            records: rows
                .into_iter()
                .map(|a| AuditRecord {
                    id: a.id,
                    at_unix_ms: a.at_ms,
                    actor: a.actor,
                    action: a.action,
                    store_id: a.store_id,
                    detail: a.detail,
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn create_api_token(
        &self,
        req: Request<CreateApiTokenRequest>,
    ) -> Result<Response<CreateApiTokenReply>, Status> {
        let who = self.auth(&req, Role::Admin).await?;
        let r = req.into_inner();
        if Role::parse(&r.role).is_none() {
            return Err(Status::invalid_argument("the role is viewer, operator or admin"));
        }
        if r.name.trim().is_empty() {
            return Err(Status::invalid_argument("give the token a name (who or what uses it)"));
        }
        if r.name.len() > 200 {
            return Err(Status::invalid_argument("a token's name has at most 200 characters"));
        }
        let token = new_api_token();
        let hash = hash_api_token(&token);
        let audit = self.app.audit_entry(
            &who,
            "api-token",
            "",
            format!("{} {} ({})", token_id(&hash), r.name, r.role),
        );
        self.app
            .db
            .insert_api_token(&hash, &r.name, &r.role, self.app.now_ms(), &audit)
            .await
            .map_err(not_done)?;
        Ok(Response::new(CreateApiTokenReply { token, id: token_id(&hash) }))
    }

    async fn revoke_store(
        &self,
        req: Request<RevokeStoreRequest>,
    ) -> Result<Response<RevokeStoreReply>, Status> {
        let who = self.auth(&req, Role::Operator).await?;
        let store = req.into_inner().store_id;
        let revoked = self
            .app
            .db
            .revoke_store(&store, self.app.now_ms())
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("central knows no store `{store}`")))?;
        // Its session ends now, not at its next call.
        let closed = self.app.hub.close(&store, crate::node_service::REVOKED);
        let detail = if revoked.is_empty() {
            format!("store {store}: it had no certificate")
        } else {
            format!("store {store}: certificate {} revoked", revoked.join(", "))
        };
        tracing::warn!(by = %who, "{detail}");
        self.app.audit(&who, "store-revoke", &detail).await;
        Ok(Response::new(RevokeStoreReply { revoked_serials: revoked, session_closed: closed }))
    }

    async fn list_enroll_tokens(
        &self,
        req: Request<ListEnrollTokensRequest>,
    ) -> Result<Response<ListEnrollTokensReply>, Status> {
        self.auth(&req, Role::Operator).await?;
        let store = req.into_inner().store_id;
        let store = (!store.is_empty()).then_some(store.as_str());
        let rows = self.app.db.list_enroll_tokens(store).await.map_err(internal)?;
        let now = self.app.now_ms();
        Ok(Response::new(ListEnrollTokensReply {
            tokens: rows.iter().map(|t| enroll_token_info(t, now)).collect(),
        }))
    }

    async fn revoke_enroll_token(
        &self,
        req: Request<RevokeEnrollTokenRequest>,
    ) -> Result<Response<RevokeEnrollTokenReply>, Status> {
        let who = self.auth(&req, Role::Operator).await?;
        let r = req.into_inner();
        let (id, store) = match (r.id.is_empty(), r.store_id.is_empty()) {
            (false, true) => (Some(r.id.as_str()), None),
            (true, false) => (None, Some(r.store_id.as_str())),
            _ => {
                return Err(Status::invalid_argument(
                    "name one token by its id, or a store (every token of it is revoked)",
                ));
            }
        };
        let now = self.app.now_ms();
        let revoked = self.app.db.revoke_enroll_tokens(id, store, now).await.map_err(internal)?;
        if revoked.is_empty() && id.is_some() {
            return Err(Status::not_found(format!(
                "no enrollment token `{}` that is not revoked already (centralctl token list shows them)",
                r.id
            )));
        }
        let ids: Vec<&str> = revoked.iter().map(|t| t.id.as_str()).collect();
        self.app
            .audit(
                &who,
                "enroll-token-revoke",
                &format!(
                    "{} revoked{}",
                    if ids.is_empty() { "no token".to_string() } else { ids.join(", ") },
                    store.map(|s| format!(" (store {s})")).unwrap_or_default()
                ),
            )
            .await;
        Ok(Response::new(RevokeEnrollTokenReply {
            revoked: revoked.iter().map(|t| enroll_token_info(t, now)).collect(),
        }))
    }

    async fn list_api_tokens(
        &self,
        req: Request<ListApiTokensRequest>,
    ) -> Result<Response<ListApiTokensReply>, Status> {
        self.auth(&req, Role::Admin).await?;
        let rows = self.app.db.list_api_tokens().await.map_err(internal)?;
        Ok(Response::new(ListApiTokensReply { tokens: rows.iter().map(api_token_info).collect() }))
    }

    async fn create_console_code(
        &self,
        req: Request<CreateConsoleCodeRequest>,
    ) -> Result<Response<CreateConsoleCodeReply>, Status> {
        let (who, caller) = self.caller(&req, Role::Operator).await?;
        let r = req.into_inner();
        let role = if r.role.is_empty() {
            ConsoleRole::Technician
        } else {
            r.role.parse::<ConsoleRole>().map_err(|e| Status::invalid_argument(e.to_string()))?
        };
        // A technician code lets the bearer re-enroll the server and override its uplink.
        if role == ConsoleRole::Technician && caller < Role::Admin {
            return Err(Status::permission_denied(format!(
                "token `{who}` has the {caller:?} role; a technician code needs Admin (an \
                 operator may have a staff code: --role staff)"
            )));
        }
        let ttl = if r.ttl_seconds == 0 {
            console_codes::DEFAULT_TTL
        } else {
            std::time::Duration::from_secs(r.ttl_seconds)
        };
        let code = console_codes::issue(&self.app, &who, &r.store_id, role, ttl)
            .await
            .map_err(console_code_status)?;
        Ok(Response::new(CreateConsoleCodeReply {
            code: code.text,
            role: code.role.to_string(),
            expires_unix_ms: code.expires_ms,
        }))
    }

    async fn revoke_api_token(
        &self,
        req: Request<RevokeApiTokenRequest>,
    ) -> Result<Response<RevokeApiTokenReply>, Status> {
        let who = self.auth(&req, Role::Admin).await?;
        let id = req.into_inner().id;
        let token =
            self.app.db.revoke_api_token(&id, self.app.now_ms()).await.map_err(internal)?.map_err(
                |refusal| match refusal {
                    crate::db::ApiTokenRefusal::Unknown(_) => {
                        Status::not_found(refusal.to_string())
                    }
                    _ => Status::failed_precondition(refusal.to_string()),
                },
            )?;
        self.app
            .audit(
                &who,
                "api-token-revoke",
                &format!("{} {} ({})", token.id, token.name, token.role),
            )
            .await;
        Ok(Response::new(RevokeApiTokenReply { token: Some(api_token_info(&token)) }))
    }
}

/// The token of the next page: where this one ended, if it was full.
fn next_token<T>(rows: &[T], limit: u32, key: impl Fn(&T) -> String) -> String {
    match rows.last() {
        Some(last) if rows.len() >= limit as usize => key(last),
        _ => String::new(),
    }
}

/// Checks every store of a push (size, id, rendering, revision) and returns each store's
/// region, or every problem found. CPU-bound: run it off the async runtime.
fn check_push(stores: &[StoreProfile]) -> Result<Vec<String>, Vec<String>> {
    use backroom_api::limits::PROFILE_MAX;
    let mut problems = Vec::new();
    let mut regions = Vec::new();
    for s in stores {
        let id = backroom_daemon::text::short(&s.store_id, 80);
        if !valid_store_id(&s.store_id) {
            problems.push(format!("`{id}` is not a store id"));
            regions.push(String::new());
            continue;
        }
        // Checked before rendering: a profile a node cannot take must never be recorded, or
        // every session of that store would fail on it.
        if s.profile_yaml.len() > PROFILE_MAX {
            problems.push(format!(
                "{id}: its rendered profile is {} bytes; a store profile may be at most {} bytes \
                 (1 MiB), what a node accepts",
                s.profile_yaml.len(),
                PROFILE_MAX
            ));
            regions.push(String::new());
            continue;
        }
        match backroom_profiles::render_str(&s.source, &s.profile_yaml) {
            Ok(r) if r.revision.as_str() == s.revision => {
                regions.push(r.profile.metadata.labels.get("region").cloned().unwrap_or_default());
            }
            Ok(r) => {
                problems.push(format!(
                    "{id}: the profile renders to revision {}, not {}",
                    r.revision,
                    backroom_daemon::text::short(&s.revision, 80)
                ));
                regions.push(String::new());
            }
            Err(e) => {
                let first: Vec<String> = e.errors().take(5).map(ToString::to_string).collect();
                problems.push(format!("{id}: {}", first.join("; ")));
                regions.push(String::new());
            }
        }
    }
    if problems.is_empty() { Ok(regions) } else { Err(problems) }
}
