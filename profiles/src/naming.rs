//! Names and addresses derived from a profile, shared by netd, vmd and nodeagent so that each
//! computes the same ones without asking the others.
//!
//! Kernel interface names are at most 15 bytes, and workload names go to 31 characters, so
//! per-workload interface names are derived from a hash.

use sha2::{Digest, Sha256};

/// The bridge that carries a segment: `br-<segment>` (segment names are at most 10 characters).
pub fn bridge(segment: &str) -> String {
    format!("br-{segment}")
}

/// The network namespace of a container workload's instance, under `/run/netns/`.
/// The primary instance is `bk-<workload>`; another (e.g. `next` during an update) is
/// `bk-<workload>--<instance>`.
pub fn netns(workload: &str, instance: &str) -> String {
    if instance.is_empty() {
        format!("bk-{workload}")
    } else {
        format!("bk-{workload}--{instance}")
    }
}

fn hash(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

/// The host side of a container's veth on its `index`-th network: `bk` + 10 hex digits + index
/// digit(s), e.g. `bk3f2a9c1d0b1` (at most 15 bytes).
pub fn host_veth(workload: &str, instance: &str, index: usize) -> String {
    let h = hash(&["veth", workload, instance]);
    format!("bk{}{}", &hex::encode(&h[..5]), index)
}

/// A stable, locally administered unicast MAC for a workload's interface on a segment.
pub fn mac(workload: &str, segment: &str) -> [u8; 6] {
    let h = hash(&["mac", workload, segment]);
    // 0x02: locally administered, unicast.
    [0x02, 0x42, h[0], h[1], h[2], h[3]]
}

/// How the host-side tap of every VM NIC begins (vmd names them; netd holds the traffic of one
/// it has not put in its firewall yet, so a new VM is never unfiltered inside its segment).
pub const VM_TAP_PREFIX: &str = "bkt";

/// The host-side tap of a VM's `index`-th NIC: `bkt` and 10 hex digits, stable for the VM (the
/// kernel allows 15 characters).
pub fn vm_tap(vm: &str, index: usize) -> String {
    let h = hash(&["tap", vm, &index.to_string()]);
    let hex: String = h[..5].iter().map(|b| format!("{b:02x}")).collect();
    format!("{VM_TAP_PREFIX}{hex}")
}

pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The name of a workload's `index`-th interface inside its namespace: `eth0`, `eth1`…
pub fn container_ifname(index: usize) -> String {
    format!("eth{index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limit_and_are_stable() {
        let long = "a".repeat(31);
        assert!(host_veth(&long, "next", 9).len() <= 15);
        assert_eq!(host_veth("orders", "", 0), host_veth("orders", "", 0));
        assert_ne!(host_veth("orders", "", 0), host_veth("orders", "next", 0));
        assert_eq!(bridge("selfcheck"), "br-selfcheck");
        assert_eq!(netns("orders", ""), "bk-orders");
        assert_eq!(netns("orders", "next"), "bk-orders--next");
        let m = mac("nvr", "cctv");
        assert_eq!(m, mac("nvr", "cctv"));
        assert_eq!(m[0] & 0x03, 0x02, "locally administered unicast");
        assert_eq!(mac_string([0x02, 0x42, 0, 1, 0xab, 0xff]), "02:42:00:01:ab:ff");
    }
}
