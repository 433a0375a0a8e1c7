//! Stopping on SIGTERM (systemd) or SIGINT (Ctrl-C at a terminal).

/// Completes on the first SIGTERM or SIGINT and says which. When the handlers cannot be
/// installed it never completes (the process then stops only by SIGKILL), and says so.
pub async fn shutdown() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (term, int) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    let (Ok(mut term), Ok(mut int)) = (term, int) else {
        tracing::error!("cannot handle SIGTERM/SIGINT: the daemon will only stop when killed");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
