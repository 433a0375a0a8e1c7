//! Console codes from central (issue 12): `centralctl store console-code` asks for one, central
//! makes it with the store's console secret (see `backroom_session::console_code` for the
//! format), writes who asked for which store, role and expiry to the audit trail (never the
//! code), and only then hands it out. The node checks the code with its own copy of the secret.

use std::time::Duration;

use backroom_session::console_code::{self, Code, CodeError, Role, Secret};

use crate::app::App;
use crate::db::{AuditEntry, DbError};

/// The time to live when the request names none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum ConsoleCodeError {
    #[error("central knows no store `{0}`")]
    UnknownStore(String),
    #[error("store {0} has not enrolled yet: it gets its console secret when it enrolls")]
    NotEnrolled(String),
    #[error(
        "store {0} enrolled before console codes; it gets a secret at its next connection \
         (then ask again)"
    )]
    NoSecret(String),
    #[error("the console secret central keeps for store {0} is unusable")]
    BadSecret(String),
    #[error(transparent)]
    Code(#[from] CodeError),
    #[error("cannot read the store or write the audit trail")]
    Db(#[from] DbError),
}

/// A code for `store_id` and `role`, good for `ttl` from now, audited as asked by `who`.
pub async fn issue(
    app: &App,
    who: &str,
    store_id: &str,
    role: Role,
    ttl: Duration,
) -> Result<Code, ConsoleCodeError> {
    let Some(row) = app.db.get_store(store_id).await? else {
        return Err(ConsoleCodeError::UnknownStore(store_id.to_string()));
    };
    let Some(hex_secret) = app.db.console_secret(store_id).await? else {
        return Err(if row.enrolled_ms == 0 {
            ConsoleCodeError::NotEnrolled(store_id.to_string())
        } else {
            ConsoleCodeError::NoSecret(store_id.to_string())
        });
    };
    let secret = hex::decode(&hex_secret)
        .ok()
        .and_then(|b| Secret::from_bytes(&b).ok())
        .ok_or_else(|| ConsoleCodeError::BadSecret(store_id.to_string()))?;
    let now = app.now_ms();
    let code = console_code::issue(&secret, store_id, role, now, ttl)?;
    let detail = format!(
        "{role} console code for {store_id}, valid until {} ({})",
        backroom_daemon::clock::rfc3339(code.expires_ms),
        human(ttl)
    );
    // Written before the code is shown: a code whose record cannot be written is not given.
    app.db.write_audit(&AuditEntry::new(who, "console-code", store_id, detail), now).await?;
    tracing::info!(store = %store_id, %role, by = %who, "console code issued");
    Ok(code)
}

/// `1h`, `30m`, `2d`, `1h30m`: a time to live as an operator wrote it.
pub fn human(ttl: Duration) -> String {
    let mut m = ttl.as_secs() / 60;
    let mut out = String::new();
    for (unit, size) in [("d", 24 * 60), ("h", 60), ("m", 1)] {
        if m >= size {
            out.push_str(&format!("{}{unit}", m / size));
            m %= size;
        }
    }
    if out.is_empty() { format!("{}s", ttl.as_secs()) } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_read_as_written() {
        assert_eq!(human(Duration::from_secs(3600)), "1h");
        assert_eq!(human(Duration::from_secs(5400)), "1h30m");
        assert_eq!(human(Duration::from_secs(7 * 86400)), "7d");
        assert_eq!(human(Duration::from_secs(600)), "10m");
    }
}
