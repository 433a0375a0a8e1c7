//! The cloud-init NoCloud seed of a VM: `meta-data`, `user-data` and a version 2
//! `network-config` carrying the addresses netd (or the profile) gave its NICs. Pure: the bytes
//! depend on the spec and NICs only; `storage.rs` writes them as an ISO 9660 volume labelled
//! `cidata`.

use std::fmt::Write;

use backroom_profiles::VmSpec;
use sha2::{Digest, Sha256};

use crate::nics::Nic;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    /// 12 hex digits that change whenever the content does (it names the file, and the
    /// instance-id, so cloud-init applies a changed network config).
    pub id: String,
    pub meta_data: String,
    pub user_data: String,
    pub network_config: String,
}

/// The seed of `vm`, or `None` when it needs none: a VM gets a seed when its profile gives
/// `cloud_init` or it has a network (so a cloud image learns its addresses).
pub fn build(vm: &VmSpec, nics: &[Nic]) -> Option<Seed> {
    if vm.cloud_init.is_none() && nics.is_empty() {
        return None;
    }
    let name = vm.name.as_str();
    let user_data = match &vm.cloud_init {
        Some(c) => c.user_data.clone(),
        None => "#cloud-config\n{}\n".to_string(),
    };
    let network_config = network_config(nics);
    let mut h = Sha256::new();
    for part in [name, &user_data, &network_config] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let id = hex::encode(&h.finalize()[..6]);
    let meta_data = format!("instance-id: {name}-{id}\nlocal-hostname: {name}\n");
    Some(Seed { id, meta_data, user_data, network_config })
}

/// cloud-init network config version 2: NICs matched by MAC, named eth0… in profile order,
/// fixed addresses, and one default route (the first NIC that has a gateway).
pub fn network_config(nics: &[Nic]) -> String {
    let mut x = String::from("version: 2\nethernets:\n");
    let mut default_route = false;
    for (i, n) in nics.iter().enumerate() {
        let _ = writeln!(x, "  eth{i}:");
        let _ = writeln!(x, "    match:\n      macaddress: \"{}\"", n.mac);
        let _ = writeln!(x, "    set-name: eth{i}");
        match n.address {
            Some(a) => {
                let _ = writeln!(x, "    addresses:\n      - \"{a}\"");
            }
            None => {
                let _ = writeln!(x, "    dhcp4: false");
            }
        }
        if let (Some(gw), false, Some(_)) = (n.gateway, default_route, n.address) {
            let _ = writeln!(x, "    routes:\n      - to: default\n        via: {gw}");
            default_route = true;
        }
    }
    if nics.is_empty() {
        x = "version: 2\nethernets: {}\n".into();
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(yaml_cloud_init: bool) -> VmSpec {
        let ci = if yaml_cloud_init {
            "    cloud_init:\n      user_data: |\n        #cloud-config\n        hostname: nvr\n"
        } else {
            ""
        };
        let text = format!(
            "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {{name: t}}\n\
             network:\n  segments:\n    - {{name: cctv, internal: true, subnet: 10.9.20.0/24, address: 10.9.20.1/24, nat: true}}\n\
             workloads:\n  - name: nvr\n    kind: vm\n    cpus: 1\n    memory: 256Mi\n\
             \x20   boot: {{kernel: {{kernel: /k}}}}\n    networks: [{{segment: cctv, address: 10.9.20.5}}]\n{ci}"
        );
        let r = backroom_profiles::render_str("t.yaml", &text).unwrap();
        r.profile.vms().next().unwrap().clone()
    }

    fn nics() -> Vec<Nic> {
        vec![Nic {
            segment: "cctv".into(),
            bridge: "br-cctv".into(),
            mac: "02:42:00:00:00:05".into(),
            address: Some("10.9.20.5/24".parse().unwrap()),
            gateway: Some("10.9.20.1".parse().unwrap()),
        }]
    }

    #[test]
    fn seed_carries_user_data_and_addresses() {
        let s = build(&vm(true), &nics()).unwrap();
        assert!(s.user_data.contains("hostname: nvr"));
        assert_eq!(
            s.network_config,
            "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: \"02:42:00:00:00:05\"\n    \
             set-name: eth0\n    addresses:\n      - \"10.9.20.5/24\"\n    routes:\n      - to: default\n        via: 10.9.20.1\n"
        );
        assert_eq!(s.meta_data, format!("instance-id: nvr-{}\nlocal-hostname: nvr\n", s.id));
    }

    #[test]
    fn id_follows_content() {
        let a = build(&vm(true), &nics()).unwrap();
        let mut other = nics();
        other[0].address = Some("10.9.20.6/24".parse().unwrap());
        let b = build(&vm(true), &other).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(a, build(&vm(true), &nics()).unwrap());
    }

    #[test]
    fn no_seed_without_cloud_init_or_networks() {
        assert!(build(&vm(false), &[]).is_none());
        assert!(build(&vm(false), &nics()).unwrap().user_data.starts_with("#cloud-config"));
    }
}
