//! The merged YAML tree to the typed profile.
//!
//! Each section and each list item is read on its own, so one document reports every malformed
//! item at once rather than stopping at the first.

use serde::de::DeserializeOwned;

use crate::de::{DeError, from_node};
use crate::model::{
    API_VERSION, AllowRule, ContainerSpec, Firewall, KIND, Metadata, Network, NodeSpec, Profile,
    Runbook, Segment, Uplink, Verdict, VmSpec, Workload,
};
use crate::pos::Diagnostic;
use crate::yaml::{Node, Value};

struct Decoder {
    diags: Vec<Diagnostic>,
}

impl Decoder {
    fn push(&mut self, fallback: &Node, e: DeError) {
        let pos = e.pos.unwrap_or_else(|| fallback.pos.clone());
        self.diags.push(Diagnostic::error(pos, e.message));
    }

    fn item<T: DeserializeOwned>(&mut self, node: &Node, skip: &[&str]) -> Option<T> {
        match from_node::<T>(node, skip) {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(node, e);
                None
            }
        }
    }

    fn list<T: DeserializeOwned>(&mut self, node: Option<&Node>, what: &str) -> Vec<T> {
        let Some(node) = node else { return Vec::new() };
        match &node.value {
            Value::Null => Vec::new(),
            Value::Seq(items) => items.iter().filter_map(|i| self.item(i, &[])).collect(),
            _ => {
                self.diags.push(Diagnostic::error(
                    node.pos.clone(),
                    format!(
                        "`{what}` is a list (lines starting with `- `), not {}",
                        node.kind_name()
                    ),
                ));
                Vec::new()
            }
        }
    }

    /// Reports keys of a map node that are not in `allowed`; `false` if the node is not a map.
    fn keys(&mut self, node: &Node, what: &str, allowed: &[&str]) -> bool {
        match &node.value {
            Value::Map(entries) => {
                for (k, _) in entries {
                    let key = k.as_str().unwrap_or_default();
                    if !allowed.contains(&key) {
                        self.diags.push(Diagnostic::error(
                            k.pos.clone(),
                            format!(
                                "unknown field `{key}` in {what} (the fields allowed here are: {})",
                                allowed.join(", ")
                            ),
                        ));
                    }
                }
                true
            }
            Value::Null => true,
            _ => {
                self.diags.push(Diagnostic::error(
                    node.pos.clone(),
                    format!("{what} is a map of `key: value` lines, not {}", node.kind_name()),
                ));
                false
            }
        }
    }

    fn workload(&mut self, node: &Node) -> Option<Workload> {
        let kind = node.get("kind");
        match kind.and_then(Node::as_str) {
            Some("container") => {
                self.item::<ContainerSpec>(node, &["kind"]).map(Workload::Container)
            }
            Some("vm") => self.item::<VmSpec>(node, &["kind"]).map(Workload::Vm),
            Some(other) => {
                let pos = kind.map_or(node.pos.clone(), |k| k.pos.clone());
                self.diags.push(Diagnostic::error(
                    pos,
                    format!("workload kind `{other}` is not known: use `container` or `vm`"),
                ));
                None
            }
            None => {
                self.diags.push(Diagnostic::error(
                    node.pos.clone(),
                    "a workload needs `kind: container` or `kind: vm`",
                ));
                None
            }
        }
    }
}

const TOP: [&str; 9] = [
    "apiVersion",
    "kind",
    "metadata",
    "extends",
    "values",
    "node",
    "network",
    "workloads",
    "runbooks",
];

/// Reads the typed profile from a merged, substituted tree. Returns `None` with diagnostics
/// when anything is malformed.
pub fn decode(root: &Node) -> Result<Profile, Vec<Diagnostic>> {
    let mut d = Decoder { diags: Vec::new() };
    if !d.keys(root, "a store profile", &TOP) {
        return Err(d.diags);
    }
    let header = |d: &mut Decoder, key: &str, want: &str| match root.get(key) {
        Some(n) if n.as_str() == Some(want) => {}
        Some(n) => d.diags.push(Diagnostic::error(
            n.pos.clone(),
            format!(
                "`{key}: {}` is not supported: this version of Backroom reads `{key}: {want}`",
                n.as_str().unwrap_or("…")
            ),
        )),
        None => d.diags.push(Diagnostic::error(
            root.pos.clone(),
            format!("the document has no `{key}`: a store profile starts with `{key}: {want}`"),
        )),
    };
    header(&mut d, "apiVersion", API_VERSION);
    header(&mut d, "kind", KIND);

    let metadata = match root.get("metadata") {
        Some(n) => d.item::<Metadata>(n, &[]),
        None => {
            d.diags.push(Diagnostic::error(
                root.pos.clone(),
                "the document has no `metadata` (it needs at least `metadata.name`)",
            ));
            None
        }
    };
    let node = match root.get("node") {
        Some(n) => d.item::<NodeSpec>(n, &[]),
        None => Some(NodeSpec::default()),
    };

    let mut network = Some(Network::default());
    if let Some(net) = root.get("network")
        && d.keys(net, "`network`", &["uplink", "segments", "firewall"])
    {
        let uplink = net.get("uplink").filter(|n| n.value != Value::Null);
        let uplink: Option<Option<Uplink>> = match uplink {
            Some(n) => d.item::<Uplink>(n, &[]).map(Some),
            None => Some(None),
        };
        let segments: Vec<Segment> = d.list(net.get("segments"), "segments");
        let mut firewall = Some(Firewall::default());
        if let Some(fw) = net.get("firewall")
            && d.keys(fw, "`firewall`", &["default", "allow"])
        {
            let default = match fw.get("default") {
                Some(n) => d.item::<Verdict>(n, &[]),
                None => Some(Verdict::Drop),
            };
            let allow: Vec<AllowRule> = d.list(fw.get("allow"), "allow");
            firewall = default.map(|default| Firewall { default, allow });
        }
        network = match (uplink, firewall) {
            (Some(uplink), Some(firewall)) => Some(Network { uplink, segments, firewall }),
            _ => None,
        };
    }

    let mut workloads = Vec::new();
    if let Some(n) = root.get("workloads") {
        match &n.value {
            Value::Seq(items) => workloads = items.iter().filter_map(|i| d.workload(i)).collect(),
            Value::Null => {}
            _ => d.diags.push(Diagnostic::error(
                n.pos.clone(),
                "`workloads` is a list (lines starting with `- `)",
            )),
        }
    }
    let runbooks: Vec<Runbook> = d.list(root.get("runbooks"), "runbooks");

    match (d.diags.is_empty(), metadata, node, network) {
        (true, Some(metadata), Some(node), Some(network)) => Ok(Profile {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            metadata,
            node,
            network,
            workloads,
            runbooks,
        }),
        _ => Err(d.diags),
    }
}
