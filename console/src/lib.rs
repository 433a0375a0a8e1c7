//! The recovery console: `nodectl console`, a full-screen terminal program on the store
//! server's own screen (tty1), its serial line (ttyS0) or SSH, for the person in front of the box
//! while HQ is on the phone. No WAN and no shell needed.
//!
//! - **Board** ([`view`]): the store, its revisions, the link with central (and why it is down),
//!   the uplink, each network, each app worst first, open problems and recent actions, cpu,
//!   memory and disk, in words a store manager can read aloud.
//! - **App**: details and the log (followed); a VM's serial console.
//! - **Network**: uplink and segments in detail, and checks ([`checks`]): ping the gateway,
//!   resolve and reach central, reach the registry.
//! - **Actions**: restart an app, roll back, apply again, enroll again, the time-boxed uplink
//!   override, a support bundle on a USB stick ([`bundle`]), restart the daemons.
//!
//! Anyone sees the board; actions need a code from HQ (`centralctl store console-code`), which
//! nodeagent checks with no WAN ([`backroom_session::console_code`]); `staff` may restart apps,
//! `technician` may do everything. With nodeagent down the console checks the code itself and
//! keeps a record nodeagent sends to central later ([`backend::PENDING_FILE`]).
//!
//! The shape: [`app::App`] is a state machine (keys and results in, [`app::Effect`]s out) with
//! no I/O; [`view`] draws it (ASCII and eight colours, 80x24); [`backend::Backend`] is where facts
//! come from and actions go ([`backend::Node`], the real node); [`run`] is the terminal loop.

pub mod app;
pub mod backend;
pub mod bundle;
pub mod checks;
pub mod host;
pub mod model;
pub mod run;
pub mod view;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What `nodectl console --help` says after the options: the screens and keys.
pub const HELP: &str = "\
Screens (every screen shows its keys on the bottom line):
  Board     what is wrong, worst first: central (online, or offline since when and why), the
            uplink (cable, address, gateway, DNS), each network, each app, problems, cpu,
            memory and disk.  Up/Down and Enter open an app; n network; a actions; u unlock.
  App       its details and its log (f follows or stops); for a VM, s attaches to its serial
            console (Ctrl-] comes back); r restarts it.
  Network   the uplink and each segment; 1 pings the gateway, 2 reaches central, 3 reaches the
            registry; o sets the uplink override, k keeps it, x ends it.
  Actions   1-9: restart an app (staff code), roll back, apply again, uplink override, end it,
            support bundle to the USB stick, restart the services, enroll again (technician).
Codes: HQ runs `centralctl store console-code STORE --role staff|technician --ttl 1h` and reads
the code out (e.g. K7QMX-2HD9P); type it after u, or when an action asks. Five wrong codes lock
the console for a minute, then longer. It locks itself after 15 minutes without a key.
Ctrl-L draws the screen again (after noise on a serial line).";

/// `nodectl console`'s options. The defaults are the store OS image's paths.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// netd's socket.
    #[arg(long, default_value = "/run/backroom/netd.sock")]
    pub netd_socket: PathBuf,
    /// vmd's socket.
    #[arg(long, default_value = "/run/backroom/vmd.sock")]
    pub vmd_socket: PathBuf,
    /// nodeagent's state folder (its disk, its console secret).
    #[arg(long, default_value = "/var/lib/backroom")]
    pub state_dir: PathBuf,
    /// netd's state folder (its files go into support bundles).
    #[arg(long, default_value = "/var/lib/backroom/netd")]
    pub netd_state_dir: PathBuf,
    /// vmd's state folder.
    #[arg(long, default_value = "/var/lib/backroom/vmd")]
    pub vmd_state_dir: PathBuf,
    /// A folder where a USB stick is already mounted. Without it, the console mounts the stick
    /// whose filesystem is labelled BACKROOM when it needs one.
    #[arg(long)]
    pub stick: Option<PathBuf>,
    /// A systemd unit of the Backroom daemons (restarted by the "restart the services" action).
    #[arg(long = "service", default_values = ["netd.service", "vmd.service", "nodeagent.service"])]
    pub services: Vec<String>,
    /// The network namespace of the store's networks when it is not the console's own
    /// (development and tests).
    #[arg(long)]
    pub netns: Option<String>,
    /// libvirt's URI, for a VM's serial console.
    #[arg(long, default_value = "qemu:///system")]
    pub libvirt_uri: String,
    /// How often the screen reads the node again, in seconds.
    #[arg(long, default_value_t = 2)]
    pub refresh_seconds: u64,
}

/// Runs the console against this node's daemons; `nodeagent_socket` is nodectl's `--socket`.
pub async fn main(args: Args, nodeagent_socket: PathBuf) -> anyhow::Result<()> {
    let vmd = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("vmd")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("vmd"));
    let node = backend::Node::new(backend::NodeConfig {
        nodeagent_socket,
        netd_socket: args.netd_socket,
        vmd_socket: args.vmd_socket,
        state_dir: args.state_dir,
        netd_state_dir: args.netd_state_dir,
        vmd_state_dir: args.vmd_state_dir,
        stick: args.stick,
        services: args.services,
        netns: args.netns,
        bundle_cap: bundle::DEFAULT_CAP,
        first_boot_status: PathBuf::from(backend::FIRST_BOOT_STATUS),
    });
    node.follow_events();
    let opts = run::Options {
        refresh: Duration::from_secs(args.refresh_seconds.max(1)),
        serial_command: vec![
            vmd.display().to_string(),
            "console".into(),
            "--libvirt-uri".into(),
            args.libvirt_uri,
        ],
    };
    run::run(Arc::new(node), opts).await
}
