//! How `centralctl profile …` shows results to an operator: findings as
//! `file:line:column: severity: message`, and a short summary per valid store.

use std::fmt::Write as _;

use backroom_profiles::{Diagnostic, HostAddress, Rendered, Workload};

/// One line per finding, in file order.
pub fn diagnostics(diags: &[Diagnostic]) -> String {
    diags.iter().map(|d| format!("{d}\n")).collect()
}

/// `ok  rev 3f2a9c1d0b7e  coffee-shop 2026.11.2: 5 segments, 3 workloads (2 containers, 1 vm), 7 rules`
pub fn one_line(r: &Rendered) -> String {
    let p = &r.profile;
    let containers = p.containers().count();
    let vms = p.vms().count();
    format!(
        "rev {}  {}{}: {} segments, {} workloads ({} containers, {} VMs), {} rules",
        r.revision.short(),
        p.metadata.name,
        p.metadata.version.as_deref().map(|v| format!(" {v}")).unwrap_or_default(),
        p.network.segments.len(),
        p.workloads.len(),
        containers,
        vms,
        p.network.firewall.allow.len(),
    )
}

/// A few lines per store: its segments and workloads, for `make run` and a quick look.
pub fn block(id: &str, r: &Rendered) -> String {
    let p = &r.profile;
    let mut out = String::new();
    let labels: Vec<String> = p.metadata.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(
        out,
        "{id}  rev {}  {} {}  [{}]",
        r.revision.short(),
        p.metadata.name,
        p.metadata.version.as_deref().unwrap_or("-"),
        labels.join(" ")
    );
    let segs: Vec<String> = p
        .network
        .segments
        .iter()
        .map(|s| {
            let place = match (s.internal, s.vlan) {
                (true, _) => "internal".to_string(),
                (false, Some(v)) => format!("vlan {v}"),
                (false, None) => "-".to_string(),
            };
            let addr = match s.address {
                HostAddress::None => String::new(),
                a => format!(" host {a}"),
            };
            format!("{} ({place}{addr})", s.name)
        })
        .collect();
    let _ = writeln!(out, "  segments:  {}", segs.join(", "));
    let wls: Vec<String> = p
        .workloads
        .iter()
        .map(|w| match w {
            Workload::Container(c) => format!(
                "{} (container {})",
                c.name,
                c.image.as_ref().and_then(|i| i.tag.clone()).unwrap_or_else(|| "?".into())
            ),
            Workload::Vm(v) => format!("{} (vm {} cpus {})", v.name, v.cpus, v.memory),
        })
        .collect();
    let _ = writeln!(out, "  workloads: {}", wls.join(", "));
    let _ = writeln!(
        out,
        "  firewall:  default {}, {} allow rules; {} runbooks",
        p.network.firewall.default,
        p.network.firewall.allow.len(),
        p.runbooks.len()
    );
    out
}
