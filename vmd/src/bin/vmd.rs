//! `vmd`: the VM daemon of a Backroom store server, and its one-shot commands.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use backroom_daemon::logging::LogArgs;
use backroom_daemon::text::short;
use backroom_vmd::hypervisor::Hypervisor;
use backroom_vmd::libvirt::Libvirt;
use backroom_vmd::nics::{NetdNics, NicSource, StaticNics};
use backroom_vmd::server::{problem_pb, serve, to_pb};
use backroom_vmd::state::StateLock;
use backroom_vmd::storage::FsStorage;
use backroom_vmd::virt_type::VirtTypeSetting;
use backroom_vmd::{Config, Deps, Vmd, client, layout::Layout};
use clap::{Args, Parser, Subcommand};

/// vmd runs the store's legacy VMs (POS back office, NVR…) on libvirt, from the `kind: vm`
/// workloads of a store profile.
///
/// Normally it runs as a service (`vmd serve`, started by systemd) and nodeagent drives it.
/// The other commands talk to that service when it runs, and work directly on libvirt and the
/// state folder when it does not (e.g. from the recovery console).
#[derive(Parser)]
#[command(name = "vmd", version)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: serve the local API, adopt the VMs applied before, keep them running.
    Serve {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        access: backroom_daemon::socket::SocketArgs,
    },
    /// Apply the VMs of a store profile file (rendered with its layers), then exit.
    Apply {
        /// The store profile (YAML).
        file: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Show every VM: state, since when, restarts, revision, addresses, health.
    List(Common),
    /// Print the tail of a VM's serial console log.
    Logs {
        name: String,
        /// How many bytes from the end.
        #[arg(long, default_value_t = 65536)]
        bytes: u32,
        #[command(flatten)]
        common: Common,
    },
    /// Attach this terminal to a VM's serial console (Ctrl-] leaves).
    Console {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Shut a VM down (gracefully, then forcibly after --shutdown-timeout); it stays stopped.
    Stop {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Start a stopped VM (undoes `stop`).
    Start {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Restart a VM (graceful shutdown, then start).
    Restart {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Remove every VM vmd made (their overlays and seeds too). Data disks and cached images
    /// stay unless --purge. The daemon must be stopped first.
    Teardown {
        /// Also delete data disks and the image cache.
        #[arg(long)]
        purge: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Tell which virtualisation type --virt-type gives on this machine, and why.
    VirtType(Common),
}

#[derive(Args, Clone)]
struct Common {
    /// The daemon's socket.
    #[arg(long, default_value = "/run/backroom/vmd.sock", env = "VMD_SOCKET")]
    socket: PathBuf,
    /// Where vmd keeps images, disks, seeds, console logs and its state.
    #[arg(long, default_value = "/var/lib/backroom/vmd", env = "VMD_STATE_DIR")]
    state_dir: PathBuf,
    /// libvirt connection.
    #[arg(long, default_value = "qemu:///system", env = "VMD_LIBVIRT_URI")]
    libvirt_uri: String,
    /// kvm, qemu (TCG emulation), or auto: KVM when a test guest really runs under it.
    #[arg(long, value_enum, default_value = "auto", env = "VMD_VIRT_TYPE")]
    virt_type: VirtTypeSetting,
    /// How long the KVM probe of --virt-type auto waits for its test guest.
    #[arg(long, default_value = "5s", value_parser = duration)]
    kvm_probe_timeout: Duration,
    /// The Linux kernel the KVM probe boots after its boot sector (default: the newest
    /// /boot/vmlinuz-*). Nested KVM can run a boot sector and still hang in a kernel.
    #[arg(long, env = "VMD_KVM_PROBE_KERNEL")]
    kvm_probe_kernel: Option<PathBuf>,
    /// netd's socket. Without it, vmd derives bridges and MACs itself and refuses `address: auto`.
    #[arg(long, env = "VMD_NETD_SOCKET")]
    netd_socket: Option<PathBuf>,
    /// Network namespace health probes run from (default: vmd's own).
    #[arg(long, env = "VMD_PROBE_NETNS")]
    probe_netns: Option<String>,
    /// How long a guest gets to power off before it is destroyed.
    #[arg(long, default_value = "60s", value_parser = duration)]
    shutdown_timeout: Duration,
    /// How long an updated VM must keep running for the update to count.
    #[arg(long, default_value = "10s", value_parser = duration)]
    settle: Duration,
    /// How long an updated VM with a health check has to become healthy.
    #[arg(long, default_value = "5m", value_parser = duration)]
    update_timeout: Duration,
    /// PEM certificates that https image downloads trust besides the system's store (e.g. HQ's
    /// private CA). A download is also checked against the profile's sha256 either way.
    #[arg(long, env = "VMD_IMAGE_CA")]
    image_ca: Option<PathBuf>,
    /// A folder that boot images named by a node path (`boot: {disk: {image: /…}}`) may come
    /// from; repeat it for more than one. Such a path must resolve (symlinks and `..` followed)
    /// to a regular file inside one of them, or the profile is refused and nothing is copied.
    #[arg(long = "image-folder", value_name = "DIR", default_value = backroom_vmd::images::DEFAULT_IMAGE_FOLDER)]
    image_folders: Vec<PathBuf>,
    /// Work on libvirt directly even when the daemon's socket answers.
    #[arg(long)]
    direct: bool,
}

fn duration(s: &str) -> Result<Duration, String> {
    s.parse::<backroom_profiles::Duration>().map(|d| d.to_std()).map_err(|e| e.to_string())
}

impl Common {
    fn config(&self) -> Config {
        Config {
            virt_type: self.virt_type,
            kvm_probe_timeout: self.kvm_probe_timeout,
            kvm_probe_kernel: self
                .kvm_probe_kernel
                .clone()
                .or_else(backroom_vmd::virt_type::default_probe_kernel),
            shutdown_timeout: self.shutdown_timeout,
            settle: self.settle,
            update_timeout: self.update_timeout,
            probe_netns: self.probe_netns.clone(),
            ..Config::default()
        }
    }

    /// vmd in this process, on libvirt, holding the state folder's lock.
    async fn local(&self, wait: Duration) -> Result<(Vmd, StateLock, Arc<Libvirt>)> {
        let layout = Layout::new(&self.state_dir);
        let (root, lf) = (layout.root().to_path_buf(), layout.lock_file());
        let lock = tokio::task::spawn_blocking(move || backroom_vmd::state::lock(&root, &lf, wait))
            .await??;
        let uri = self.libvirt_uri.clone();
        let hv = Arc::new(tokio::task::spawn_blocking(move || Libvirt::open(&uri)).await??);
        let nics: Arc<dyn NicSource> = match &self.netd_socket {
            Some(p) => Arc::new(NetdNics::new(p)),
            None => Arc::new(StaticNics),
        };
        let deps = Deps {
            hypervisor: hv.clone() as Arc<dyn Hypervisor>,
            storage: Arc::new(
                FsStorage::with_image_ca(layout.clone(), self.image_ca.as_deref())?
                    .with_image_folders(self.image_folders.clone()),
            ),
            nics,
        };
        Ok((Vmd::new(deps, layout, self.config())?, lock, hv))
    }

    /// The daemon's client, when its socket answers (and --direct is not given).
    async fn daemon(
        &self,
    ) -> Option<backroom_api::vmd::vmd_client::VmdClient<tonic::transport::Channel>> {
        if self.direct || !self.socket.exists() {
            return None;
        }
        client::vmd_client(&self.socket).await.ok()
    }
}

/// How long the supervisor's loop may go without a turn before systemd's watchdog is no
/// longer fed.
const LOOP_STALE: Duration = Duration::from_secs(20);

fn main() -> std::process::ExitCode {
    // One malloc arena for the whole process: a control-plane daemon gains nothing from glibc's
    // per-thread arenas, and each keeps megabytes of freed memory resident (idle RSS budget).
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let cli = Cli::parse();
    cli.log.init("info");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vmd: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmd: {}", backroom_daemon::chain(e.as_ref()));
            std::process::ExitCode::from(1)
        }
    }
}

fn print_status(vms: &[backroom_api::vmd::VmStatus]) {
    if vms.is_empty() {
        println!("no VMs");
        return;
    }
    println!(
        "{:<20} {:<9} {:<20} {:>8} {:<12} {:<9} {:<20} REASON",
        "NAME", "STATE", "SINCE", "RESTARTS", "REVISION", "HEALTH", "ADDRESSES"
    );
    for v in vms {
        let since = if v.since_unix > 0 { format!("{}", v.since_unix) } else { "-".into() };
        println!(
            "{:<20} {:<9} {:<20} {:>8} {:<12} {:<9} {:<20} {}",
            v.name,
            v.state,
            since,
            v.restarts,
            short(&v.revision, 12),
            v.health,
            if v.addresses.is_empty() { "-".into() } else { v.addresses.join(",") },
            v.reason
        );
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { common, access } => serve_daemon(common, access).await,
        Command::Apply { file, common } => {
            let r = backroom_profiles::render_file(&file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            for w in &r.warnings {
                eprintln!("{w}");
            }
            if let Some(mut d) = common.daemon().await {
                let req = backroom_api::vmd::ApplyRequest {
                    revision: r.revision.as_str().into(),
                    profile_yaml: r.to_yaml(),
                };
                let reply = d.apply(req).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?;
                for a in reply.into_inner().actions {
                    println!("{a}");
                }
            } else {
                let (vmd, _lock, _hv) = common.local(Duration::ZERO).await?;
                let out = vmd.apply(&r).await;
                match out {
                    Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
                    Err(backroom_vmd::Error::Failed { actions, failures, .. }) => {
                        actions.iter().for_each(|l| println!("{l}"));
                        bail!("{} VM change(s) failed: {}", failures.len(), failures.join("; "));
                    }
                    Err(e) => return Err(e.into()),
                }
                eprintln!(
                    "applied revision {} directly (no daemon: restart policies act once `vmd serve` runs)",
                    r.revision.as_str()
                );
            }
            Ok(())
        }
        Command::List(c) => {
            let (vms, problems) = if let Some(mut d) = c.daemon().await {
                let r = d
                    .list(backroom_api::vmd::ListRequest {})
                    .await
                    .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                    .into_inner();
                (r.vms, r.problems)
            } else {
                let (vmd, _lock, _hv) = c.local(Duration::ZERO).await?;
                vmd.observe().await?;
                let problems = vmd.problems().into_iter().map(problem_pb).collect();
                (vmd.list().into_iter().map(to_pb).collect(), problems)
            };
            print_status(&vms);
            if !problems.is_empty() {
                println!("\nproblems:");
                for p in &problems {
                    println!("  {} ({} tries failed): {}", p.subject, p.failures, p.message);
                }
            }
            Ok(())
        }
        Command::Logs { name, bytes, common } => {
            let data = if let Some(mut d) = common.daemon().await {
                d.console_log(backroom_api::vmd::ConsoleLogRequest { name, max_bytes: bytes })
                    .await
                    .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                    .into_inner()
                    .data
            } else {
                let path = Layout::new(&common.state_dir).console_log(&name);
                if !path.exists() {
                    bail!("no console log for VM `{name}` at {}", path.display());
                }
                backroom_vmd::manager::read_tail(&path, bytes as usize)?
            };
            use std::io::Write;
            std::io::stdout().write_all(&data)?;
            Ok(())
        }
        Command::Console { name, common } => {
            let uri = common.libvirt_uri.clone();
            tokio::task::spawn_blocking(move || backroom_vmd::console::attach(&uri, &name))
                .await??;
            Ok(())
        }
        Command::Stop { name, common } => vm_op(&common, &name, Op::Stop).await,
        Command::Start { name, common } => vm_op(&common, &name, Op::Start).await,
        Command::Restart { name, common } => vm_op(&common, &name, Op::Restart).await,
        Command::Teardown { purge, common } => {
            let (vmd, _lock, _hv) =
                common.local(Duration::ZERO).await.context("teardown works without the daemon")?;
            match vmd.teardown(purge).await {
                Ok(lines) => {
                    lines.iter().for_each(|l| println!("{l}"));
                    println!("teardown done ({} VM(s) removed)", lines.len());
                    Ok(())
                }
                Err(backroom_vmd::Error::Failed { actions, failures, .. }) => {
                    actions.iter().for_each(|l| println!("{l}"));
                    bail!("teardown left {} problem(s): {}", failures.len(), failures.join("; "))
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::VirtType(c) => {
            let probe_dir = std::env::temp_dir();
            let cfg = c.config();
            let choice = backroom_vmd::virt_type::choose(
                c.virt_type,
                &cfg.qemu_binary,
                &probe_dir,
                c.kvm_probe_timeout,
                cfg.kvm_probe_kernel.as_deref(),
            )
            .await;
            println!("{}: {}", choice.virt_type.domain_type(), choice.reason);
            Ok(())
        }
    }
}

#[derive(Clone, Copy)]
enum Op {
    Start,
    Stop,
    Restart,
}

async fn vm_op(c: &Common, name: &str, op: Op) -> Result<()> {
    let status = if let Some(mut d) = c.daemon().await {
        let req = backroom_api::vmd::VmRequest { name: name.into() };
        let r = match op {
            Op::Start => d.start(req).await,
            Op::Stop => d.stop(req).await,
            Op::Restart => d.restart(req).await,
        };
        r.map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_inner().vm
    } else {
        let (vmd, _lock, _hv) = c.local(Duration::ZERO).await?;
        vmd.observe().await?;
        let s = match op {
            Op::Start => vmd.start_vm(name).await,
            Op::Stop => vmd.stop_vm(name).await,
            Op::Restart => vmd.restart_vm(name).await,
        }?;
        Some(to_pb(s))
    };
    print_status(&status.into_iter().collect::<Vec<_>>());
    Ok(())
}

async fn serve_daemon(c: Common, access: backroom_daemon::socket::SocketArgs) -> Result<()> {
    let access = access.access().context("--socket-group")?;
    let (vmd, _lock, hv) = c.local(Duration::from_secs(15)).await?;
    tracing::info!(socket = %c.socket.display(), state_dir = %c.state_dir.display(), libvirt = hv.uri(), "vmd starting");
    // The probe runs now, in the background; Apply waits for it when it needs it.
    {
        let v = vmd.clone();
        tokio::spawn(async move {
            v.virt().await;
        });
    }
    let supervisor = vmd.supervise();
    {
        let v = vmd.clone();
        tokio::spawn(async move {
            match v.adopt().await {
                Ok(lines) => lines.iter().for_each(|l| tracing::info!("adopt: {l}")),
                Err(e) => tracing::error!(error = %backroom_daemon::Chain(&e), "adopt failed"),
            }
        });
    }
    // systemd's watchdog is fed only while the supervisor's loop turns (it beats every
    // second; a probe round is bounded by the probes' timeouts): a wedged loop gets vmd
    // restarted, and the restarted vmd adopts its VMs.
    let heartbeat = vmd.heartbeat();
    backroom_daemon::notify::spawn_watchdog(move || {
        let fresh = heartbeat.fresh(LOOP_STALE);
        async move { fresh }
    });
    let shutdown = async {
        let which = backroom_daemon::signal::shutdown().await;
        tracing::info!(signal = which, "vmd stopping (VMs keep running)");
        backroom_daemon::notify::stopping();
    };
    let ready = || {
        tracing::info!("vmd ready");
        backroom_daemon::notify::ready();
    };
    serve(vmd, &c.socket, access, ready, shutdown).await?;
    supervisor.stop();
    Ok(())
}
