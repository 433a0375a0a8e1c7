//! What changes between two rendered profiles, grouped the way an operator reads a store:
//! segments, firewall rules, workloads, runbooks (and the node and metadata), each with items
//! added, removed, and changed field by field (old → new).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::model::{Profile, Workload};
use crate::types::HostAddress;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProfileDiff {
    pub sections: Vec<SectionDiff>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SectionDiff {
    pub section: &'static str,
    pub added: Vec<ItemSummary>,
    pub removed: Vec<ItemSummary>,
    pub changed: Vec<ItemChange>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ItemSummary {
    pub name: String,
    pub summary: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ItemChange {
    /// Empty for sections that are one item (node, metadata, uplink, firewall default).
    pub name: String,
    pub fields: Vec<FieldChange>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

impl ProfileDiff {
    pub fn is_empty(&self) -> bool {
        self.sections.is_empty()
    }
}

/// Compares two canonical profiles.
pub fn diff(old: &Profile, new: &Profile) -> ProfileDiff {
    let mut sections = Vec::new();
    let mut single = |section: &'static str, a: Value, b: Value| {
        let fields = compare(&flatten(&a), &flatten(&b));
        if !fields.is_empty() {
            sections.push(SectionDiff {
                section,
                added: Vec::new(),
                removed: Vec::new(),
                changed: vec![ItemChange { name: String::new(), fields }],
            });
        }
    };
    single("metadata", json(&old.metadata), json(&new.metadata));
    single("node", json(&old.node), json(&new.node));
    single("uplink", json(&old.network.uplink), json(&new.network.uplink));
    single(
        "firewall default",
        json(&old.network.firewall.default),
        json(&new.network.firewall.default),
    );

    let named = |items: Vec<(String, Value, String)>| items;
    let seg = |p: &Profile| {
        named(
            p.network
                .segments
                .iter()
                .map(|s| (s.name.to_string(), json(s), segment_summary(s)))
                .collect(),
        )
    };
    let rules = |p: &Profile| {
        named(
            p.network
                .firewall
                .allow
                .iter()
                .map(|r| {
                    let ports = if r.ports.is_empty() {
                        "any port".to_string()
                    } else {
                        r.ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
                    };
                    (r.name.to_string(), json(r), format!("{} → {}, {ports}", r.from, r.to))
                })
                .collect(),
        )
    };
    let wls = |p: &Profile| {
        named(
            p.workloads
                .iter()
                .map(|w| (w.name().to_string(), json(w), workload_summary(w)))
                .collect(),
        )
    };
    let rbs = |p: &Profile| {
        named(
            p.runbooks
                .iter()
                .map(|r| (r.name.to_string(), json(r), format!("{} steps", r.steps.len())))
                .collect(),
        )
    };
    for (section, a, b) in [
        ("segments", seg(old), seg(new)),
        ("firewall rules", rules(old), rules(new)),
        ("workloads", wls(old), wls(new)),
        ("runbooks", rbs(old), rbs(new)),
    ] {
        if let Some(s) = list_section(section, a, b) {
            sections.push(s);
        }
    }
    // Keep the operator's reading order: network first, then what runs on it.
    let order = [
        "metadata",
        "node",
        "uplink",
        "segments",
        "firewall default",
        "firewall rules",
        "workloads",
        "runbooks",
    ];
    sections.sort_by_key(|s| order.iter().position(|o| *o == s.section));
    ProfileDiff { sections }
}

fn json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn segment_summary(s: &crate::model::Segment) -> String {
    let mut parts = Vec::new();
    match (s.internal, s.vlan) {
        (true, _) => parts.push("internal".to_string()),
        (false, Some(v)) => parts.push(format!("vlan {v}")),
        (false, None) => {}
    }
    if let Some(n) = s.subnet {
        parts.push(format!("subnet {n}"));
    }
    if s.address != HostAddress::None {
        parts.push(format!("host {}", s.address));
    }
    if s.nat {
        parts.push("nat".into());
    }
    parts.join(", ")
}

fn workload_summary(w: &Workload) -> String {
    match w {
        Workload::Container(c) => {
            format!("container {}", c.image.as_ref().map(ToString::to_string).unwrap_or_default())
        }
        Workload::Vm(v) => format!("vm, {} cpus, {}", v.cpus, v.memory),
    }
}

fn list_section(
    section: &'static str,
    old: Vec<(String, Value, String)>,
    new: Vec<(String, Value, String)>,
) -> Option<SectionDiff> {
    let old_map: BTreeMap<&str, (&Value, &str)> =
        old.iter().map(|(n, v, s)| (n.as_str(), (v, s.as_str()))).collect();
    let new_map: BTreeMap<&str, (&Value, &str)> =
        new.iter().map(|(n, v, s)| (n.as_str(), (v, s.as_str()))).collect();
    let mut d =
        SectionDiff { section, added: Vec::new(), removed: Vec::new(), changed: Vec::new() };
    for (name, (v, summary)) in &new_map {
        match old_map.get(name) {
            None => {
                d.added.push(ItemSummary { name: name.to_string(), summary: summary.to_string() })
            }
            Some((ov, _)) => {
                let fields = compare(&flatten(ov), &flatten(v));
                if !fields.is_empty() {
                    d.changed.push(ItemChange { name: name.to_string(), fields });
                }
            }
        }
    }
    for (name, (_, summary)) in &old_map {
        if !new_map.contains_key(name) {
            d.removed.push(ItemSummary { name: name.to_string(), summary: summary.to_string() });
        }
    }
    (!d.added.is_empty() || !d.removed.is_empty() || !d.changed.is_empty()).then_some(d)
}

/// Flattens a value to `path → text` leaves; lists of named maps are keyed by their name.
fn flatten(v: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    walk(v, String::new(), &mut out);
    out
}

fn walk(v: &Value, path: String, out: &mut Vec<(String, String)>) {
    let join = |k: &str| if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                walk(x, join(k), out);
            }
        }
        Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
            for (i, x) in items.iter().enumerate() {
                let key = x
                    .get("name")
                    .or_else(|| x.get("segment"))
                    .and_then(Value::as_str)
                    .map_or_else(|| i.to_string(), str::to_string);
                walk(x, format!("{path}[{key}]"), out);
            }
        }
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(leaf).collect();
            out.push((path, format!("[{}]", parts.join(", "))));
        }
        other => out.push((path, leaf(other))),
    }
}

fn leaf(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        other => other.to_string(),
    }
}

fn compare(a: &[(String, String)], b: &[(String, String)]) -> Vec<FieldChange> {
    let am: BTreeMap<&str, &str> = a.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let bm: BTreeMap<&str, &str> = b.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut out = Vec::new();
    // Fields in the new document's order, then those only the old one had.
    for (k, v) in b {
        match am.get(k.as_str()) {
            Some(old) if old == v => {}
            old => out.push(FieldChange {
                field: k.clone(),
                old: old.map(|s| s.to_string()),
                new: Some(v.clone()),
            }),
        }
    }
    for (k, v) in a {
        if !bm.contains_key(k.as_str()) {
            out.push(FieldChange { field: k.clone(), old: Some(v.clone()), new: None });
        }
    }
    out
}

impl fmt::Display for ProfileDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sections.is_empty() {
            return writeln!(f, "no changes");
        }
        for s in &self.sections {
            writeln!(f, "{}:", s.section)?;
            for a in &s.added {
                writeln!(f, "  + {}  ({})", a.name, a.summary)?;
            }
            for r in &s.removed {
                writeln!(f, "  - {}  ({})", r.name, r.summary)?;
            }
            for c in &s.changed {
                let pad = if c.name.is_empty() {
                    "  "
                } else {
                    writeln!(f, "  ~ {}", c.name)?;
                    "      "
                };
                for fc in &c.fields {
                    let field = if fc.field.is_empty() { s.section } else { &fc.field };
                    writeln!(
                        f,
                        "{pad}{field}: {} → {}",
                        fc.old.as_deref().unwrap_or("(not set)"),
                        fc.new.as_deref().unwrap_or("(not set)")
                    )?;
                }
            }
        }
        Ok(())
    }
}
