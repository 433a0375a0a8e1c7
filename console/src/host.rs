//! What the console reads from the kernel itself, so the board still says something when the
//! daemons do not answer: cpu, memory and disk use, and the uplink (carrier, addresses, default
//! gateway, DNS servers) in the console's network namespace.

use std::path::Path;

use crate::model::{Host, Uplink};

/// Cpu use needs two samples: this keeps the last one.
#[derive(Debug, Default)]
pub struct CpuMeter {
    last: Option<(u64, u64)>,
}

impl CpuMeter {
    /// Busy share since the last call (None on the first).
    pub fn sample(&mut self) -> Option<u8> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let now = parse_cpu(&stat)?;
        let prev = self.last.replace(now);
        let (busy0, total0) = prev?;
        let (busy, total) = now;
        let dt = total.saturating_sub(total0);
        if dt == 0 {
            return Some(0);
        }
        Some(((busy.saturating_sub(busy0)) * 100 / dt).min(100) as u8)
    }
}

/// (busy, total) jiffies from /proc/stat's first line.
pub fn parse_cpu(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    if v.len() < 4 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// (used, total) bytes from /proc/meminfo.
pub fn parse_meminfo(s: &str) -> Option<(u64, u64)> {
    let kb = |key: &str| {
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let total = kb("MemTotal:")?;
    let avail = kb("MemAvailable:")?;
    Some(((total - avail.min(total)) * 1024, total * 1024))
}

pub fn host(cpu: &mut CpuMeter, disk_of: &Path) -> Host {
    let (mem_used, mem_total) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_meminfo(&s))
        .unwrap_or_default();
    let (disk_used, disk_total) = rustix::fs::statvfs(disk_of)
        .map(|st| {
            let total = st.f_blocks * st.f_frsize;
            (total - st.f_bfree * st.f_frsize, total)
        })
        .unwrap_or_default();
    Host { cpu_percent: cpu.sample(), mem_used, mem_total, disk_used, disk_total }
}

/// Runs `ip -j ARGS` (in the namespace `netns` if given) and returns its JSON.
async fn ip_json(netns: Option<&str>, args: &[&str]) -> serde_json::Value {
    let mut cmd = tokio::process::Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.arg("-j").args(args).kill_on_drop(true);
    match tokio::time::timeout(std::time::Duration::from_secs(3), cmd.output()).await {
        Ok(Ok(out)) => serde_json::from_slice(&out.stdout).unwrap_or_default(),
        _ => serde_json::Value::Null,
    }
}

/// IPv4 addresses (CIDR) in `ip -j addr` output.
pub fn parse_addrs(v: &serde_json::Value) -> Vec<String> {
    let mut out = vec![];
    for link in v.as_array().into_iter().flatten() {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            if let (Some(ip), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) {
                out.push(format!("{ip}/{len}"));
            }
        }
    }
    out
}

/// (gateway, device) of the default route in `ip -j route show default` output.
pub fn parse_default_route(v: &serde_json::Value) -> Option<(String, String)> {
    let r = v.as_array()?.iter().find(|r| r["dst"] == "default")?;
    Some((r["gateway"].as_str()?.to_string(), r["dev"].as_str().unwrap_or_default().to_string()))
}

/// Whether the link has carrier (`LOWER_UP`), from `ip -j link show dev X`; None: no such link.
pub fn parse_carrier(v: &serde_json::Value) -> Option<bool> {
    let l = v.as_array()?.first()?;
    Some(l["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "LOWER_UP")))
}

/// The first Ethernet link that is not virtual (what `uplink: auto` picks), preferring one
/// with carrier, from `ip -j -d link`.
pub fn parse_first_physical(v: &serde_json::Value) -> Option<String> {
    let mut phys: Vec<(bool, String)> = v
        .as_array()?
        .iter()
        .filter(|l| l["link_type"] == "ether" && l["linkinfo"].is_null())
        .filter_map(|l| {
            let up = l["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "LOWER_UP"));
            Some((!up, l["ifname"].as_str()?.to_string()))
        })
        .collect();
    phys.sort();
    phys.into_iter().next().map(|(_, n)| n)
}

pub fn parse_resolv_conf(s: &str) -> Vec<String> {
    s.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The uplink as the kernel has it in `netns` (None: the console's own). `profile_uplink` is
/// the profile's (`auto` or a name); `host_bridge` holds the host's untagged address once netd
/// made it (the uplink is then a port of that bridge, with no address of its own).
pub async fn uplink(
    netns: Option<&str>,
    profile_uplink: &str,
    host_bridge: Option<&str>,
) -> Uplink {
    let (gateway, route_dev) =
        parse_default_route(&ip_json(netns, &["route", "show", "default"]).await)
            .unwrap_or_default();
    let interface = match profile_uplink {
        "" | "auto" => parse_first_physical(&ip_json(netns, &["-d", "link", "show"]).await)
            .unwrap_or(route_dev),
        name => name.to_string(),
    };
    let carrier = parse_carrier(&ip_json(netns, &["link", "show", "dev", &interface]).await);
    let mut addresses =
        parse_addrs(&ip_json(netns, &["-4", "addr", "show", "dev", &interface]).await);
    if addresses.is_empty()
        && let Some(br) = host_bridge
    {
        addresses = parse_addrs(&ip_json(netns, &["-4", "addr", "show", "dev", br]).await);
    }
    let ns_conf = netns.map(|n| std::path::PathBuf::from(format!("/etc/netns/{n}/resolv.conf")));
    let conf = ns_conf
        .filter(|p| p.exists())
        .unwrap_or_else(|| std::path::PathBuf::from("/etc/resolv.conf"));
    let dns = parse_resolv_conf(&std::fs::read_to_string(conf).unwrap_or_default());
    Uplink { carrier, interface, addresses, gateway, dns }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_files() {
        assert_eq!(parse_cpu("cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 1"), Some((20, 100)));
        assert_eq!(
            parse_meminfo("MemTotal:       1000 kB\nMemFree: 1 kB\nMemAvailable:    250 kB\n"),
            Some((750 * 1024, 1000 * 1024))
        );
        let route =
            serde_json::json!([{"dst": "default", "gateway": "10.99.0.1", "dev": "br-mgmt"}]);
        assert_eq!(parse_default_route(&route), Some(("10.99.0.1".into(), "br-mgmt".into())));
        let link = serde_json::json!([{"ifname": "up0", "flags": ["BROADCAST", "UP", "LOWER_UP"]}]);
        assert_eq!(parse_carrier(&link), Some(true));
        assert_eq!(parse_carrier(&serde_json::json!([])), None);
        let links = serde_json::json!([
            {"ifname": "lo", "link_type": "loopback", "flags": ["LOWER_UP"]},
            {"ifname": "veth0", "link_type": "ether", "flags": ["LOWER_UP"], "linkinfo": {"info_kind": "veth"}},
            {"ifname": "eno2", "link_type": "ether", "flags": ["UP"]},
            {"ifname": "eno1", "link_type": "ether", "flags": ["UP", "LOWER_UP"]}
        ]);
        assert_eq!(parse_first_physical(&links).as_deref(), Some("eno1"));
        assert_eq!(
            parse_resolv_conf("# x\nnameserver 10.0.0.53\nsearch a\nnameserver ::1\n"),
            ["10.0.0.53", "::1"]
        );
        let ip = serde_json::json!([{"ifname":"up0","addr_info":[{"family":"inet","local":"10.9.0.2","prefixlen":24}]}]);
        assert_eq!(parse_addrs(&ip), ["10.9.0.2/24"]);
    }
}
