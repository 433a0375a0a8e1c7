//! netd: the store's networks from the profile.
//!
//! It will own the host's networking on a store server: the uplink's VLAN sub-interfaces, the
//! segment bridges, host addresses, workload endpoints and IPAM, and the `inet`/`bridge`
//! `backroom` nftables tables, with commit-confirm rollback. Not built yet (issue 3): this crate
//! holds no code that pretends to work.
