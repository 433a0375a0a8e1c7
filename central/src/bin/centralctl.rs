//! centralctl: the operator's command line for Backroom's central plane.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use backroom_api::operator::{
    AlertGroup, CreateApiTokenRequest, CreateConsoleCodeRequest, CreateEnrollTokenRequest,
    FleetPushRequest, FleetStatusRequest, GetCommandRequest, GetStoreRequest, ListAlertsReply,
    ListAlertsRequest, ListApiTokensRequest, ListAuditRequest, ListEnrollTokensRequest,
    ListStoresRequest, RevokeApiTokenRequest, RevokeEnrollTokenRequest, RevokeStoreRequest,
    SendCommandRequest, StoreProfile, StoreSummary,
};
use backroom_central::{client, ctl_report, profile_report};
use backroom_daemon::logging::LogArgs;
use backroom_daemon::text::short;
use backroom_profiles::{Diagnostic, Invalid, Rendered, Severity, render_file, render_fleet};
use backroom_session::provision;
use backroom_session::token::EnrollToken;
use clap::{Args, Parser, Subcommand};

/// Backroom's operator CLI.
///
/// `profile` commands work on files and need no server. Every other command talks to central's
/// operator API: give --server, --token (or --token-file) and --ca, or set BACKROOM_SERVER,
/// BACKROOM_TOKEN (or BACKROOM_TOKEN_FILE) and BACKROOM_CA, or write them as `key = value`
/// lines (server, token, token_file, ca) in ~/.config/backroom/centralctl.conf.
#[derive(Parser)]
#[command(name = "centralctl", version, about)]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone, Default)]
struct Conn {
    /// central's operator API, e.g. https://central.example:7444.
    #[arg(long, global = true, env = "BACKROOM_SERVER")]
    server: Option<String>,
    /// An API token.
    #[arg(long, global = true, env = "BACKROOM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the API token (e.g. central's DATA/admin.token).
    #[arg(long, global = true, env = "BACKROOM_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// central's CA certificate (central's DATA/ca.crt).
    #[arg(long, global = true, env = "BACKROOM_CA")]
    ca: Option<PathBuf>,
    /// Print JSON instead of tables (where it applies).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Work with store profiles and fleet folders (no server needed).
    #[command(subcommand)]
    Profile(ProfileCommand),
    #[command(flatten)]
    Remote(Remote),
}

/// Commands that talk to central.
#[derive(Subcommand)]
enum Remote {
    /// Push a fleet folder to central, or see what a push would change.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Enrollment tokens for new (or replacement) store servers.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Look at stores and send them commands.
    #[command(subcommand)]
    Store(StoreCommand),
    /// A command's state and result.
    #[command(subcommand)]
    Command(CommandCommand),
    /// The short list of things to act on, grouped by kind with the stores they hit.
    Alerts {
        /// Include resolved alerts.
        #[arg(long)]
        all: bool,
    },
    /// API tokens for operators and tools (admin only).
    #[command(subcommand, name = "api-token")]
    ApiToken(ApiTokenCommand),
    /// Who changed what, newest first (admin only).
    Audit {
        /// Only what concerns this store.
        #[arg(long)]
        store: Option<String>,
        /// Only what this API token (by name) or node (node:STORE) did.
        #[arg(long)]
        actor: Option<String>,
        /// Only the last DURATION (e.g. 24h).
        #[arg(long)]
        since: Option<backroom_profiles::Duration>,
        /// At most this many records.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum ProfileCommand {
    /// Check profiles: files, or fleet folders (every file under stores/ with its layers).
    ///
    /// Prints every error and warning as FILE:LINE:COLUMN: SEVERITY: MESSAGE and one line per
    /// valid store. Exits 0 when all are valid, 1 when any is not.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Show a few lines per valid store (segments, workloads) instead of one.
        #[arg(long)]
        summary: bool,
        /// Only print errors.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print the rendered profile (layers merged, values substituted, canonical) and its revision.
    Render {
        file: PathBuf,
        /// Print the canonical JSON (what the revision id is the sha256 of) instead of YAML.
        #[arg(long)]
        json: bool,
    },
    /// Show what would change in a store going from OLD to NEW (both rendered first).
    ///
    /// Exits 0 whether or not they differ; 1 when either does not validate.
    Diff { old: PathBuf, new: PathBuf },
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Validate every store of a fleet folder and record a revision per store whose rendered
    /// profile changed. Nothing is recorded if any store is invalid. Online stores get the new
    /// revision at once; the others when they reconnect.
    Push { dir: PathBuf },
    /// What a push of this folder would change, store by store.
    Diff { dir: PathBuf },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a one-time enrollment token for a store (printed on stdout), and with --stick a
    /// provisioning stick image holding it.
    ///
    /// A new box is provisioned by plugging in a USB stick made from that image and powering it
    /// on: it reads provision.toml from the stick, enrolls with the token, and from then on
    /// needs the stick no more. For example, for store-0042:
    ///
    /// 1. `centralctl token create --store store-0042 --stick store-0042.img --central-url
    /// https://central.example:7443`
    ///
    /// 2. `dd if=store-0042.img of=/dev/sdX bs=1M conv=fsync` (sdX: the USB stick, see `lsblk`)
    Create {
        /// The store the token enrolls a box for (its id, e.g. store-0042).
        #[arg(long)]
        store: String,
        #[arg(long, default_value = "")]
        region: String,
        /// How long the token stays usable: the box must enroll within it.
        #[arg(long, default_value = "24h")]
        ttl: backroom_profiles::Duration,
        /// The store is enrolled and this token is for its replacement server: when used, the
        /// running server's certificate is revoked (admin only; audited).
        #[arg(long)]
        replace: bool,
        /// Also write a provisioning stick image to FILE: a FAT filesystem labelled BACKROOM
        /// (8 MiB) holding provision.toml with the --central-url URLs, the new token and the
        /// --insecure-registry registries. Copy it onto a USB stick with
        /// `dd if=FILE of=/dev/sdX bs=1M conv=fsync` (everything on the stick is replaced).
        /// It holds the token: keep it safe until the box has enrolled.
        #[arg(long, value_name = "FILE", requires = "central_urls")]
        stick: Option<PathBuf>,
        /// central's node URL as the store reaches it, e.g. https://central.example:7443 (the
        /// node port, not the operator API); repeat for several, tried in order. Required with
        /// --stick: central does not know the names stores reach it by.
        #[arg(long = "central-url", value_name = "URL", requires = "stick")]
        central_urls: Vec<String>,
        /// A registry the store reaches over plain HTTP (HOST:PORT), written onto the stick;
        /// repeat for several.
        #[arg(long = "insecure-registry", value_name = "HOST:PORT", requires = "stick")]
        insecure_registries: Vec<String>,
    },
    /// Enrollment tokens (their ids, stores and states; never the tokens themselves).
    List {
        /// Only this store's.
        #[arg(long)]
        store: Option<String>,
    },
    /// Revoke an enrollment token by its id, or every token of a store (--store): a leaked or
    /// mistaken token stops working. A node already enrolled keeps its certificate (that is
    /// `store revoke`).
    Revoke {
        #[arg(required_unless_present = "store", conflicts_with = "store")]
        id: Option<String>,
        #[arg(long)]
        store: Option<String>,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Every store: online or not, last seen, desired and applied revision, health, agent version.
    List,
    /// One store: the list line, every workload's state, recent events and commands, and what
    /// was done at its local recovery console (newest first).
    Get {
        id: String,
        /// How many recent events.
        #[arg(long, default_value_t = 20)]
        events: u32,
    },
    /// Restart a workload (queued if the store is offline).
    Restart {
        id: String,
        workload: String,
        #[command(flatten)]
        opts: CommandOpts,
    },
    /// Make the store reconcile now.
    Reconcile {
        id: String,
        #[command(flatten)]
        opts: CommandOpts,
    },
    /// Make the store go back to its last-known-good revision.
    Rollback {
        id: String,
        #[command(flatten)]
        opts: CommandOpts,
    },
    /// Revoke the store's certificate (a stolen or replaced server): its session ends now and
    /// central refuses it until it enrolls again with a new token.
    Revoke { id: String },
    /// A code for the store's recovery console, to read to the person at the store over the
    /// phone.
    ///
    /// The store's server checks the code by itself, with no connection to central: it works
    /// when the store's WAN is down. Read it out in two groups of five, e.g. "K7QMX, 2HD9P";
    /// the person types it at the console (case, dashes and spaces do not matter, and O, I or
    /// L typed for 0 or 1 are understood). The code is good until the time printed, by the
    /// store server's clock, and can be used again until then.
    ///
    /// Roles: `staff` may restart workloads; `technician` may do everything the console
    /// offers (roll back, apply again, re-enroll, override the uplink, write a support
    /// bundle). Operators may issue staff codes; technician codes need an admin token. Every
    /// code issued is in the audit trail (who, store, role, expiry; never the code), and what
    /// was done with it shows under "Local console" in `centralctl store get` once the store
    /// is back online. Five wrong codes in a row lock the console for a while.
    #[command(name = "console-code")]
    ConsoleCode {
        /// The store id, e.g. store-0042.
        id: String,
        /// What the code allows: staff or technician.
        #[arg(long, default_value = "technician")]
        role: String,
        /// How long the code stays good: 10m to 7d.
        #[arg(long, default_value = "1h")]
        ttl: backroom_profiles::Duration,
    },
}

#[derive(Args, Clone)]
struct CommandOpts {
    /// How long the command waits for an offline store before it expires.
    #[arg(long, default_value = "1h")]
    ttl: backroom_profiles::Duration,
    /// Wait this long for the result (0s: do not wait).
    #[arg(long, default_value = "30s")]
    wait: backroom_profiles::Duration,
}

#[derive(Subcommand)]
enum CommandCommand {
    Get { id: String },
}

#[derive(Subcommand)]
enum ApiTokenCommand {
    Create {
        /// Who or what uses it.
        #[arg(long)]
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: String,
    },
    /// API tokens: ids, names, roles (never the tokens themselves).
    List,
    /// Revoke an API token by its id (the last working admin token cannot be).
    Revoke { id: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init("warn");
    let result = match cli.command {
        Command::Profile(p) => profile(p),
        Command::Remote(remote) => {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(run_remote(cli.conn, remote)),
                Err(e) => Err(e.into()),
            }
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("centralctl: {}", backroom_daemon::chain(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

/// What `token create --stick` writes onto the stick is what nodeagent accepts.
fn check_stick(central_urls: &[String], insecure_registries: &[String]) -> anyhow::Result<()> {
    for u in central_urls {
        if let Err(why) = provision::check_url(u) {
            bail!("--central-url: {why}");
        }
    }
    for r in insecure_registries {
        if let Err(why) = provision::check_host_port(r) {
            bail!("--insecure-registry: {why}");
        }
    }
    Ok(())
}

/// `key = value` lines of ~/.config/backroom/centralctl.conf fill what flags and environment
/// leave out.
fn with_config_file(mut c: Conn) -> Conn {
    let Some(home) = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
    else {
        return c;
    };
    let Ok(text) = std::fs::read_to_string(home.join("backroom/centralctl.conf")) else { return c };
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else { continue };
        let v = v.trim().to_string();
        match k.trim() {
            "server" if c.server.is_none() => c.server = Some(v),
            "token" if c.token.is_none() => c.token = Some(v),
            "token_file" if c.token_file.is_none() => c.token_file = Some(v.into()),
            "ca" if c.ca.is_none() => c.ca = Some(v.into()),
            _ => {}
        }
    }
    c
}

async fn connect(conn: &Conn) -> anyhow::Result<client::Client> {
    let conn = with_config_file(conn.clone());
    let server =
        conn.server.context("no server: pass --server https://HOST:7444 or set BACKROOM_SERVER")?;
    let token = match (conn.token, conn.token_file) {
        (Some(t), _) => t,
        (None, Some(f)) => std::fs::read_to_string(&f)
            .with_context(|| format!("reading the token file {}", f.display()))?,
        (None, None) => bail!("no API token: pass --token or --token-file, or set BACKROOM_TOKEN"),
    };
    let ca_path = conn
        .ca
        .context("no CA certificate: pass --ca (central's DATA/ca.crt) or set BACKROOM_CA")?;
    let ca = std::fs::read_to_string(&ca_path)
        .with_context(|| format!("reading the CA certificate {}", ca_path.display()))?;
    Ok(client::connect(&server, &ca, &token).await?)
}

fn now_ms() -> i64 {
    backroom_session::now_ms()
}

/// A gRPC error as a sentence.
fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("central says: {}", s.message())
}

async fn run_remote(conn: Conn, command: Remote) -> anyhow::Result<ExitCode> {
    // Before central is asked: a wrong URL does not leave a token made and unused.
    if let Remote::Token(TokenCommand::Create { central_urls, insecure_registries, .. }) = &command
    {
        check_stick(central_urls, insecure_registries)?;
    }
    let mut c = connect(&conn).await?;
    match command {
        Remote::Fleet(FleetCommand::Push { dir }) => {
            let Some(stores) = render_fleet_or_report(&dir)? else { return Ok(ExitCode::FAILURE) };
            let req = FleetPushRequest {
                stores: stores
                    .iter()
                    .map(|(id, r)| StoreProfile {
                        store_id: id.clone(),
                        revision: r.revision.to_string(),
                        profile_yaml: r.to_yaml(),
                        source: r.source.clone(),
                    })
                    .collect(),
            };
            let reply = c.fleet_push(req).await.map_err(status)?.into_inner();
            let mut changed = 0;
            for o in &reply.stores {
                if o.changed {
                    changed += 1;
                    let was = if o.previous_revision.is_empty() {
                        "-"
                    } else {
                        short(&o.previous_revision, 12)
                    };
                    println!(
                        "{}  rev {}  new revision (was {was})",
                        o.store_id,
                        short(&o.revision, 12)
                    );
                } else {
                    println!("{}  rev {}  unchanged", o.store_id, short(&o.revision, 12));
                }
            }
            println!("{} stores pushed, {changed} new revisions", reply.stores.len());
        }
        Remote::Fleet(FleetCommand::Diff { dir }) => {
            let Some(stores) = render_fleet_or_report(&dir)? else { return Ok(ExitCode::FAILURE) };
            let (current, redacted) = all_fleet_status(&mut c).await?;
            if redacted {
                eprintln!(
                    "env values are hidden from viewers: changes to them are not shown (and the \
                     revisions differ where only they changed)"
                );
            }
            for (id, r) in &stores {
                match current.iter().find(|s| &s.store_id == id) {
                    None => println!("== {id}: new store (rev {})\n", r.revision.short()),
                    Some(s) if s.revision == r.revision.as_str() => {
                        println!("== {id}: unchanged (rev {})\n", r.revision.short())
                    }
                    Some(s) => {
                        let old = backroom_profiles::render_str(
                            &format!("central:{id}"),
                            &s.profile_yaml,
                        )
                        .map_err(|e| {
                            anyhow::anyhow!("central's copy of {id} does not render: {e}")
                        })?;
                        println!("== {id}: rev {} → {}", old.revision.short(), r.revision.short());
                        let mut new = r.profile.clone();
                        if redacted {
                            backroom_central::redact::redact_profile(&mut new);
                        }
                        println!("{}", backroom_profiles::diff(&old.profile, &new));
                    }
                }
            }
        }
        Remote::Token(TokenCommand::Create {
            store,
            region,
            ttl,
            replace,
            stick,
            central_urls,
            insecure_registries,
        }) => {
            let r = c
                .create_enroll_token(CreateEnrollTokenRequest {
                    store_id: store.clone(),
                    region,
                    ttl_seconds: ttl.millis() / 1000,
                    replace,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("{}", r.token);
            eprintln!(
                "one-time enrollment token {} for {store}; usable until {} ms (in {})",
                r.id, r.expires_unix_ms, ttl
            );
            if let Some(file) = stick {
                let token = EnrollToken::parse(&r.token)
                    .context("central answered with a token this centralctl cannot read")?;
                let p = provision::Provision {
                    central: central_urls,
                    token,
                    insecure_registries,
                    registry_ca: Default::default(),
                };
                backroom_central::stick::write(&file, &p).with_context(|| {
                    format!("token {} was made, but its stick image was not (revoke it with `centralctl token revoke {}`)", r.id, r.id)
                })?;
                eprintln!(
                    "provisioning stick image for {store} written to {f} ({} MiB FAT, label {label}, {name} for central {urls}).\n\
                     Copy it onto a USB stick (sdX: the stick, see lsblk; everything on it is replaced):\n\
                     \x20   dd if={f} of=/dev/sdX bs=1M conv=fsync\n\
                     then plug the stick into the new box and power it on. It holds the token: keep it safe until the box has enrolled.",
                    backroom_central::stick::IMAGE_BYTES >> 20,
                    f = file.display(),
                    label = provision::STICK_LABEL,
                    name = provision::FILE_NAME,
                    urls = p.central.join(", "),
                );
            }
        }
        Remote::Token(TokenCommand::List { store }) => {
            let r = c
                .list_enroll_tokens(ListEnrollTokensRequest { store_id: store.unwrap_or_default() })
                .await
                .map_err(status)?
                .into_inner();
            print!("{}", ctl_report::enroll_tokens(&r.tokens, now_ms()));
        }
        Remote::Token(TokenCommand::Revoke { id, store }) => {
            let r = c
                .revoke_enroll_token(RevokeEnrollTokenRequest {
                    id: id.unwrap_or_default(),
                    store_id: store.clone().unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            if r.revoked.is_empty() {
                println!("no token to revoke for {}", store.unwrap_or_default());
            } else {
                for t in &r.revoked {
                    println!("revoked enrollment token {} (store {})", t.id, t.store_id);
                }
            }
        }
        Remote::Store(StoreCommand::Revoke { id }) => {
            let r = c
                .revoke_store(RevokeStoreRequest { store_id: id.clone() })
                .await
                .map_err(status)?
                .into_inner();
            if r.revoked_serials.is_empty() {
                println!("{id} had no certificate; nothing to revoke");
            } else {
                println!(
                    "{id}: certificate {} revoked{}; the node needs a new enrollment token (centralctl token create --store {id})",
                    r.revoked_serials.join(", "),
                    if r.session_closed { ", its session ended" } else { "" }
                );
            }
        }
        Remote::Store(StoreCommand::List) => {
            let stores = all_stores(&mut c).await?;
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&stores_json(&stores))?);
            } else {
                print!("{}", ctl_report::stores(&stores, now_ms()));
            }
        }
        Remote::Store(StoreCommand::Get { id, events }) => {
            let r = c
                .get_store(GetStoreRequest { store_id: id, events })
                .await
                .map_err(status)?
                .into_inner();
            if conn.json {
                let v = serde_json::json!({
                    "summary": r.summary.as_ref().map(|s| stores_json(std::slice::from_ref(s))),
                    "workloads": r.workloads.iter().map(|w| serde_json::json!({
                        "name": w.name, "kind": w.kind, "state": w.state, "healthy": w.healthy,
                        "since_unix_ms": w.since_unix_ms, "restarts": w.restarts, "reason": w.reason, "addresses": w.addresses,
                    })).collect::<Vec<_>>(),
                    "events": r.events.iter().map(|e| serde_json::json!({
                        "seq": e.seq, "at_unix_ms": e.at_unix_ms, "kind": e.kind, "workload": e.workload, "message": e.message,
                        "subject": e.subject,
                    })).collect::<Vec<_>>(),
                    "problems": r.problems.iter().map(|p| serde_json::json!({
                        "subject": p.subject, "message": p.message, "since_unix_ms": p.since_unix_ms,
                        "failures": p.failures, "source": p.source,
                    })).collect::<Vec<_>>(),
                    "local_console": r.console.iter().map(|e| serde_json::json!({
                        "seq": e.seq, "at_unix_ms": e.at_unix_ms, "kind": e.kind, "workload": e.workload,
                        "message": e.message,
                    })).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", ctl_report::store(&r, now_ms()));
            }
        }
        Remote::Store(StoreCommand::ConsoleCode { id, role, ttl }) => {
            let r = c
                .create_console_code(CreateConsoleCodeRequest {
                    store_id: id.clone(),
                    role,
                    ttl_seconds: (ttl.millis() / 1000).max(1),
                })
                .await
                .map_err(status)?
                .into_inner();
            if conn.json {
                let v = serde_json::json!({
                    "store_id": id, "code": r.code, "role": r.role,
                    "expires_unix_ms": r.expires_unix_ms,
                    "expires": backroom_daemon::clock::rfc3339(r.expires_unix_ms),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{}", ctl_report::console_code(&id, &r, ttl.millis(), now_ms()));
            }
        }
        Remote::Store(StoreCommand::Restart { id, workload, opts }) => {
            return send(&mut c, id, "restart", workload, opts).await;
        }
        Remote::Store(StoreCommand::Reconcile { id, opts }) => {
            return send(&mut c, id, "reconcile", String::new(), opts).await;
        }
        Remote::Store(StoreCommand::Rollback { id, opts }) => {
            return send(&mut c, id, "rollback", String::new(), opts).await;
        }
        Remote::Command(CommandCommand::Get { id }) => {
            let r = c.get_command(GetCommandRequest { id }).await.map_err(status)?.into_inner();
            print!("{}", ctl_report::command(&r, now_ms()));
        }
        Remote::Alerts { all } => {
            let r = all_alerts(&mut c, all).await?;
            print!("{}", ctl_report::alerts(&r, now_ms()));
        }
        Remote::Audit { store, actor, since, limit } => {
            let since_unix_ms = since.map_or(0, |d| {
                now_ms().saturating_sub(i64::try_from(d.millis()).unwrap_or(i64::MAX))
            });
            let mut records = Vec::new();
            let mut page_token = String::new();
            while records.len() < limit as usize {
                let r = c
                    .list_audit(ListAuditRequest {
                        store_id: store.clone().unwrap_or_default(),
                        actor: actor.clone().unwrap_or_default(),
                        since_unix_ms,
                        page_size: (limit as usize - records.len()).min(1000) as u32,
                        page_token,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                records.extend(r.records);
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
            records.truncate(limit as usize);
            if conn.json {
                let v: Vec<_> = records
                    .iter()
                    .map(|a| {
                        serde_json::json!({
                            "at_unix_ms": a.at_unix_ms, "actor": a.actor, "action": a.action,
                            "store": a.store_id, "detail": a.detail,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", ctl_report::audit(&records, now_ms()));
            }
        }
        Remote::ApiToken(ApiTokenCommand::Create { name, role }) => {
            let r = c
                .create_api_token(CreateApiTokenRequest { name, role })
                .await
                .map_err(status)?
                .into_inner();
            println!("{}", r.token);
            eprintln!("API token {}", r.id);
        }
        Remote::ApiToken(ApiTokenCommand::List) => {
            let r = c.list_api_tokens(ListApiTokensRequest {}).await.map_err(status)?.into_inner();
            print!("{}", ctl_report::api_tokens(&r.tokens, now_ms()));
        }
        Remote::ApiToken(ApiTokenCommand::Revoke { id }) => {
            let r = c
                .revoke_api_token(RevokeApiTokenRequest { id })
                .await
                .map_err(status)?
                .into_inner();
            if let Some(t) = r.token {
                println!("revoked API token {} ({}, {})", t.id, t.name, t.role);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every store, page by page.
async fn all_stores(c: &mut client::Client) -> anyhow::Result<Vec<StoreSummary>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = c
            .list_stores(ListStoresRequest { page_size: 0, page_token })
            .await
            .map_err(status)?
            .into_inner();
        out.extend(r.stores);
        if r.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = r.next_page_token;
    }
}

/// Every alert, page by page, groups of a kind joined across pages.
async fn all_alerts(
    c: &mut client::Client,
    include_resolved: bool,
) -> anyhow::Result<ListAlertsReply> {
    let mut groups: Vec<AlertGroup> = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = c
            .list_alerts(ListAlertsRequest { include_resolved, page_size: 0, page_token })
            .await
            .map_err(status)?
            .into_inner();
        for g in r.groups {
            match groups.iter_mut().find(|x| x.kind == g.kind) {
                Some(x) => x.alerts.extend(g.alerts),
                None => groups.push(g),
            }
        }
        if r.next_page_token.is_empty() {
            return Ok(ListAlertsReply { groups, next_page_token: String::new() });
        }
        page_token = r.next_page_token;
    }
}

/// Every store's desired profile, page by page; and whether env values were hidden.
async fn all_fleet_status(c: &mut client::Client) -> anyhow::Result<(Vec<StoreProfile>, bool)> {
    let mut out = Vec::new();
    let mut redacted = false;
    let mut page_token = String::new();
    loop {
        let r = c
            .fleet_status(FleetStatusRequest { page_size: 0, page_token })
            .await
            .map_err(status)?
            .into_inner();
        out.extend(r.stores);
        redacted |= r.env_redacted;
        if r.next_page_token.is_empty() {
            return Ok((out, redacted));
        }
        page_token = r.next_page_token;
    }
}

fn stores_json(list: &[backroom_api::operator::StoreSummary]) -> Vec<serde_json::Value> {
    list.iter()
        .map(|s| {
            serde_json::json!({
                "store": s.store_id, "region": s.region, "online": s.online, "enrolled": s.enrolled,
                "last_seen_unix_ms": s.last_seen_unix_ms, "desired_revision": s.desired_revision,
                "applied_revision": s.applied_revision, "workloads_healthy": s.workloads_healthy,
                "workloads_total": s.workloads_total, "agent_version": s.agent_version,
                "last_apply_error": s.last_apply_error,
            })
        })
        .collect()
}

async fn send(
    c: &mut client::Client,
    store: String,
    kind: &str,
    workload: String,
    opts: CommandOpts,
) -> anyhow::Result<ExitCode> {
    let info = c
        .send_command(SendCommandRequest {
            store_id: store,
            kind: kind.into(),
            workload,
            ttl_seconds: opts.ttl.millis() / 1000,
        })
        .await
        .map_err(status)?
        .into_inner();
    if info.state == "queued" {
        println!("{}: the store is offline; the command waits up to {} for it", info.id, opts.ttl);
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = tokio::time::Instant::now() + opts.wait.to_std();
    let mut last = info;
    while matches!(last.state.as_str(), "sending" | "sent" | "queued")
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = c
            .get_command(GetCommandRequest { id: last.id.clone() })
            .await
            .map_err(status)?
            .into_inner();
    }
    print!("{}", ctl_report::command(&last, now_ms()));
    Ok(if last.state == "failed" || last.state == "expired" {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Renders every store of a fleet folder; prints the findings and returns None if any is invalid.
fn render_fleet_or_report(dir: &Path) -> anyhow::Result<Option<Vec<(String, Rendered)>>> {
    let stores = render_fleet(dir).with_context(|| format!("reading fleet {}", dir.display()))?;
    let mut ok = Vec::new();
    let mut bad = 0;
    for s in stores {
        match s.result {
            Ok(r) => {
                eprint!("{}", profile_report::diagnostics(&r.warnings));
                ok.push((s.id, r));
            }
            Err(Invalid { diagnostics }) => {
                bad += 1;
                eprint!("{}", profile_report::diagnostics(&diagnostics));
            }
        }
    }
    if bad > 0 {
        eprintln!("{bad} stores are invalid: nothing was sent");
        return Ok(None);
    }
    Ok(Some(ok))
}

fn profile(cmd: ProfileCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ProfileCommand::Validate { paths, summary, quiet } => validate(&paths, summary, quiet),
        ProfileCommand::Render { file, json } => {
            let Some(r) = render_or_report(&file) else { return Ok(ExitCode::FAILURE) };
            eprint!("{}", profile_report::diagnostics(&r.warnings));
            if json {
                println!("{}", r.to_json());
            } else {
                println!("# rendered from {}\n# revision {}", r.source, r.revision);
                print!("{}", r.to_yaml());
            }
            Ok(ExitCode::SUCCESS)
        }
        ProfileCommand::Diff { old, new } => {
            let (Some(a), Some(b)) = (render_or_report(&old), render_or_report(&new)) else {
                return Ok(ExitCode::FAILURE);
            };
            let d = backroom_profiles::diff(&a.profile, &b.profile);
            println!(
                "{} (rev {}) → {} (rev {})",
                a.source,
                a.revision.short(),
                b.source,
                b.revision.short()
            );
            print!("{d}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn render_or_report(path: &Path) -> Option<Rendered> {
    match render_file(path) {
        Ok(r) => Some(r),
        Err(Invalid { diagnostics }) => {
            eprint!("{}", profile_report::diagnostics(&diagnostics));
            None
        }
    }
}

fn validate(paths: &[PathBuf], summary: bool, quiet: bool) -> anyhow::Result<ExitCode> {
    let (mut ok, mut bad, mut warnings) = (0usize, 0usize, 0usize);
    let mut show = |id: &str, result: &Result<Rendered, Invalid>| {
        let diags = match result {
            Ok(r) => &r.warnings,
            Err(i) => &i.diagnostics,
        };
        let shown: Vec<Diagnostic> =
            diags.iter().filter(|d| !quiet || d.severity == Severity::Error).cloned().collect();
        print!("{}", profile_report::diagnostics(&shown));
        warnings += diags.iter().filter(|d| d.severity == Severity::Warning).count();
        match result {
            Ok(r) => {
                ok += 1;
                if summary {
                    print!("{}", profile_report::block(id, r));
                } else if !quiet {
                    println!("ok  {id}  {}", profile_report::one_line(r));
                }
            }
            Err(_) => {
                bad += 1;
                println!("INVALID  {id}");
            }
        }
    };
    for path in paths {
        if path.is_dir() {
            for store in
                render_fleet(path).with_context(|| format!("reading fleet {}", path.display()))?
            {
                show(&store.path.display().to_string(), &store.result);
            }
        } else {
            show(&path.display().to_string(), &render_file(path));
        }
    }
    let plural = |n: usize| if n == 1 { "1 profile".to_string() } else { format!("{n} profiles") };
    println!("{} valid, {bad} invalid, {warnings} warnings", plural(ok));
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
