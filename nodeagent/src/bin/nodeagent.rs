//! `nodeagent`: runs a store profile on this node (networks through netd, VMs through vmd,
//! containers on containerd) and serves nodectl on a local socket.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use backroom_daemon::logging::LogArgs;
use backroom_daemon::{Chain, notify};
use backroom_nodeagent::engine::{Config, Engine};
use backroom_nodeagent::network::NetworkChoice;
use backroom_nodeagent::provision;
use backroom_nodeagent::restart::Timing;
use backroom_nodeagent::runtime::{Containerd, ContainerdConfig, RegistryAuth};
use backroom_nodeagent::vms::VmsChoice;
use clap::Parser;

/// Run a Backroom store profile on this node.
///
/// nodeagent keeps the desired profile revision on disk, applies the network through netd
/// first, then the VMs through vmd, then runs the containers itself on containerd (pulls or
/// imported images, restart policies, health checks, updates with rollback). A restarted
/// nodeagent takes over the containers that run; it never restarts a healthy one.
/// Talk to it with `nodectl`.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The socket nodectl talks to (mode 0600, or 0660 with --socket-group).
    #[arg(long, default_value = "/run/backroom/nodeagent.sock")]
    socket: PathBuf,
    #[command(flatten)]
    access: backroom_daemon::socket::SocketArgs,
    /// How often netd, vmd (and through it libvirtd) and containerd are asked whether they
    /// answer; one that does not is a problem, shown in `nodectl status`, until it does.
    #[arg(long, default_value = "5s")]
    liveness_interval: backroom_profiles::Duration,
    /// Where nodeagent keeps its state: revisions, workload records, logs.
    #[arg(long, default_value = "/var/lib/backroom")]
    state_dir: PathBuf,
    /// Where named volumes live (default: <state-dir>/volumes).
    #[arg(long)]
    volumes_dir: Option<PathBuf>,
    /// The resolv.conf containers get their nameservers from (loopback ones are left out:
    /// a container cannot reach them; with systemd-resolved its upstream servers are used).
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// netd's socket, or `none` to leave the network alone (workloads with networks then fail).
    #[arg(long, default_value = "/run/backroom/netd.sock")]
    netd_socket: PathBuf,
    /// vmd's socket, or `none` when this node runs no VMs.
    #[arg(long, default_value = "/run/backroom/vmd.sock")]
    vmd_socket: PathBuf,
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    containerd_socket: PathBuf,
    /// The containerd namespace nodeagent's containers and images live in.
    #[arg(long, default_value = "backroom")]
    containerd_namespace: String,
    /// A store profile to run (standalone mode). Taken at start when it changed since the last
    /// time; `nodectl apply` switches to another one.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Ask netd for commit-confirm: the network comes back by itself unless confirmed within
    /// this many seconds (0: off). Default: off standalone; 120 with --central, where the
    /// change is confirmed only once central answers after it.
    #[arg(long)]
    confirm_seconds: Option<u32>,
    /// central's node endpoint (e.g. https://central.example:7443): enroll once, then keep a
    /// session for status, events and desired revisions. Without it nodeagent runs standalone.
    #[arg(long, env = "BACKROOM_CENTRAL")]
    central: Option<String>,
    /// The one-time enrollment token from `centralctl token create` (only needed once).
    #[arg(long, env = "BACKROOM_TOKEN", hide_env_values = true, conflicts_with = "token_file")]
    token: Option<String>,
    /// A file holding the enrollment token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// A provision.toml to take central's URL, the enrollment token and the registries from
    /// (the format: spec/store-os.md; `centralctl token create --stick` writes one). Repeat for
    /// several candidates, tried in order: the first that exists is used, the others are not
    /// read. The store OS image gives the USB stick's, then the ESP's. A flag given as well
    /// wins over the file. A wrong file stops a node that has not enrolled yet (the error names
    /// the file, line and column; fix the file or take the stick out); an enrolled node logs it
    /// and runs on, as it does when the stick is gone. What was used, from where and when, is
    /// in <state-dir>/provision.json.
    #[arg(long = "provision", value_name = "FILE")]
    provision: Vec<PathBuf>,
    /// How long a revision from central has to become healthy before the node goes back to its
    /// last-known-good revision.
    #[arg(long, default_value = "5m")]
    apply_deadline: backroom_profiles::Duration,
    /// After an OS update (the profile's node.os), how long the node has on the new slot to be
    /// healthy (the profile applied, every workload healthy, and central answering if it did
    /// before the update) before it gives the version up and reboots into the old slot. The
    /// failed version is not tried again until node.os.version changes. State:
    /// <state-dir>/os.json.
    #[arg(long, default_value = "10m")]
    os_health_deadline: backroom_profiles::Duration,
    /// A registry reached over plain HTTP (host[:port]); repeat for several. Loopback
    /// registries always are.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// REGISTRY=FILE: trust the CA certificates in FILE (PEM) for REGISTRY (host[:port]),
    /// besides the system's store, e.g. HQ's private registry. Such a registry is always reached
    /// over https. Repeat for several.
    #[arg(long = "registry-ca", value_name = "REGISTRY=FILE")]
    registry_cas: Vec<String>,
    /// A JSON file of registry credentials: {"registry.example": {"username": "…", "password": "…"}}.
    #[arg(long)]
    registry_auth: Option<PathBuf>,
    /// The delay before the first restart of a crashed container, in milliseconds (it doubles
    /// with each crash in a row, up to 5 minutes).
    #[arg(long, default_value_t = 1000)]
    restart_backoff_ms: u64,
    /// How long a stopping container gets between SIGTERM and SIGKILL, in seconds.
    #[arg(long, default_value_t = 10)]
    stop_grace_seconds: u64,
    /// Keep images no workload uses for this many hours (imported images wait for the profile
    /// that uses them).
    #[arg(long, default_value_t = 24)]
    image_grace_hours: u64,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> anyhow::Result<()> {
    // One malloc arena for the whole process: a control-plane daemon gains nothing from glibc's
    // per-thread arenas, and each keeps megabytes of freed memory resident (idle RSS budget).
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let args = Args::parse();
    args.log.init("info");
    // One thread is plenty for a node agent, and keeps it small.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    // One nodeagent per state folder; the kernel lets go of the lock however this one ends.
    let lock = args.state_dir.join("nodeagent.lock");
    let _lock = tokio::task::spawn_blocking(move || {
        backroom_daemon::fs::StateLock::acquire_wait(&lock, Duration::from_secs(5))
    })
    .await??;
    // A wrong group is told at once, before anything else starts.
    let access = args.access.access().context("--socket-group")?;
    let clock = backroom_daemon::clock::system();
    let auth: BTreeMap<String, RegistryAuth> = match &args.registry_auth {
        Some(p) => {
            let text = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            serde_json::from_slice(&text)
                .with_context(|| format!("{} is not a registry credentials file", p.display()))?
        }
        None => BTreeMap::new(),
    };
    let mut registry_cas: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for arg in &args.registry_cas {
        let Some((registry, file)) = arg.split_once('=') else {
            anyhow::bail!(
                "--registry-ca {arg}: expected REGISTRY=FILE, e.g. registry.hq.example=/etc/backroom/hq-ca.pem"
            );
        };
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("--registry-ca {arg}: cannot read {file}"))?;
        let certs = backroom_nodeagent::runtime::pem_certificates(&text);
        if certs.is_empty() {
            anyhow::bail!("--registry-ca {arg}: {file} holds no PEM certificate");
        }
        registry_cas.entry(registry.to_string()).or_default().extend(certs);
    }
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the token file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let flags = provision::Flags {
        central: args.central.clone(),
        token,
        insecure_registries: args.insecure_registries.clone(),
        registry_cas,
    };
    let provision::Flags { central, token, insecure_registries, registry_cas } =
        provisioned(&args, flags, &clock)?;
    let ctd_config = ContainerdConfig {
        socket: args.containerd_socket.clone(),
        namespace: args.containerd_namespace.clone(),
        insecure_registries,
        auth,
        registry_cas,
    };
    let runtime = loop {
        match Containerd::connect(ctd_config.clone()).await {
            Ok(c) => break c.with_clock(clock.clone()),
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "containerd is not there yet; trying again in 2 s");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let net = NetworkChoice::from_flag(&args.netd_socket);
    let vms = VmsChoice::from_flag(&args.vmd_socket);
    let mut cfg = Config::new(
        args.state_dir.clone(),
        args.volumes_dir.clone().unwrap_or_else(|| args.state_dir.join("volumes")),
    );
    cfg.clock = clock.clone();
    cfg.liveness_interval = args.liveness_interval.to_std().max(Duration::from_millis(100));
    // Within the interval, so that a check never waits for the one before.
    cfg.liveness_timeout = cfg.liveness_interval.min(Duration::from_secs(3));
    cfg.resolv_conf = args.resolv_conf.clone();
    let contact = tokio::sync::watch::Sender::new(0i64);
    let central_state =
        tokio::sync::watch::Sender::new(String::from(if args.provision.is_empty() {
            "standalone (no --central)"
        } else {
            "standalone (no --central, no provision.toml)"
        }));
    cfg.confirm_seconds = args.confirm_seconds.unwrap_or(if central.is_some() { 120 } else { 0 });
    if central.is_some() {
        cfg.confirm_gate = Some(backroom_nodeagent::connected::confirm_gate(contact.subscribe()));
    }
    cfg.restart = Timing::with_first_delay(Duration::from_millis(args.restart_backoff_ms.max(1)));
    cfg.stop_grace = Duration::from_secs(args.stop_grace_seconds);
    cfg.image_grace_ms = args.image_grace_hours * 3600 * 1000;
    let overrides: Option<std::sync::Arc<dyn backroom_nodeagent::console::Overrides>> = match &net {
        NetworkChoice::None(_) => None,
        n => Some(std::sync::Arc::new(n.clone())),
    };
    let os_host = backroom_nodeagent::os::real::RealOsHost::new(
        backroom_nodeagent::os::real::OsPaths::system(&args.state_dir),
    )?;
    {
        use backroom_nodeagent::os::OsHost;
        match os_host.running() {
            Some(r) => tracing::info!("store OS {} on slot {}", r.version, r.slot),
            None => tracing::info!("not the Backroom store OS image: node.os is refused"),
        }
        cfg.store_os = os_host.running().is_some();
    }
    let (engine, handle) = Engine::new(cfg, runtime, net, vms)?;
    {
        let h = handle.clone();
        let c = clock.clone();
        let sink: backroom_nodeagent::os::EventSink =
            std::sync::Arc::new(move |kind: &str, msg: String| {
                h.publish(c.now_ms(), "", kind, msg)
            });
        let updater = backroom_nodeagent::os::OsUpdater::open(
            os_host,
            &args.state_dir,
            clock.clone(),
            args.os_health_deadline.to_std(),
            sink,
        )?;
        let store = backroom_nodeagent::store::Store::open(&args.state_dir)?;
        backroom_nodeagent::os::driver::spawn(
            updater,
            handle.clone(),
            store,
            contact.subscribe(),
            clock.clone(),
            Duration::from_secs(5),
        );
    }
    let link_info =
        tokio::sync::watch::Sender::new(backroom_nodeagent::connected::LinkInfo::default());
    let (local_tx, local_rx) = tokio::sync::mpsc::channel(4);
    let console =
        backroom_nodeagent::console::Console::new(backroom_nodeagent::console::ConsoleParts {
            state_dir: args.state_dir.clone(),
            engine: handle.clone(),
            clock: clock.clone(),
            local: central.is_some().then_some(local_tx),
            overrides,
            contact: central.is_some().then(|| contact.subscribe()),
            override_segment: None,
        });
    let extra = backroom_nodeagent::server::Extra {
        console: Some(std::sync::Arc::new(console)),
        link: central.is_some().then(|| link_info.subscribe()),
        contact: central.is_some().then(|| contact.subscribe()),
        state_dir: args.state_dir.clone(),
    };
    if let Some(url) = &central {
        let opts = backroom_nodeagent::connected::CentralOptions {
            url: url.clone(),
            token,
            state_dir: args.state_dir.clone(),
            agent_version: format!("nodeagent {}", env!("CARGO_PKG_VERSION")),
            apply_deadline: args.apply_deadline.to_std(),
            outbox_limits: backroom_session::outbox::Limits::default(),
            disk_low_percent: 10,
            clock: clock.clone(),
        };
        let linked = backroom_nodeagent::connected::Linked { info: link_info, local: local_rx };
        backroom_nodeagent::connected::spawn(
            opts,
            handle.clone(),
            central_state.clone(),
            contact,
            linked,
        );
    }
    let incoming = backroom_daemon::socket::listen(&args.socket, access)?;
    tracing::info!("serving nodectl on {}", args.socket.display());

    // Only a live engine earns the ping: one that answers a status request.
    let h = handle.clone();
    notify::spawn_watchdog(move || {
        let h = h.clone();
        async move { h.status().await.is_ok() }
    });
    let server = tonic::transport::Server::builder()
        .add_service(backroom_nodeagent::server::service(handle, central_state.subscribe(), extra))
        .serve_with_incoming(incoming);
    let ready = || {
        notify::ready();
        tracing::info!("ready");
    };
    tokio::select! {
        r = engine.run(args.profile.clone(), ready) => r?,
        r = server => r.context("the nodectl server stopped")?,
        signal = backroom_daemon::signal::shutdown() => {
            notify::stopping();
            tracing::info!("{signal}: stopping; containers keep running");
        }
    }
    Ok(())
}

/// The flags with what `--provision` gives laid under them; stops when the file is wrong and
/// the node has not enrolled (see `backroom_nodeagent::provision`).
fn provisioned(
    args: &Args,
    flags: provision::Flags,
    clock: &backroom_daemon::SharedClock,
) -> anyhow::Result<provision::Flags> {
    if args.provision.is_empty() {
        return Ok(flags);
    }
    let enrolled = backroom_nodeagent::connected::enrolled(&args.state_dir);
    let found = provision::find(&args.provision);
    let now = backroom_daemon::clock::rfc3339(clock.now_ms());
    let decision =
        provision::decide(found, enrolled, provision::Record::load(&args.state_dir), &now);
    if let Some(record) = &decision.record
        && let Err(e) = record.save(&args.state_dir)
    {
        tracing::warn!(error = %Chain(&e), "cannot record which provisioning was used");
    }
    if let Some(e) = decision.fatal {
        // main prints it whole, on stderr: the journal, and so the console, shows it.
        return Err(anyhow::Error::new(e).context(
            "this node has not enrolled and its provision.toml cannot be used: fix the file or take the stick out",
        ));
    }
    for w in &decision.warnings {
        tracing::warn!("{w}");
    }
    for n in &decision.notes {
        tracing::info!("{n}");
    }
    let (merged, said) = provision::merge(flags, decision.provided);
    for s in &said {
        tracing::warn!("{s}");
    }
    Ok(merged)
}
