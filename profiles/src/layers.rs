//! Layering: `extends:` chains, merge by name, `remove: true` and `${value}` substitution.
//!
//! All of it works on the positioned YAML tree, so a merged document still knows, for every
//! value, the file, line and column where it was written.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::pos::{Diagnostic, Pos};
use crate::types::BadValue;
use crate::yaml::{self, Node, Scalar, Value};

/// Where profile files come from: the filesystem, or memory in tests.
pub trait Source {
    fn read(&self, path: &Path) -> io::Result<String>;
}

/// Reads profile files from the filesystem.
#[derive(Clone, Copy, Debug, Default)]
pub struct FsSource;

impl Source for FsSource {
    fn read(&self, path: &Path) -> io::Result<String> {
        // Never more than one byte past the limit: the parser then refuses the file by its size
        // (a device or a huge file named in `extends` must not be read into memory whole).
        use std::io::Read;
        let mut text = String::new();
        std::fs::File::open(path)?
            .take(yaml::MAX_FILE_BYTES as u64 + 1)
            .read_to_string(&mut text)?;
        Ok(text)
    }
}

/// Profile files held in memory, by path.
#[derive(Clone, Debug, Default)]
pub struct MemSource {
    files: HashMap<PathBuf, String>,
}

impl MemSource {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, path: impl AsRef<Path>, text: impl Into<String>) {
        self.files.insert(normalize(path.as_ref()), text.into());
    }
}

impl Source for MemSource {
    fn read(&self, path: &Path) -> io::Result<String> {
        self.files
            .get(&normalize(path))
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "No such file or directory"))
    }
}

/// Lists whose items merge by a key field instead of being replaced whole.
fn merge_key(list: &str) -> Option<&'static str> {
    match list {
        "segments" | "workloads" | "allow" | "runbooks" | "disks" | "volumes" => Some("name"),
        "networks" => Some("segment"),
        _ => None,
    }
}

/// Removes `.` and resolves `..` without touching the filesystem.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                let last_is_normal =
                    matches!(out.components().next_back(), Some(Component::Normal(_)));
                if last_is_normal {
                    out.pop();
                } else if !matches!(out.components().next_back(), Some(Component::RootDir)) {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

type Layer = Result<Arc<Node>, Vec<Diagnostic>>;

/// Loads documents with their layers. Parsed files and resolved layers are cached, so a fleet
/// whose stores share a base reads and merges that base once.
pub struct Loader<S: Source> {
    source: S,
    resolved: HashMap<PathBuf, Layer>,
}

impl<S: Source> Loader<S> {
    pub fn new(source: S) -> Self {
        Loader { source, resolved: HashMap::new() }
    }

    /// The document at `path` merged over its `extends:` chain, with `${...}` substituted.
    pub fn load(&mut self, path: &Path) -> Result<Node, Vec<Diagnostic>> {
        let path = normalize(path);
        let merged = self.resolve(&path, &mut Vec::new(), None);
        // Layers are cached for the documents that share them; the document itself is not, so
        // its tree is taken over rather than copied.
        self.resolved.remove(&path);
        let mut node = Arc::unwrap_or_clone(merged?);
        let mut diags = Vec::new();
        substitute(&mut node, &mut diags);
        if diags.is_empty() { Ok(node) } else { Err(diags) }
    }

    fn resolve(&mut self, path: &Path, stack: &mut Vec<PathBuf>, from: Option<&Node>) -> Layer {
        let name: Arc<str> = Arc::from(path.display().to_string());
        if let Some(i) = stack.iter().position(|p| p == path) {
            let chain: Vec<String> = stack[i..]
                .iter()
                .chain([&path.to_path_buf()])
                .map(|p| p.display().to_string())
                .collect();
            let pos = from.map_or_else(|| Pos::start_of(&name), |n| n.pos.clone());
            return Err(vec![Diagnostic::error(
                pos,
                format!("`extends` goes round in a circle: {}", chain.join(" → ")),
            )]);
        }
        if let Some(done) = self.resolved.get(path) {
            return done.clone();
        }
        let text = match self.source.read(path) {
            Ok(t) => t,
            Err(e) => {
                let (pos, what) = match from {
                    Some(n) => (
                        n.pos.clone(),
                        format!("cannot read `{}`, named in `extends`", path.display()),
                    ),
                    None => (Pos::start_of(&name), "cannot read this file".to_string()),
                };
                // Not cached: a missing file is reported where each document names it.
                return Err(vec![Diagnostic::error(pos, format!("{what}: {e}"))]);
            }
        };
        stack.push(path.to_path_buf());
        let result = self.resolve_text(path, &name, &text, stack);
        stack.pop();
        self.resolved.insert(path.to_path_buf(), result.clone());
        result
    }

    fn resolve_text(
        &mut self,
        path: &Path,
        name: &Arc<str>,
        text: &str,
        stack: &mut Vec<PathBuf>,
    ) -> Layer {
        let mut root = yaml::parse(name, text).map_err(|d| vec![d])?;
        let Value::Map(entries) = &mut root.value else {
            return Err(vec![Diagnostic::error(
                root.pos.clone(),
                format!(
                    "a store profile is a map of `key: value` lines; this file holds {}",
                    root.kind_name()
                ),
            )]);
        };
        let extends = entries
            .iter()
            .position(|(k, _)| k.as_str() == Some("extends"))
            .map(|i| entries.remove(i).1);
        let mut diags = Vec::new();
        let mut parents: Vec<Node> = Vec::new();
        if let Some(ext) = extends {
            let items: Vec<Node> = match ext.value {
                Value::Seq(items) => items,
                Value::Scalar(_) => vec![ext],
                Value::Null => Vec::new(),
                Value::Map(_) => {
                    return Err(vec![Diagnostic::error(
                        ext.pos,
                        "`extends` is a list of paths to the documents this one builds on",
                    )]);
                }
            };
            let dir = path.parent().unwrap_or(Path::new(""));
            for item in &items {
                let Some(rel) = item.as_str() else {
                    diags.push(Diagnostic::error(
                        item.pos.clone(),
                        "an `extends` entry is a path, relative to this file",
                    ));
                    continue;
                };
                let target = normalize(&dir.join(rel));
                match self.resolve(&target, stack, Some(item)) {
                    Ok(node) => parents.push(Arc::unwrap_or_clone(node)),
                    Err(mut d) => diags.append(&mut d),
                }
            }
        }
        if !diags.is_empty() {
            return Err(diags);
        }
        let mut merged: Option<Node> = None;
        for parent in parents {
            merged = Some(merge(merged, parent, None, &mut diags));
        }
        let result = merge(merged, root, None, &mut diags);
        if diags.is_empty() { Ok(Arc::new(result)) } else { Err(diags) }
    }
}

/// Merges `over` onto `base` (later over earlier). `key` is the map key `over` sits under.
fn merge(base: Option<Node>, over: Node, key: Option<&str>, diags: &mut Vec<Diagnostic>) -> Node {
    let Node { pos, value, subs } = over;
    let value = match value {
        Value::Map(entries) => {
            let mut out = match base.map(|b| b.value) {
                Some(Value::Map(b)) => b,
                _ => Vec::new(),
            };
            for (k, v) in entries {
                let name = k.as_str().unwrap_or_default().to_string();
                match out.iter().position(|(bk, _)| bk.as_str() == Some(name.as_str())) {
                    Some(i) => {
                        let old =
                            std::mem::replace(&mut out[i].1, Node::new(pos.clone(), Value::Null));
                        out[i] = (k, merge(Some(old), v, Some(&name), diags));
                    }
                    None => out.push((k, merge(None, v, Some(&name), diags))),
                }
            }
            Value::Map(out)
        }
        Value::Seq(items) => match key.and_then(merge_key) {
            Some(id) => {
                let inherited = match base.map(|b| b.value) {
                    Some(Value::Seq(b)) => b,
                    _ => Vec::new(),
                };
                Value::Seq(merge_named(inherited, items, key.unwrap_or_default(), id, diags))
            }
            None => Value::Seq(items.into_iter().map(|i| merge(None, i, None, diags)).collect()),
        },
        other => other,
    };
    Node { pos, value, subs }
}

fn merge_named(
    inherited: Vec<Node>,
    items: Vec<Node>,
    list: &str,
    id_key: &str,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Node> {
    let inherited_len = inherited.len();
    let mut out: Vec<Option<Node>> = inherited.into_iter().map(Some).collect();
    let mut seen: HashSet<String> = HashSet::new();
    for mut item in items {
        let remove = take_remove(&mut item, diags);
        let id = item.get(id_key).and_then(Node::as_str).map(str::to_string);
        let Some(id) = id else {
            if remove {
                diags.push(Diagnostic::error(
                    item.pos.clone(),
                    format!("`remove: true` needs the `{id_key}` of the item to remove"),
                ));
            } else {
                out.push(Some(merge(None, item, None, diags)));
            }
            continue;
        };
        let first_in_layer = seen.insert(id.clone());
        let found = out[..inherited_len].iter().position(|n| {
            n.as_ref().and_then(|n| n.get(id_key)).and_then(Node::as_str) == Some(id.as_str())
        });
        match (first_in_layer, found, remove) {
            (true, Some(i), true) => out[i] = None,
            (true, Some(i), false) => out[i] = Some(merge(out[i].take(), item, None, diags)),
            (_, _, true) => diags.push(Diagnostic::error(
                item.get(id_key).map_or(item.pos.clone(), |n| n.pos.clone()),
                format!(
                    "`remove: true` on `{id}`, but no earlier layer has an item named `{id}` in `{list}`"
                ),
            )),
            // A repeated name within one layer stays a separate item, so validation reports it.
            (_, _, false) => out.push(Some(merge(None, item, None, diags))),
        }
    }
    out.into_iter().flatten().collect()
}

/// Takes the `remove` key out of a list item, returning whether it said `true`.
fn take_remove(item: &mut Node, diags: &mut Vec<Diagnostic>) -> bool {
    let Value::Map(entries) = &mut item.value else { return false };
    let Some(i) = entries.iter().position(|(k, _)| k.as_str() == Some("remove")) else {
        return false;
    };
    let (_, v) = entries.remove(i);
    match v.as_str() {
        Some("true") => true,
        Some("false") => false,
        _ => {
            diags.push(Diagnostic::error(v.pos, "`remove` is true or false"));
            false
        }
    }
}

/// Replaces `${name}` by `values.name` in every string outside `values`; `$${` writes `${`.
fn substitute(root: &mut Node, diags: &mut Vec<Diagnostic>) {
    let mut values: HashMap<String, (String, Pos)> = HashMap::new();
    if let Some(v) = root.get("values") {
        match &v.value {
            Value::Map(entries) => {
                for (k, val) in entries {
                    let name = k.as_str().unwrap_or_default().to_string();
                    match &val.value {
                        Value::Scalar(s) => {
                            values.insert(name, (s.text.clone(), val.pos.clone()));
                        }
                        Value::Null => {
                            values.insert(name, (String::new(), val.pos.clone()));
                        }
                        _ => diags.push(Diagnostic::error(
                            val.pos.clone(),
                            format!(
                                "values.{name} must be a single value, not {}",
                                val.kind_name()
                            ),
                        )),
                    }
                }
            }
            Value::Null => {}
            _ => {
                diags.push(Diagnostic::error(v.pos.clone(), "`values` is a map of names to values"))
            }
        }
    }
    if let Value::Map(entries) = &mut root.value {
        for (k, v) in entries.iter_mut() {
            if k.as_str() != Some("values") {
                substitute_node(v, &values, diags);
            }
        }
    }
}

fn substitute_node(
    node: &mut Node,
    values: &HashMap<String, (String, Pos)>,
    diags: &mut Vec<Diagnostic>,
) {
    match &mut node.value {
        Value::Scalar(Scalar { text, .. }) => {
            if !text.contains('$') {
                return;
            }
            match expand(text, values) {
                Ok((out, used)) => {
                    *text = out;
                    node.subs = used;
                }
                Err(msg) => diags.push(Diagnostic::error(node.pos.clone(), msg.to_string())),
            }
        }
        Value::Seq(items) => items.iter_mut().for_each(|n| substitute_node(n, values, diags)),
        Value::Map(entries) => {
            entries.iter_mut().for_each(|(_, v)| substitute_node(v, values, diags))
        }
        Value::Null => {}
    }
}

type Expanded = (String, Vec<(String, Pos)>);

/// The longest a value may become through `${}` substitution: values are short strings, and a
/// line of many references to a long value must not make a string of gigabytes.
pub const MAX_EXPANDED: usize = 64 * 1024;

fn expand(text: &str, values: &HashMap<String, (String, Pos)>) -> Result<Expanded, BadValue> {
    let mut out = String::with_capacity(text.len());
    let mut used = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(r) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = r;
        } else if let Some(r) = after.strip_prefix("${") {
            let end = r.find('}').ok_or_else(|| {
                format!(
                    "`${{` without a closing `}}` in `{text}` (write `$${{` for a literal `${{`)"
                )
            })?;
            let name = &r[..end];
            match values.get(name) {
                Some((v, pos)) => {
                    if out.len() + v.len() > MAX_EXPANDED {
                        return Err(BadValue(format!(
                            "substituting values here makes a value longer than {MAX_EXPANDED} characters"
                        )));
                    }
                    out.push_str(v);
                    used.push((name.to_string(), pos.clone()));
                }
                None if name.is_empty() => {
                    return Err(BadValue(format!("`${{}}` in `{text}` names no value")));
                }
                None => {
                    return Err(BadValue(format!(
                        "`${{{name}}}` is not defined: no layer sets `values.{name}`"
                    )));
                }
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok((out, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loader(files: &[(&str, &str)]) -> Loader<MemSource> {
        let mut src = MemSource::new();
        for (p, t) in files {
            src.insert(p, *t);
        }
        Loader::new(src)
    }

    #[test]
    fn normalize_resolves_dots() {
        assert_eq!(
            normalize(Path::new("fleet/stores/../base/./a.yaml")),
            PathBuf::from("fleet/base/a.yaml")
        );
        assert_eq!(normalize(Path::new("../a.yaml")), PathBuf::from("../a.yaml"));
        assert_eq!(normalize(Path::new("/../a")), PathBuf::from("/a"));
    }

    #[test]
    fn later_layers_win_and_lists_merge_by_name() {
        let mut l = loader(&[
            (
                "base.yaml",
                "a: 1\nsegments:\n  - {name: pos, vlan: 10}\n  - {name: iot, vlan: 30}\nlist: [1, 2]\n",
            ),
            (
                "store.yaml",
                "extends: [base.yaml]\nsegments:\n  - {name: pos, vlan: 11}\n  - {name: iot, remove: true}\n  - {name: guest, vlan: 40}\nlist: [3]\n",
            ),
        ]);
        let n = l.load(Path::new("store.yaml")).unwrap();
        let segs = n.get("segments").unwrap().as_seq().unwrap();
        let names: Vec<_> = segs.iter().map(|s| s.get("name").unwrap().as_str().unwrap()).collect();
        assert_eq!(names, ["pos", "guest"]);
        let vlan = segs[0].get("vlan").unwrap();
        assert_eq!(vlan.as_str(), Some("11"));
        assert_eq!(&*vlan.pos.file, "store.yaml");
        assert_eq!(n.get("a").unwrap().pos.file.as_ref(), "base.yaml");
        assert_eq!(n.get("list").unwrap().as_seq().unwrap().len(), 1);
        assert!(segs[1].get("remove").is_none());
    }

    #[test]
    fn substitution_cannot_blow_a_value_up() {
        let big = "x".repeat(60_000);
        let refs = "${big}".repeat(50);
        let text = format!("values: {{ big: {big} }}\nname: \"{refs}\"\n");
        let mut l = loader(&[("a.yaml", &text)]);
        let e = l.load(Path::new("a.yaml")).unwrap_err();
        assert!(e[0].message.contains("longer than"), "{:?}", e[0].message);
        assert_eq!(e[0].pos.line, 2);
    }

    #[test]
    fn a_huge_file_is_not_read_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("huge.yaml");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(8 << 30).unwrap(); // sparse: 8 GiB of zeros on no disk
        let text = FsSource.read(&p).unwrap();
        assert_eq!(text.len(), yaml::MAX_FILE_BYTES + 1);
        let e = Loader::new(FsSource).load(&p).unwrap_err();
        assert!(e[0].message.contains("at most"), "{:?}", e[0].message);
    }

    #[test]
    fn removing_what_is_not_inherited_is_an_error() {
        let mut l = loader(&[("a.yaml", "segments:\n  - {name: pos, remove: true}\n")]);
        let e = l.load(Path::new("a.yaml")).unwrap_err();
        assert!(e[0].message.contains("no earlier layer"), "{:?}", e);
        assert_eq!(e[0].pos.line, 2);
    }

    #[test]
    fn duplicates_within_a_layer_stay_separate() {
        let mut l = loader(&[("a.yaml", "segments:\n  - {name: pos}\n  - {name: pos}\n")]);
        let n = l.load(Path::new("a.yaml")).unwrap();
        assert_eq!(n.get("segments").unwrap().as_seq().unwrap().len(), 2);
    }

    #[test]
    fn cycles_are_found() {
        let mut l = loader(&[("a.yaml", "extends: [b.yaml]\n"), ("b.yaml", "extends: [a.yaml]\n")]);
        let e = l.load(Path::new("a.yaml")).unwrap_err();
        assert!(e[0].message.contains("a.yaml → b.yaml → a.yaml"), "{}", e[0].message);
    }

    #[test]
    fn substitution_and_escape() {
        let mut l = loader(&[
            ("base.yaml", "x: \"10.${octet}.0.0/24\"\ny: \"$${not}\"\nz: cost $5\n"),
            ("s.yaml", "extends: [base.yaml]\nvalues: {octet: \"42\"}\n"),
        ]);
        let n = l.load(Path::new("s.yaml")).unwrap();
        let x = n.get("x").unwrap();
        assert_eq!(x.as_str(), Some("10.42.0.0/24"));
        assert_eq!(&*x.pos.file, "base.yaml");
        assert_eq!(&*x.subs[0].1.file, "s.yaml");
        assert_eq!(n.get("y").unwrap().as_str(), Some("${not}"));
        assert_eq!(n.get("z").unwrap().as_str(), Some("cost $5"));
    }

    #[test]
    fn undefined_value_points_where_it_was_written() {
        let mut l = loader(&[
            ("base.yaml", "a: 1\nx: \"${missing}\"\n"),
            ("s.yaml", "extends: [base.yaml]\nvalues: {}\n"),
        ]);
        let e = l.load(Path::new("s.yaml")).unwrap_err();
        assert_eq!((&*e[0].pos.file, e[0].pos.line), ("base.yaml", 2));
        assert!(e[0].message.contains("values.missing"));
    }

    #[test]
    fn missing_extends_points_at_the_entry() {
        let mut l = loader(&[("s.yaml", "a: 1\nextends:\n  - nope.yaml\n")]);
        let e = l.load(Path::new("s.yaml")).unwrap_err();
        assert_eq!(e[0].pos.line, 3);
        assert!(e[0].message.contains("nope.yaml"));
    }
}
