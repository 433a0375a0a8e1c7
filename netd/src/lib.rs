//! netd: the store's networks from the profile.
//!
//! netd owns the host's networking on a store server: the uplink's VLAN sub-interfaces, the
//! segment bridges `br-<segment>`, the host's addresses and default routes on them (static or
//! by its own DHCP client), workload endpoints (container namespaces and veths; bridge, MAC and
//! address for VM NICs) with their IPAM, and the nftables tables `inet backroom` and `bridge
//! backroom`, with commit-confirm rollback and drift repair.
//!
//! Shape: the [`Engine`] plans as data and applies in one place; every outside system is behind
//! a trait with a real and an in-memory implementation (links: [`rtnl`], nftables: [`nft`],
//! endpoints: [`endpoints`], DHCP: [`dhcp`], time: `backroom_daemon::Clock`). [`server`] is the
//! daemon: the gRPC API and the loops, whose failures become one `failing` and one `recovered`
//! event each. Daemon plumbing (socket, systemd, logging, signals, state files and lock,
//! namespaces, error chains, backoff) is `backroom_daemon`'s.
//!
//! The uplink override ([`overrides`]) is a time-boxed break-glass for one segment (a static
//! address, gateway, DNS and VLAN instead of the profile's): part of the applied state, so the
//! engine plans with it, and ended by the daemon's loop when it expires.
//!
//! It touches only what it made: links carry the alias `backroom-netd`, routes the protocol
//! number [`links::RTPROT_NETD`], namespaces are recorded in its state directory, and the two
//! tables are its own. It does not run containers or VMs (nodeagent and vmd do), and it does not
//! filter traffic the host itself sends.

pub mod dhcp;
pub mod endpoints;
pub mod engine;
pub mod error;
pub mod firewall;
pub mod ipam;
pub mod links;
pub mod netns;
pub mod nft;
pub mod nl;
pub mod overrides;
pub mod rtnl;
pub mod server;
pub mod state;

pub use engine::{Engine, Outcome};
pub use error::{Error, Result};
