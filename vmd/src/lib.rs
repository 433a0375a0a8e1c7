//! vmd: the store's legacy VMs (a back-office POS server, an NVR appliance) on libvirt.
//!
//! It owns the `kind: vm` workloads of a rendered store profile: the domain XML (a pure
//! function of the VM spec, [`xml`]), base images (downloaded, verified, cached by digest,
//! [`images`]), copy-on-write root overlays and persistent data disks ([`storage`]), cloud-init
//! NoCloud seeds ([`seed`]), the lifecycle with graceful shutdown, restart policies with
//! backoff driven by libvirt's lifecycle events ([`supervise`]), updates that roll back when
//! the new VM does not come up, adoption of its own domains (found by their metadata) after a
//! restart, admission ([`admission`]), and the virtualisation type with a real KVM probe
//! ([`virt_type`]). [`manager::Vmd`] is the core; [`server`] its gRPC front end.
//!
//! It does not own networks: bridges, addresses and the firewall are netd's (VM NICs are put on
//! netd's `br-<segment>` bridges, [`nics`]); health-driven runbooks and the profile's desired
//! state are nodeagent's. It never touches a domain that does not carry its metadata.

pub mod admission;
pub mod client;
pub mod console;
mod disks;
pub mod error;
pub mod health;
pub mod hypervisor;
pub mod images;
pub mod layout;
pub mod libvirt;
pub mod manager;
pub mod nics;
pub mod plan;
pub mod seed;
pub mod server;
pub mod state;
pub mod storage;
pub mod supervise;
pub mod types;
mod update;
pub mod virt_type;
pub mod xml;

pub use error::{Error, LibvirtCause, Result};
pub use manager::{Config, Deps, HealthState, VmEvent, VmState, VmStatus, Vmd};
