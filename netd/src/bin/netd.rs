//! netd: the store's networks from the profile.
//!
//! `netd serve` is the daemon nodeagent and vmd talk to. The other commands act directly on the
//! kernel, for operators and tests; they refuse to run while `netd serve` holds the same state
//! directory (talk to the daemon instead).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use backroom_daemon::chain;
use backroom_daemon::logging::LogArgs;
use backroom_daemon::text::short;
use backroom_netd::engine::Engine;
use backroom_netd::{netns, server};
use clap::{Parser, Subcommand};

/// The store's network daemon: VLANs, bridges, host addresses, workload endpoints and the
/// nftables firewall, all from the `network` part of the store profile.
#[derive(Parser)]
#[command(name = "netd", version)]
struct Cli {
    /// Do all the work inside this named network namespace (/run/netns/NAME) instead of the
    /// host's: how tests and `make run` leave the machine's own networking alone.
    #[arg(long, global = true, value_name = "NAME")]
    netns: Option<String>,
    /// Where netd keeps what it applied, its address leases and endpoints.
    #[arg(long, global = true, value_name = "DIR", default_value = "/var/lib/backroom/netd")]
    state_dir: PathBuf,
    /// The DNS file an uplink override's servers are written to (the file it replaces comes
    /// back when the override ends). Without it an override's DNS servers are not written.
    #[arg(long, global = true, value_name = "PATH")]
    resolv_conf: Option<PathBuf>,
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: the local API on a unix socket, drift repair, DHCP renewal and the
    /// commit-confirm deadline.
    Serve {
        /// The API socket (created with mode 0600, or 0660 with --socket-group).
        #[arg(long, default_value = "/run/backroom/netd.sock")]
        socket: PathBuf,
        #[command(flatten)]
        access: backroom_daemon::socket::SocketArgs,
        /// Seconds between drift checks (link changes trigger one at once too).
        #[arg(long, default_value_t = 30)]
        check_interval: u64,
    },
    /// Apply a store profile: print the plan, carry it out, exit non-zero with a clear message
    /// when it cannot (the previous state is left in force).
    Apply {
        /// The store profile (its layers are read from beside it).
        file: PathBuf,
        /// Use this interface as the uplink instead of the profile's.
        #[arg(long)]
        uplink: Option<String>,
        /// Print the plan only.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print what `apply` would do, without doing it.
    Plan {
        /// The store profile (its layers are read from beside it).
        file: PathBuf,
        /// Use this interface as the uplink instead of the profile's.
        #[arg(long)]
        uplink: Option<String>,
        /// Print the whole nftables ruleset (nft syntax) instead of the plan.
        #[arg(long)]
        nft: bool,
    },
    /// Show what is applied: segments, counters per allow rule, drift and endpoints (asking
    /// the daemon when it is running).
    Show {
        /// The daemon's API socket, used when the daemon holds the state directory.
        #[arg(long, default_value = "/run/backroom/netd.sock")]
        socket: PathBuf,
    },
    /// Remove everything netd made: endpoints, bridges, VLAN sub-interfaces, routes, its tables.
    Teardown,
    /// Make a workload's endpoints as nodeagent or vmd would (applying FILE first when it is
    /// not the applied profile) and print the namespace and addresses.
    Attach {
        /// The store profile the workload is in.
        file: PathBuf,
        /// The workload's name in the profile.
        workload: String,
        /// A non-primary instance, e.g. `next` during an update (gets temporary addresses).
        #[arg(long, default_value = "")]
        instance: String,
        /// Use this interface as the uplink instead of the profile's (when FILE gets applied).
        #[arg(long)]
        uplink: Option<String>,
    },
    /// Remove a workload's endpoints.
    Detach {
        /// The workload's name.
        workload: String,
        /// The instance to remove; by default the primary.
        #[arg(long, default_value = "")]
        instance: String,
    },
    /// Make an instance the workload's primary: the stable addresses move onto it.
    Promote {
        /// The workload's name.
        workload: String,
        /// The instance that becomes the primary, e.g. `next`.
        instance: String,
    },
    /// The running daemon's uplink override: a segment's static address, gateway, DNS and
    /// VLAN for a while, when the store's DHCP is broken (support's break-glass).
    #[command(subcommand)]
    Override(OverrideCommand),
    /// Confirm the pending apply of the running daemon (before its deadline passes).
    Confirm {
        /// The revision to confirm; by default whatever is pending.
        #[arg(default_value = "")]
        revision: String,
        /// The daemon's API socket.
        #[arg(long, default_value = "/run/backroom/netd.sock")]
        socket: PathBuf,
    },
}

#[derive(Subcommand)]
enum OverrideCommand {
    /// Put an override in force (it ends by itself).
    Set {
        /// The segment, e.g. `mgmt`.
        segment: String,
        /// The host's address on the segment, CIDR (e.g. 192.168.7.20/24).
        #[arg(long)]
        address: String,
        /// The default gateway, inside the address's network.
        #[arg(long)]
        gateway: String,
        /// A DNS server (up to 3 times).
        #[arg(long)]
        dns: Vec<String>,
        /// A VLAN id instead of the profile's (0: the profile's).
        #[arg(long, default_value_t = 0)]
        vlan: u32,
        /// How long it lasts (at most 1440 minutes).
        #[arg(long, default_value_t = 240)]
        minutes: i64,
        /// The network before it comes back unless `netd confirm` follows within this (0: no
        /// confirmation needed).
        #[arg(long, default_value_t = 0)]
        confirm_seconds: u32,
        /// Why, for the events (e.g. "support: ticket 4711").
        #[arg(long, default_value = "netd override set")]
        reason: String,
        /// The daemon's API socket.
        #[arg(long, default_value = "/run/backroom/netd.sock")]
        socket: PathBuf,
    },
    /// End the override at once.
    Clear {
        /// The daemon's API socket.
        #[arg(long, default_value = "/run/backroom/netd.sock")]
        socket: PathBuf,
    },
    /// Show the override in force.
    Show {
        /// The daemon's API socket.
        #[arg(long, default_value = "/run/backroom/netd.sock")]
        socket: PathBuf,
    },
}

fn print_override(o: Option<&backroom_api::netd::Override>, dns: &str) {
    let Some(o) = o else {
        println!("no uplink override");
        return;
    };
    let vlan = if o.vlan == 0 { String::new() } else { format!(" vlan {}", o.vlan) };
    let servers =
        if o.dns.is_empty() { String::new() } else { format!(" dns {}", o.dns.join(" ")) };
    println!(
        "uplink override of segment {}: {} via {}{servers}{vlan} until {} ({})",
        o.segment,
        o.address,
        o.gateway,
        backroom_daemon::clock::rfc3339(o.expires_unix.saturating_mul(1000)),
        o.reason
    );
    if !dns.is_empty() {
        println!("override DNS: {dns}");
    }
}

async fn override_command(cmd: OverrideCommand) -> Result<()> {
    use backroom_api::netd as pb;
    let refused = |s: tonic::Status| anyhow::anyhow!("netd refused: {}", s.message());
    match cmd {
        OverrideCommand::Set {
            segment,
            address,
            gateway,
            dns,
            vlan,
            minutes,
            confirm_seconds,
            reason,
            socket,
        } => {
            let mut c = connect(socket).await?;
            let now = backroom_daemon::clock::system().now_unix();
            let o = pb::Override {
                segment,
                address,
                gateway,
                dns,
                vlan,
                expires_unix: now.saturating_add(minutes.saturating_mul(60)),
                set_unix: 0,
                reason,
            };
            let r = c
                .set_override(pb::SetOverrideRequest { r#override: Some(o), confirm_seconds })
                .await
                .map_err(refused)?
                .into_inner();
            for a in &r.actions {
                println!("{a}");
            }
            print_override(r.r#override.as_ref(), "");
            if r.confirm_deadline_unix > 0 {
                println!(
                    "confirm with `netd confirm` before {}, or the network before it comes back",
                    backroom_daemon::clock::rfc3339(r.confirm_deadline_unix.saturating_mul(1000))
                );
            }
        }
        OverrideCommand::Clear { socket } => {
            let mut c = connect(socket).await?;
            let r =
                c.clear_override(pb::ClearOverrideRequest {}).await.map_err(refused)?.into_inner();
            for a in &r.actions {
                println!("{a}");
            }
            println!("uplink override cleared");
        }
        OverrideCommand::Show { socket } => {
            let mut c = connect(socket).await?;
            let o = c.observe(pb::ObserveRequest {}).await.map_err(refused)?.into_inner();
            print_override(o.r#override.as_ref(), &o.override_dns);
        }
    }
    Ok(())
}

fn render(file: &Path) -> Result<backroom_profiles::Rendered> {
    backroom_profiles::render_file(file).map_err(|e| {
        let lines: Vec<String> = e.diagnostics.iter().map(|d| d.to_string()).collect();
        anyhow::anyhow!("{} is not a usable store profile:\n{}", file.display(), lines.join("\n"))
    })
}

fn engine(dir: &Path, resolv_conf: Option<&Path>) -> Result<Engine> {
    kernel(Engine::open(dir)).map(|e| e.resolv_conf_on(resolv_conf.map(Path::to_path_buf)))
}

/// A library error as the CLI prints it: the whole chain on one line.
fn kernel<T>(r: backroom_netd::Result<T>) -> Result<T> {
    r.map_err(|e| anyhow::anyhow!(chain(&e)))
}

/// A revision as people read it.
fn rev(r: &backroom_profiles::Rendered) -> &str {
    short(r.revision.as_str(), 12)
}

/// Applies `r`, then gets the DHCP leases it needs, printing each step. A failed lease leaves
/// the rest applied and says so.
fn apply_and_lease(
    e: &mut Engine,
    r: &backroom_profiles::Rendered,
    file: &Path,
    uplink: Option<&str>,
) -> Result<bool> {
    let out = kernel(e.apply(r, uplink, 0)).with_context(|| {
        format!(
            "cannot apply {} (revision {}); the previous state is still in force",
            file.display(),
            rev(r)
        )
    })?;
    for a in &out.actions {
        println!("{a}");
    }
    let leased = kernel(e.acquire_dhcp()).with_context(|| {
        format!("revision {} is applied, but a segment has no DHCP lease", rev(r))
    })?;
    for a in &leased {
        println!("{a}");
    }
    Ok(out.changed || !leased.is_empty())
}

async fn connect(
    socket: PathBuf,
) -> Result<backroom_api::netd::netd_client::NetdClient<tonic::transport::Channel>> {
    kernel(server::client(socket).await).context("is `netd serve` running?")
}

fn print_endpoint(ep: &backroom_api::netd::AttachReply) {
    print_interfaces(&ep.netns_path, &ep.interfaces);
}

fn print_interfaces(netns_path: &str, interfaces: &[backroom_api::netd::Interface]) {
    if !netns_path.is_empty() {
        println!("netns {netns_path}");
    }
    for i in interfaces {
        let addr = if i.address.is_empty() { "-" } else { &i.address };
        let gw = if i.gateway.is_empty() {
            String::new()
        } else {
            format!(" default via {}", i.gateway)
        };
        let tmp = if i.temporary { " (temporary)" } else { "" };
        let name = if i.name.is_empty() { "nic" } else { &i.name };
        let hv =
            if i.host_veth.is_empty() { String::new() } else { format!(" host {}", i.host_veth) };
        println!("{name} {} {} mac {} {addr}{tmp}{gw}{hv}", i.segment, i.bridge, i.mac);
    }
}

fn print_observation(o: &backroom_api::netd::ObserveReply) {
    if o.applied_revision.is_empty() {
        println!("no profile applied");
    } else {
        println!("applied revision {}", o.applied_revision);
    }
    if !o.pending_revision.is_empty() {
        println!("waiting for confirmation until {} (unix time)", o.confirm_deadline_unix);
    }
    if o.unconfirmed_kept {
        println!(
            "not confirmed: kept at its deadline (no earlier network to go back to; confirm it to clear)"
        );
    }
    if o.r#override.is_some() {
        print_override(o.r#override.as_ref(), &o.override_dns);
    }
    for s in &o.segments {
        let state = if s.present { "present" } else { "MISSING" };
        println!(
            "segment {} {} {state} addresses [{}] ports [{}]",
            s.name,
            s.bridge,
            s.addresses.join(", "),
            s.ports.join(", ")
        );
    }
    for r in &o.rules {
        println!("rule {}: {} packets, {} bytes", r.rule, r.packets, r.bytes);
    }
    for d in &o.drift {
        println!("drift: {d}");
    }
    for p in &o.problems {
        println!(
            "failing since {}: {} ({} tries): {}",
            backroom_daemon::clock::rfc3339(p.since_unix_ms),
            p.subject,
            p.failures,
            p.message
        );
    }
    for ep in &o.endpoints {
        let inst = if ep.instance.is_empty() { "primary" } else { &ep.instance };
        println!("endpoint {} ({inst})", ep.workload);
        print_interfaces(&ep.netns_path, &ep.interfaces);
    }
}

fn main() -> Result<()> {
    // One malloc arena for the whole process: a control-plane daemon gains nothing from glibc's
    // per-thread arenas, and each keeps megabytes of freed memory resident (idle RSS budget).
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let cli = Cli::parse();
    cli.log.init("info");
    // Before any thread exists, so that every thread netd starts lives in that namespace.
    if let Some(ns) = &cli.netns {
        kernel(netns::enter(ns)).with_context(|| format!("--netns {ns}"))?;
    }
    match cli.command {
        Command::Serve { socket, access, check_interval } => {
            let access = access.access().context("--socket-group")?;
            let engine = engine(&cli.state_dir, cli.resolv_conf.as_deref())?;
            // Engine calls and DHCP exchanges (one per segment at most) share the blocking pool.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(8)
                .build()?;
            let daemon = server::Daemon::new(engine);
            let served = rt.block_on(server::serve(
                daemon,
                socket,
                access,
                Duration::from_secs(check_interval.max(1)),
            ));
            // A DHCP exchange still running on a blocking thread must not hold up the exit.
            rt.shutdown_timeout(Duration::from_secs(1));
            kernel(served)
        }
        Command::Apply { file, uplink, dry_run } => {
            let r = render(&file)?;
            let mut e = engine(&cli.state_dir, cli.resolv_conf.as_deref())?;
            if dry_run {
                for a in kernel(e.plan(&r, uplink.as_deref()))? {
                    println!("{a}");
                }
                return Ok(());
            }
            if apply_and_lease(&mut e, &r, &file, uplink.as_deref())? {
                println!("applied revision {}", rev(&r));
            } else {
                println!("nothing to do: the kernel already matches revision {}", rev(&r));
            }
            Ok(())
        }
        Command::Plan { file, uplink, nft } => {
            let r = render(&file)?;
            let mut e = engine(&cli.state_dir, cli.resolv_conf.as_deref())?;
            if nft {
                print!("{}", kernel(e.ruleset(&r, uplink.as_deref()))?);
            } else {
                let plan = kernel(e.plan(&r, uplink.as_deref()))?;
                if plan.is_empty() {
                    println!("nothing to do");
                }
                for a in plan {
                    println!("{a}");
                }
            }
            Ok(())
        }
        Command::Show { socket } => {
            let reply = match Engine::open(&cli.state_dir) {
                Ok(e) => {
                    let mut e = e.resolv_conf_on(cli.resolv_conf.clone());
                    server::observe_reply(kernel(e.observe())?)
                }
                // The daemon holds the state: ask it.
                Err(backroom_netd::Error::Busy { .. }) if socket.exists() => {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    rt.block_on(async {
                        let mut c = connect(socket).await?;
                        c.observe(backroom_api::netd::ObserveRequest {})
                            .await
                            .map(|r| r.into_inner())
                            .map_err(|s| anyhow::anyhow!("netd refused: {}", s.message()))
                    })?
                }
                Err(e) => bail!(chain(&e)),
            };
            print_observation(&reply);
            Ok(())
        }
        Command::Teardown => {
            let mut e = engine(&cli.state_dir, cli.resolv_conf.as_deref())?;
            for r in kernel(e.teardown())? {
                println!("removed {r}");
            }
            Ok(())
        }
        Command::Attach { file, workload, instance, uplink } => {
            let r = render(&file)?;
            let mut e = engine(&cli.state_dir, cli.resolv_conf.as_deref())?;
            let applied = kernel(e.applied())?.applied;
            if applied.as_ref().map(|a| a.revision.as_str()) != Some(r.revision.as_str()) {
                apply_and_lease(&mut e, &r, &file, uplink.as_deref())?;
            }
            let ep = kernel(e.attach(&workload, &instance))?;
            print_endpoint(&server::attach_reply(&ep));
            Ok(())
        }
        Command::Detach { workload, instance } => {
            let mut e = engine(&cli.state_dir, cli.resolv_conf.as_deref())?;
            kernel(e.detach(&workload, &instance))?;
            println!("detached {workload}");
            Ok(())
        }
        Command::Promote { workload, instance } => {
            let mut e = engine(&cli.state_dir, cli.resolv_conf.as_deref())?;
            let ep = kernel(e.promote(&workload, &instance))?;
            print_endpoint(&server::attach_reply(&ep));
            Ok(())
        }
        Command::Override(cmd) => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(override_command(cmd))
        }
        Command::Confirm { revision, socket } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let mut c = connect(socket).await?;
                let r = c.confirm(backroom_api::netd::ConfirmRequest { revision }).await;
                match r {
                    Ok(r) => {
                        println!("confirmed revision {}", r.into_inner().revision);
                        Ok(())
                    }
                    Err(s) => bail!("netd refused: {}", s.message()),
                }
            })
        }
    }
}
