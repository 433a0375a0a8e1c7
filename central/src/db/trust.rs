//! Trust between nodes and central: certificates (a renewal's waits until first used),
//! enrollment (the token used only in the transaction that records the certificate, and
//! usable again by the same key if the reply was lost), revocation of stores, enrollment
//! tokens and API tokens; and the commands' lifecycle (acknowledged by the node, bound to the
//! store they are for, queued again when their session ends unfinished).

use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::{AuditEntry, CommandRow, Db, Result, TokenRefusal, q, rows::*};

/// What a certificate presented by a node is, right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertUse {
    /// The store's current certificate.
    Current,
    /// The certificate of the store's last renewal, used for the first time: it is current
    /// now, and the one it replaces (`replaced`) is revoked.
    Promoted { replaced: String },
    /// Revoked, replaced, or never issued to this store.
    NotCurrent,
}

/// A token central accepts for an enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub store_id: String,
    pub region: String,
    /// The token was used already, by this very key, and that enrollment is still the store's:
    /// the node is retrying after losing the reply.
    pub retry: bool,
}

/// An enrollment to record: the token is used and the certificate recorded in one transaction.
pub struct Enrollment<'a> {
    pub token_hash: &'a str,
    /// sha256 of the enrolling key (see `backroom_session::pki::key_fingerprint`).
    pub key_fingerprint: &'a str,
    pub serial: &'a str,
    pub not_after_ms: i64,
    pub now_ms: i64,
    /// The store's new console secret, hex (replaces the one it had).
    pub console_secret_hex: &'a str,
}

/// Why an API token cannot be revoked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiTokenRefusal {
    #[error("there is no API token `{0}` (centralctl api-token list shows them)")]
    Unknown(String),
    #[error("the API token `{0}` is revoked already")]
    AlreadyRevoked(String),
    #[error(
        "`{0}` is the last admin token: make another admin token first, or nobody can manage API tokens any more"
    )]
    LastAdmin(String),
}

/// What a token decision reads.
async fn token_decision(
    conn: &mut AnyConnection,
    hash: &str,
    key_fingerprint: &str,
    now_ms: i64,
) -> Result<std::result::Result<TokenGrant, TokenRefusal>> {
    let row = sqlx::query(
        "SELECT t.store_id, t.region, t.expires_ms, t.used_ms, t.used_key, t.revoked_ms, \
         COALESCE(s.enrolled_token, '') AS enrolled_token \
         FROM enroll_tokens t LEFT JOIN stores s ON s.id = t.store_id WHERE t.hash = $1",
    )
    .bind(hash)
    .fetch_optional(&mut *conn)
    .await
    .map_err(q("reading an enrollment token"))?;
    let Some(row) = row else { return Ok(Err(TokenRefusal::Unknown)) };
    let int = |c: &str| row.try_get::<i64, _>(c).map_err(q("reading an enrollment token"));
    let text = |c: &str| row.try_get::<String, _>(c).map_err(q("reading an enrollment token"));
    let (expires, used, revoked) = (int("expires_ms")?, int("used_ms")?, int("revoked_ms")?);
    let grant =
        TokenGrant { store_id: text("store_id")?, region: text("region")?, retry: used != 0 };
    if revoked != 0 {
        return Ok(Err(TokenRefusal::Revoked(revoked)));
    }
    if used != 0 {
        // The same key again, and its enrollment is still the store's: the reply was lost.
        // Nothing new is granted: that key could have had this certificate already.
        let same_key = !key_fingerprint.is_empty() && text("used_key")? == key_fingerprint;
        if same_key && text("enrolled_token")? == hash {
            return Ok(Ok(grant));
        }
        return Ok(Err(TokenRefusal::Used(used)));
    }
    if expires <= now_ms {
        return Ok(Err(TokenRefusal::Expired(expires)));
    }
    Ok(Ok(grant))
}

async fn revoke_serial(
    conn: &mut AnyConnection,
    serial: &str,
    store_id: &str,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO revoked_certs (serial, store_id, revoked_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (serial) DO NOTHING",
    )
    .bind(serial)
    .bind(store_id)
    .bind(now_ms)
    .execute(&mut *conn)
    .await
    .map_err(q("revoking a certificate"))?;
    Ok(())
}

/// An id to show for a token: the start of its hash (which says nothing of the secret).
pub fn token_id(hash: &str) -> String {
    hash.chars().take(12).collect()
}

impl Db {
    // ---- certificates -------------------------------------------------------------------

    /// Whether `serial` is a certificate `store_id` may use now; a renewal's certificate used
    /// for the first time becomes the current one (and the one before is revoked).
    pub async fn use_certificate(
        &self,
        store_id: &str,
        serial: &str,
        now_ms: i64,
    ) -> Result<CertUse> {
        if serial.is_empty() {
            return Ok(CertUse::NotCurrent);
        }
        let row = sqlx::query("SELECT cert_serial, next_cert_serial FROM stores WHERE id = $1")
            .bind(store_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("checking a certificate"))?;
        let Some(row) = row else { return Ok(CertUse::NotCurrent) };
        let current: String = row.try_get("cert_serial").map_err(q("checking a certificate"))?;
        let next: String = row.try_get("next_cert_serial").map_err(q("checking a certificate"))?;
        if current == serial {
            return Ok(CertUse::Current);
        }
        if next != serial {
            return Ok(CertUse::NotCurrent);
        }
        let mut tx = self.pool.begin().await.map_err(q("using a renewed certificate"))?;
        let done = sqlx::query(
            "UPDATE stores SET cert_serial = next_cert_serial, cert_not_after = next_cert_not_after, \
             next_cert_serial = '', next_cert_not_after = 0 WHERE id = $1 AND next_cert_serial = $2",
        )
        .bind(store_id)
        .bind(serial)
        .execute(&mut *tx)
        .await
        .map_err(q("using a renewed certificate"))?;
        if done.rows_affected() != 1 {
            // Another call promoted it (or a revocation came) in between: ask again.
            drop(tx);
            return Box::pin(self.use_certificate(store_id, serial, now_ms)).await;
        }
        if !current.is_empty() {
            revoke_serial(&mut tx, &current, store_id, now_ms).await?;
        }
        tx.commit().await.map_err(q("using a renewed certificate"))?;
        Ok(CertUse::Promoted { replaced: current })
    }

    /// Every store's current and renewed certificate serials: what a session may be on.
    pub async fn certificate_serials(
        &self,
    ) -> Result<std::collections::HashMap<String, (String, String)>> {
        let rows = sqlx::query("SELECT id, cert_serial, next_cert_serial FROM stores")
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading certificates"))?;
        rows.iter()
            .map(|r| {
                Ok((r.try_get("id")?, (r.try_get("cert_serial")?, r.try_get("next_cert_serial")?)))
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(q("reading certificates"))
    }

    /// Records a renewal's certificate beside the current one: it becomes current when the
    /// node first uses it, so a reply lost on the way costs nothing. Returns the certificate
    /// of an earlier renewal that was never used (revoked now), if any.
    pub async fn record_renewal(
        &self,
        store_id: &str,
        serial: &str,
        not_after_ms: i64,
        now_ms: i64,
    ) -> Result<Option<String>> {
        let mut tx = self.pool.begin().await.map_err(q("recording a renewal"))?;
        let old: String = sqlx::query("SELECT next_cert_serial FROM stores WHERE id = $1")
            .bind(store_id)
            .fetch_one(&mut *tx)
            .await
            .and_then(|r| r.try_get("next_cert_serial"))
            .map_err(q("recording a renewal"))?;
        if !old.is_empty() && old != serial {
            revoke_serial(&mut tx, &old, store_id, now_ms).await?;
        }
        sqlx::query(
            "UPDATE stores SET next_cert_serial = $2, next_cert_not_after = $3 WHERE id = $1",
        )
        .bind(store_id)
        .bind(serial)
        .bind(not_after_ms)
        .execute(&mut *tx)
        .await
        .map_err(q("recording a renewal"))?;
        tx.commit().await.map_err(q("recording a renewal"))?;
        Ok((!old.is_empty() && old != serial).then_some(old))
    }

    /// Revokes every certificate of `store_id` (the current one and a renewal's): the node is
    /// refused until it enrolls again with a new token. `None` if central knows no such store;
    /// the serials revoked otherwise (none if it had no certificate).
    pub async fn revoke_store(&self, store_id: &str, now_ms: i64) -> Result<Option<Vec<String>>> {
        let mut tx = self.pool.begin().await.map_err(q("revoking a store"))?;
        let row = sqlx::query("SELECT cert_serial, next_cert_serial FROM stores WHERE id = $1")
            .bind(store_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("revoking a store"))?;
        let Some(row) = row else { return Ok(None) };
        let mut revoked = Vec::new();
        for col in ["cert_serial", "next_cert_serial"] {
            let s: String = row.try_get(col).map_err(q("revoking a store"))?;
            if !s.is_empty() {
                revoke_serial(&mut tx, &s, store_id, now_ms).await?;
                revoked.push(s);
            }
        }
        sqlx::query(
            "UPDATE stores SET cert_serial = '', next_cert_serial = '', next_cert_not_after = 0, \
             enrolled_token = '' WHERE id = $1",
        )
        .bind(store_id)
        .execute(&mut *tx)
        .await
        .map_err(q("revoking a store"))?;
        tx.commit().await.map_err(q("revoking a store"))?;
        Ok(Some(revoked))
    }

    // ---- enrollment ---------------------------------------------------------------------

    /// Whether a token would enroll the key `key_fingerprint` now (nothing is changed).
    pub async fn check_enroll_token(
        &self,
        hash: &str,
        key_fingerprint: &str,
        now_ms: i64,
    ) -> Result<std::result::Result<TokenGrant, TokenRefusal>> {
        let mut conn = self.pool.acquire().await.map_err(q("reading an enrollment token"))?;
        token_decision(&mut conn, hash, key_fingerprint, now_ms).await
    }

    /// Uses the token and records the store's new certificate in one transaction, revoking
    /// the certificates it had. Nothing is recorded when the token is refused. Returns what
    /// was granted and the serials revoked.
    pub async fn enroll_store(
        &self,
        e: &Enrollment<'_>,
    ) -> Result<std::result::Result<(TokenGrant, Vec<String>), TokenRefusal>> {
        let mut tx = self.pool.begin().await.map_err(q("recording an enrollment"))?;
        let grant = match token_decision(&mut tx, e.token_hash, e.key_fingerprint, e.now_ms).await?
        {
            Ok(g) => g,
            Err(refusal) => return Ok(Err(refusal)),
        };
        // Conditional, so two enrollments racing with one token cannot both win (unless they
        // are the same key retrying, which is harmless).
        let used = sqlx::query(
            "UPDATE enroll_tokens SET used_ms = CASE WHEN used_ms = 0 THEN $2 ELSE used_ms END, \
             used_key = $3 WHERE hash = $1 AND revoked_ms = 0 AND (used_ms = 0 OR used_key = $3)",
        )
        .bind(e.token_hash)
        .bind(e.now_ms)
        .bind(e.key_fingerprint)
        .execute(&mut *tx)
        .await
        .map_err(q("using an enrollment token"))?;
        if used.rows_affected() != 1 {
            return Ok(Err(TokenRefusal::Used(e.now_ms)));
        }
        let store = grant.store_id.as_str();
        sqlx::query(
            "INSERT INTO stores (id, created_ms) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(store)
        .bind(e.now_ms)
        .execute(&mut *tx)
        .await
        .map_err(q("recording a store"))?;
        let row = sqlx::query("SELECT cert_serial, next_cert_serial FROM stores WHERE id = $1")
            .bind(store)
            .fetch_one(&mut *tx)
            .await
            .map_err(q("reading a store's certificate"))?;
        let mut revoked = Vec::new();
        for col in ["cert_serial", "next_cert_serial"] {
            let s: String = row.try_get(col).map_err(q("reading a store's certificate"))?;
            if !s.is_empty() && s != e.serial {
                revoke_serial(&mut tx, &s, store, e.now_ms).await?;
                revoked.push(s);
            }
        }
        sqlx::query(
            "UPDATE stores SET cert_serial = $2, cert_not_after = $3, next_cert_serial = '', \
             next_cert_not_after = 0, enrolled_ms = $4, enrolled_token = $5, \
             console_secret = $6 WHERE id = $1",
        )
        .bind(store)
        .bind(e.serial)
        .bind(e.not_after_ms)
        .bind(e.now_ms)
        .bind(e.token_hash)
        .bind(e.console_secret_hex)
        .execute(&mut *tx)
        .await
        .map_err(q("recording an enrollment"))?;
        if !grant.region.is_empty() {
            sqlx::query("UPDATE stores SET region = $2 WHERE id = $1")
                .bind(store)
                .bind(&grant.region)
                .execute(&mut *tx)
                .await
                .map_err(q("recording a store's region"))?;
        }
        tx.commit().await.map_err(q("recording an enrollment"))?;
        Ok(Ok((grant, revoked)))
    }

    /// Enrollment tokens, newest first (of one store, or all; at most 1000).
    pub async fn list_enroll_tokens(&self, store_id: Option<&str>) -> Result<Vec<EnrollTokenRow>> {
        let sql = format!(
            "SELECT {ENROLL_TOKEN_COLUMNS} FROM enroll_tokens {} ORDER BY created_ms DESC LIMIT 1000",
            if store_id.is_some() { "WHERE store_id = $1" } else { "" }
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        if let Some(s) = store_id {
            query = query.bind(s);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(q("listing enrollment tokens"))?;
        rows.iter()
            .map(EnrollTokenRow::from_row)
            .collect::<std::result::Result<_, _>>()
            .map_err(q("reading enrollment tokens"))
    }

    /// Revokes the enrollment token `id`, or every token of `store_id` not revoked yet.
    /// Returns the tokens revoked (as they are now).
    pub async fn revoke_enroll_tokens(
        &self,
        id: Option<&str>,
        store_id: Option<&str>,
        now_ms: i64,
    ) -> Result<Vec<EnrollTokenRow>> {
        let (filter, value) = match (id, store_id) {
            (Some(id), _) => ("id = $2", id),
            (None, Some(store)) => ("store_id = $2", store),
            (None, None) => return Ok(Vec::new()),
        };
        let mut tx = self.pool.begin().await.map_err(q("revoking enrollment tokens"))?;
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE enroll_tokens SET revoked_ms = $1 WHERE revoked_ms = 0 AND {filter}"
        )))
        .bind(now_ms)
        .bind(value)
        .execute(&mut *tx)
        .await
        .map_err(q("revoking enrollment tokens"))?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ENROLL_TOKEN_COLUMNS} FROM enroll_tokens WHERE revoked_ms = $1 AND {filter}"
        )))
        .bind(now_ms)
        .bind(value)
        .fetch_all(&mut *tx)
        .await
        .map_err(q("revoking enrollment tokens"))?;
        tx.commit().await.map_err(q("revoking enrollment tokens"))?;
        rows.iter()
            .map(EnrollTokenRow::from_row)
            .collect::<std::result::Result<_, _>>()
            .map_err(q("reading enrollment tokens"))
    }

    // ---- API tokens ---------------------------------------------------------------------

    pub async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRow>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {API_TOKEN_COLUMNS} FROM api_tokens ORDER BY created_ms"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing API tokens"))?;
        rows.iter()
            .map(ApiTokenRow::from_row)
            .collect::<std::result::Result<_, _>>()
            .map_err(q("reading API tokens"))
    }

    /// Revokes the API token `id`; never the last admin token that works.
    pub async fn revoke_api_token(
        &self,
        id: &str,
        now_ms: i64,
    ) -> Result<std::result::Result<ApiTokenRow, ApiTokenRefusal>> {
        let mut tx = self.pool.begin().await.map_err(q("revoking an API token"))?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {API_TOKEN_COLUMNS} FROM api_tokens WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(q("revoking an API token"))?;
        let Some(row) = row else { return Ok(Err(ApiTokenRefusal::Unknown(id.to_string()))) };
        let mut token = ApiTokenRow::from_row(&row).map_err(q("reading an API token"))?;
        if token.revoked_ms != 0 {
            return Ok(Err(ApiTokenRefusal::AlreadyRevoked(id.to_string())));
        }
        if token.role == "admin" {
            let others: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM api_tokens WHERE role = 'admin' AND revoked_ms = 0 AND id <> $1",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .and_then(|r| r.try_get("n"))
            .map_err(q("counting admin tokens"))?;
            if others == 0 {
                return Ok(Err(ApiTokenRefusal::LastAdmin(id.to_string())));
            }
        }
        sqlx::query("UPDATE api_tokens SET revoked_ms = $2 WHERE id = $1 AND revoked_ms = 0")
            .bind(id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(q("revoking an API token"))?;
        tx.commit().await.map_err(q("revoking an API token"))?;
        token.revoked_ms = now_ms;
        Ok(Ok(token))
    }

    // ---- commands -----------------------------------------------------------------------

    /// Stores a command unless its store already has `cap` commands waiting (queued, or sent
    /// and not answered yet). False when it is full.
    pub async fn insert_command_capped(
        &self,
        c: &CommandRow,
        by: &str,
        cap: u32,
        now_ms: i64,
        audit: &AuditEntry,
    ) -> Result<bool> {
        self.expire_commands(now_ms).await?;
        let mut tx = self.pool.begin().await.map_err(q("storing a command"))?;
        let waiting: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM commands WHERE store_id = $1 AND state IN ('queued', 'sent')",
        )
        .bind(&c.store_id)
        .fetch_one(&mut *tx)
        .await
        .and_then(|r| r.try_get("n"))
        .map_err(q("counting a store's commands"))?;
        if waiting >= i64::from(cap) {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO commands (id, store_id, kind, workload, state, result, created_ms, expires_ms, finished_ms, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&c.id)
        .bind(&c.store_id)
        .bind(&c.kind)
        .bind(&c.workload)
        .bind(&c.state)
        .bind(&c.result)
        .bind(c.created_ms)
        .bind(c.expires_ms)
        .bind(c.finished_ms)
        .bind(by)
        .execute(&mut *tx)
        .await
        .map_err(q("storing a command"))?;
        super::audit::write(&mut tx, std::slice::from_ref(audit), now_ms).await?;
        tx.commit().await.map_err(q("storing a command"))?;
        Ok(true)
    }

    /// The node `store_id` has the command `id`: it is sent. False if it is not that store's
    /// queued command.
    pub async fn ack_command(&self, id: &str, store_id: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE commands SET state = 'sent' WHERE id = $1 AND store_id = $2 AND state = 'queued'",
        )
        .bind(id)
        .bind(store_id)
        .execute(&self.pool)
        .await
        .map_err(q("recording a command's delivery"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Records the result the node `store_id` sent for the command `id`. False if `id` is not
    /// a command of that store waiting for its result: a store cannot answer for another.
    pub async fn finish_command(
        &self,
        id: &str,
        store_id: &str,
        ok: bool,
        result: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE commands SET state = $3, result = $4, finished_ms = $5 \
             WHERE id = $1 AND store_id = $2 AND state IN ('queued', 'sent')",
        )
        .bind(id)
        .bind(store_id)
        .bind(if ok { "done" } else { "failed" })
        .bind(result)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(q("recording a command's result"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Commands sent (acknowledged) but never answered go back to the queue, or expire if
    /// their time is over: those of `scope` (a store and the ids its ended session had), or
    /// every one (`None`, at start-up, when no session exists). Returns how many are queued
    /// again.
    pub async fn requeue_unfinished_commands(
        &self,
        scope: Option<(&str, &[String])>,
        now_ms: i64,
    ) -> Result<u64> {
        let mut tx = self.pool.begin().await.map_err(q("queueing commands again"))?;
        let expire = "UPDATE commands SET state = 'expired', \
             result = 'the store went offline before the command finished, and it expired', \
             finished_ms = $1 WHERE state = 'sent' AND expires_ms <= $1";
        let requeue = "UPDATE commands SET state = 'queued' WHERE state = 'sent'";
        let mut requeued = 0;
        match scope {
            None => {
                sqlx::query(expire)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("expiring commands"))?;
                requeued += sqlx::query(requeue)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("queueing commands again"))?
                    .rows_affected();
            }
            Some((store, ids)) => {
                for id in ids {
                    sqlx::query(AssertSqlSafe(format!("{expire} AND store_id = $2 AND id = $3")))
                        .bind(now_ms)
                        .bind(store)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(q("expiring commands"))?;
                    requeued += sqlx::query(AssertSqlSafe(format!(
                        "{requeue} AND store_id = $1 AND id = $2"
                    )))
                    .bind(store)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("queueing commands again"))?
                    .rows_affected();
                }
            }
        }
        tx.commit().await.map_err(q("queueing commands again"))?;
        Ok(requeued)
    }
}
