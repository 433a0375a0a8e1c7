//! `nodectl`: the node's local command line, talking to nodeagent's socket.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use backroom_api::nodeagent as pb;
use backroom_api::nodeagent::node_agent_client::NodeAgentClient;
use backroom_daemon::Clock;
use backroom_daemon::condition::for_how_long;
use backroom_daemon::logging::LogArgs;
use backroom_nodeagent::problems::{FAILING, RECOVERED};
use clap::{Parser, Subcommand};
use serde_json::json;
use tokio_stream::StreamExt;

/// The store server's local control: what runs, its logs, restart, switch the profile, import
/// images from a file. Talks to nodeagent on this machine.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// nodeagent's socket.
    #[arg(long, global = true, default_value = "/run/backroom/nodeagent.sock")]
    socket: PathBuf,
    /// Print JSON for scripts instead of text for people.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The profile revision, what is failing now (and since when), each workload with its
    /// state, health, since when, restarts and address, and the latest problems and actions.
    Status,
    /// A workload's log (stdout and stderr, timestamped).
    Logs {
        name: String,
        /// Keep printing what it writes (Ctrl-C to stop).
        #[arg(long, short)]
        follow: bool,
        /// How much of the end of the log to print first, in bytes.
        #[arg(long, default_value_t = 65536)]
        tail: u64,
    },
    /// Restart a workload (a container is stopped and started again; a VM through vmd).
    Restart { name: String },
    /// Switch this node to the profile in FILE (its layers are read too). A profile that is
    /// invalid or does not fit the node is refused and nothing changes.
    Apply { file: PathBuf },
    /// Container images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Follow what happens on the node (Ctrl-C to stop).
    Events,
    /// The recovery console: a full screen for the person at the store while HQ is on the
    /// phone. The board shows what is wrong; actions (restart an app, roll back, the uplink
    /// override, a support bundle on a USB stick…) need a code HQ reads out
    /// (`centralctl store console-code`). Works with no WAN, and with nodeagent down.
    #[command(after_long_help = backroom_console::HELP)]
    Console(backroom_console::Args),
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Import the images of an OCI archive (a tar with index.json), e.g. from a USB stick.
    Import { file: PathBuf },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    args.log.init("warn");
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nodectl: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nodectl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn fail(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

async fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    if let Command::Console(c) = args.command {
        backroom_console::main(c, args.socket).await?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let channel = backroom_daemon::socket::connect(&args.socket)
        .await
        .context("is nodeagent running? (see `systemctl status nodeagent`)")?;
    let mut client = NodeAgentClient::new(channel);
    let ok = std::process::ExitCode::SUCCESS;
    match args.command {
        Command::Status => {
            let s = client
                .status(pb::StatusRequest {})
                .await
                .map_err(|s| {
                    anyhow::anyhow!(
                        "nodeagent at {} does not answer: {}",
                        args.socket.display(),
                        s.message()
                    )
                })?
                .into_inner();
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status_json(&s))?);
            } else {
                print!("{}", status_text(&s, backroom_daemon::SystemClock.now_ms()));
            }
        }
        Command::Logs { name, follow, tail } => {
            let mut stream = client
                .logs(pb::LogsRequest { name, follow, tail_bytes: tail })
                .await
                .map_err(fail)?
                .into_inner();
            let mut out = std::io::stdout();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(fail)?;
                out.write_all(&chunk.data)?;
                out.flush()?;
            }
        }
        Command::Restart { name } => {
            let r = client.restart(pb::RestartRequest { name }).await.map_err(fail)?.into_inner();
            if args.json {
                println!("{}", json!({ "message": r.message }));
            } else {
                println!("{}", r.message);
            }
        }
        Command::Apply { file } => {
            let rendered = match backroom_profiles::render_file(&file) {
                Ok(r) => r,
                Err(invalid) => {
                    for d in &invalid.diagnostics {
                        eprintln!("{d}");
                    }
                    bail!("{} is refused: nothing changed on the node", file.display());
                }
            };
            for w in &rendered.warnings {
                eprintln!("{w}");
            }
            let r = client
                .apply(pb::ApplyRequest {
                    profile_yaml: rendered.to_yaml(),
                    source: file.display().to_string(),
                })
                .await
                .map_err(fail)?
                .into_inner();
            if args.json {
                println!("{}", json!({ "revision": r.revision, "changed": r.changed }));
            } else if r.changed {
                println!(
                    "revision {} is now desired; `nodectl status` shows the progress",
                    short(&r.revision)
                );
            } else {
                println!("revision {} was already desired: nothing to do", short(&r.revision));
            }
        }
        Command::Image { command: ImageCommand::Import { file } } => {
            let path = std::fs::canonicalize(&file)
                .with_context(|| format!("cannot find {}", file.display()))?;
            let r = client
                .import_image(pb::ImportImageRequest { path: path.display().to_string() })
                .await
                .map_err(fail)?
                .into_inner();
            if args.json {
                let items: Vec<_> = r
                    .images
                    .iter()
                    .zip(&r.digests)
                    .map(|(n, d)| json!({ "image": n, "digest": d }))
                    .collect();
                println!("{}", serde_json::Value::Array(items));
            } else {
                for (n, d) in r.images.iter().zip(&r.digests) {
                    println!("imported {n} ({d})");
                }
            }
        }
        Command::Events => {
            let mut stream = client.events(pb::EventsRequest {}).await.map_err(fail)?.into_inner();
            while let Some(e) = stream.next().await {
                let e = e.map_err(fail)?;
                if args.json {
                    println!(
                        "{}",
                        json!({ "at_unix_ms": e.at_unix_ms, "workload": e.workload, "kind": e.kind, "subject": e.subject, "message": e.message })
                    );
                } else {
                    let w = if e.workload.is_empty() { "node" } else { &e.workload };
                    println!("{} {w} {}: {}", clock(e.at_unix_ms / 1000), e.kind, e.message);
                }
            }
        }
        // Handled before connecting (it works with nodeagent down).
        Command::Console(_) => {}
    }
    Ok(ok)
}

fn short(rev: &str) -> &str {
    rev.get(..12).unwrap_or(if rev.is_empty() { "-" } else { rev })
}

fn clock(unix: i64) -> String {
    let s = unix.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
}

fn ago(since: i64, now: i64) -> String {
    if since <= 0 {
        return "-".into();
    }
    let d = (now - since).max(0);
    match d {
        0..=59 => format!("{d}s ago"),
        60..=3599 => format!("{}m ago", d / 60),
        3600..=86_399 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86_400),
    }
}

fn status_json(s: &pb::StatusReply) -> serde_json::Value {
    json!({
        "desired_revision": s.desired_revision,
        "applied_revision": s.applied_revision,
        "last_known_good": s.last_known_good,
        "profile_name": s.profile_name,
        "profile_version": s.profile_version,
        "source": s.source,
        "network": s.network,
        "vms": s.vms,
        "containers": s.containers,
        "central": s.central,
        "problems": s.problems.iter().map(|p| json!({
            "subject": p.subject, "message": p.message, "since_unix_ms": p.since_unix_ms,
            "failures": p.failures, "source": p.source,
        })).collect::<Vec<_>>(),
        "workloads": s.workloads.iter().map(|w| json!({
            "name": w.name, "kind": w.kind, "state": w.state, "health": w.health,
            "reason": w.reason, "since_unix": w.since_unix, "restarts": w.restarts,
            "addresses": w.addresses, "image": w.image, "image_digest": w.image_digest,
            "container_id": w.container_id, "revision": w.revision, "health_reason": w.health_reason,
        })).collect::<Vec<_>>(),
        "actions": s.actions.iter().map(|a| json!({
            "at_unix_ms": a.at_unix_ms, "workload": a.workload, "action": a.action,
            "ok": a.ok, "message": a.message,
        })).collect::<Vec<_>>(),
    })
}

/// The problems open now, in words a store manager can read aloud: what fails, since when,
/// who noticed, and why.
fn problems_text(s: &pb::StatusReply, now_ms: i64) -> String {
    if s.problems.is_empty() {
        return "problems: none\n".to_string();
    }
    let mut o = format!("problems ({}):\n", s.problems.len());
    for p in &s.problems {
        let tries = if p.failures > 1 { format!(", {} tries", p.failures) } else { String::new() };
        o.push_str(&format!(
            "  {} is failing since {} UTC ({} ago; seen by {}{tries}): {}\n",
            p.subject,
            clock(p.since_unix_ms.div_euclid(1000)),
            for_how_long(now_ms.saturating_sub(p.since_unix_ms)),
            p.source,
            p.message
        ));
    }
    o
}

fn is_problem_notice(a: &pb::ActionResult) -> bool {
    a.action.starts_with(FAILING) || a.action.starts_with(RECOVERED)
}

fn status_text(s: &pb::StatusReply, now_ms: i64) -> String {
    let now = now_ms.div_euclid(1000);
    let mut o = String::new();
    if s.desired_revision.is_empty() {
        o.push_str("no profile yet\n");
    } else {
        o.push_str(&format!(
            "profile {} {}  revision {}  (from {})\n",
            s.profile_name,
            s.profile_version,
            short(&s.desired_revision),
            s.source
        ));
        o.push_str(&format!(
            "applied {}  last known good {}\n",
            short(&s.applied_revision),
            short(&s.last_known_good)
        ));
    }
    o.push_str(&format!("network: {}\n", s.network));
    if !s.vms.is_empty() {
        o.push_str(&format!("VMs: {}\n", s.vms));
    }
    if !s.containers.is_empty() {
        o.push_str(&format!("containers: {}\n", s.containers));
    }
    if !s.central.is_empty() {
        o.push_str(&format!("central: {}\n", s.central));
    }
    o.push_str(&problems_text(s, now_ms));
    o.push('\n');
    let rows: Vec<[String; 8]> = s
        .workloads
        .iter()
        .map(|w| {
            [
                w.name.clone(),
                w.kind.clone(),
                w.state.clone(),
                w.health.clone(),
                ago(w.since_unix, now),
                w.restarts.to_string(),
                if w.addresses.is_empty() { "-".into() } else { w.addresses.join(",") },
                if w.image.is_empty() { "-".into() } else { w.image.clone() },
            ]
        })
        .collect();
    let head = ["NAME", "KIND", "STATE", "HEALTH", "SINCE", "RESTARTS", "ADDRESS", "IMAGE"];
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    o.push_str(&line(head.to_vec()));
    for (r, w) in rows.iter().zip(&s.workloads) {
        o.push_str(&line(r.iter().map(String::as_str).collect()));
        if !w.reason.is_empty() {
            o.push_str(&format!("    {}\n", w.reason));
        }
    }
    let notices: Vec<&pb::ActionResult> =
        s.actions.iter().filter(|a| is_problem_notice(a)).take(10).collect();
    if !notices.is_empty() {
        o.push_str("\nrecent problems:\n");
        for a in notices {
            let kind = if a.ok { "recovered" } else { "failing  " };
            o.push_str(&format!("  {} {kind} {}\n", clock(a.at_unix_ms / 1000), a.message));
        }
    }
    let actions: Vec<&pb::ActionResult> =
        s.actions.iter().filter(|a| !is_problem_notice(a)).take(10).collect();
    if !actions.is_empty() {
        o.push_str("\nrecent actions:\n");
        for a in actions {
            let w = if a.workload.is_empty() { "node" } else { &a.workload };
            let msg = if a.message.is_empty() { String::new() } else { format!(": {}", a.message) };
            o.push_str(&format!(
                "  {} {} {w}  {}{msg}\n",
                clock(a.at_unix_ms / 1000),
                if a.ok { "ok  " } else { "FAIL" },
                a.action
            ));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_read_aloud_worst_first_with_since_when_and_recent_notices() {
        let now = 1_795_651_200_000 + 9 * 3600 * 1000 + 45 * 60 * 1000;
        let since = now - (3 * 60 + 5) * 1000;
        let s = pb::StatusReply {
            network: "applied (revision 86a3bc5de5ad)".into(),
            problems: vec![backroom_api::common::Problem {
                subject: "uplink eno1".into(),
                message: "the link eno1 does not exist".into(),
                since_unix_ms: since,
                failures: 12,
                source: "netd".into(),
            }],
            actions: vec![
                pb::ActionResult {
                    at_unix_ms: since,
                    workload: String::new(),
                    action: format!("{FAILING}uplink eno1"),
                    ok: false,
                    message: "uplink eno1: the link eno1 does not exist".into(),
                },
                pb::ActionResult {
                    at_unix_ms: since - 1000,
                    workload: "orders".into(),
                    action: "start orders (r/orders:1)".into(),
                    ok: true,
                    message: "container orders.1 started".into(),
                },
            ],
            ..Default::default()
        };
        let text = status_text(&s, now);
        assert!(
            text.contains(
                "problems (1):\n  uplink eno1 is failing since 09:41:55 UTC (3m 5s ago; seen by netd, 12 tries): the link eno1 does not exist\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "recent problems:\n  09:41:55 failing   uplink eno1: the link eno1 does not exist\n"
            ),
            "{text}"
        );
        let actions = &text[text.find("recent actions:").unwrap()..];
        assert!(actions.contains("start orders") && !actions.contains("uplink"), "{text}");
        let calm = status_text(&pb::StatusReply::default(), now);
        assert!(calm.contains("problems: none\n"), "{calm}");
    }
}
