//! netd's nftables tables: the ruleset as data, its lowering to one batch, and the kernel.

pub mod batch;
pub mod kernel;
pub mod ruleset;

pub use kernel::{Caps, Firewall, MemFirewall, NetlinkFirewall, Seen, differences};
pub use ruleset::{Family, Ruleset};
