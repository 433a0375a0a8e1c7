//! YAML text to a tree of nodes that remember where each was written.
//!
//! Layering and substitution work on this tree, so every later error can point at the file, line
//! and column of the text that caused it, not at the merged result.

use std::collections::HashMap;
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use crate::pos::{Diagnostic, Pos};

/// A YAML node and where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
    /// `${name}` substitutions made in this scalar: the value name and where its value was written.
    pub subs: Vec<(String, Pos)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Scalar(Scalar),
    Seq(Vec<Node>),
    /// Keys are scalar nodes, in document order, without duplicates.
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    pub text: String,
    /// Quoted and block scalars are always strings; plain ones may be numbers or booleans.
    pub plain: bool,
}

impl Node {
    pub fn new(pos: Pos, value: Value) -> Self {
        Node { pos, value, subs: Vec::new() }
    }

    pub fn scalar(pos: Pos, text: impl Into<String>) -> Self {
        Node::new(pos, Value::Scalar(Scalar { text: text.into(), plain: false }))
    }

    /// The text of a scalar node (`None` for null, sequences and maps).
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s) => Some(&s.text),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// The value of `key` in a map node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
    }

    /// The key node of `key` in a map node (its position is where the key was written).
    pub fn key(&self, key: &str) -> Option<&Node> {
        self.as_map()?.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(k, _)| k)
    }

    pub fn kind_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "nothing",
            Value::Scalar(_) => "a single value",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a map",
        }
    }

    /// A note naming the `${...}` substitutions made in this node, to append to a message.
    pub fn subs_note(&self) -> String {
        if self.subs.is_empty() {
            return String::new();
        }
        let parts: Vec<String> =
            self.subs.iter().map(|(name, pos)| format!("${{{name}}} set at {pos}")).collect();
        format!(" (after substituting {})", parts.join(", "))
    }
}

/// The largest profile file read (a store profile is a few kilobytes; the largest sample is
/// under 10 KiB). Bigger input is refused before it is parsed.
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// How deeply maps and lists may nest (the format needs fewer than ten levels). Deeper input is
/// refused as it is read, so nothing later recurses deeper than this.
pub const MAX_DEPTH: usize = 64;
/// How many values a document may hold once its aliases are expanded: a few hundred lines of
/// aliases can otherwise expand to billions of values ("billion laughs").
pub const MAX_NODES: usize = 100_000;

/// Parses one YAML document. An empty file is a null node. Input beyond [`MAX_FILE_BYTES`],
/// [`MAX_DEPTH`] or [`MAX_NODES`] is refused with its position, in bounded memory and stack.
pub fn parse(file: &Arc<str>, text: &str) -> Result<Node, Diagnostic> {
    if text.len() > MAX_FILE_BYTES {
        return Err(Diagnostic::error(
            Pos::start_of(file),
            format!(
                "this file is {} bytes: a profile file may hold at most {MAX_FILE_BYTES} bytes",
                text.len()
            ),
        ));
    }
    Builder { file, anchors: HashMap::new(), nodes: 0 }.run(text)
}

struct Builder<'a> {
    file: &'a Arc<str>,
    /// Each anchor's node and how many values it holds (an alias to it adds that many).
    anchors: HashMap<usize, (Node, usize)>,
    /// Values made so far, aliases expanded.
    nodes: usize,
}

/// An open list or map: where it started, its anchor, and the value count when it started.
enum Frame {
    Seq(Pos, usize, usize, Vec<Node>),
    Map(Pos, usize, usize, Vec<(Node, Node)>, Option<Node>),
}

impl Builder<'_> {
    fn pos(&self, span: &Span) -> Pos {
        let column = u32::try_from(span.start.col() + 1).unwrap_or(u32::MAX);
        let line = u32::try_from(span.start.line()).unwrap_or(u32::MAX);
        Pos::new(self.file, line, column)
    }

    /// Counts `n` more values; refuses the document past [`MAX_NODES`].
    fn count(&mut self, n: usize, pos: &Pos) -> Result<(), Diagnostic> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(Diagnostic::error(
                pos.clone(),
                format!(
                    "this document expands to more than {MAX_NODES} values (aliases included): \
                     a profile is far smaller, so it is refused"
                ),
            ));
        }
        Ok(())
    }

    fn run(mut self, text: &str) -> Result<Node, Diagnostic> {
        let mut parser = Parser::new_from_str(text);
        let mut stack: Vec<Frame> = Vec::new();
        let mut root: Option<Node> = None;
        let mut documents = 0;
        while let Some(next) = parser.next_event() {
            let (event, span) = next.map_err(|e| {
                let m = e.marker();
                let pos = Pos::new(
                    self.file,
                    u32::try_from(m.line()).unwrap_or(u32::MAX),
                    u32::try_from(m.col() + 1).unwrap_or(u32::MAX),
                );
                let line = text.lines().nth(m.line().saturating_sub(1)).unwrap_or_default();
                let hint = if line.contains("${") && e.info().contains("flow") {
                    ": inside `{ }` or `[ ]`, a value holding `${...}` must be quoted, e.g. \"10.${store_octet}.20.5\""
                } else {
                    ""
                };
                Diagnostic::error(pos, format!("this is not valid YAML: {}{hint}", e.info()))
            })?;
            let pos = self.pos(&span);
            let done = match event {
                Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
                Event::DocumentStart(_) => {
                    documents += 1;
                    if documents > 1 {
                        return Err(Diagnostic::error(
                            pos,
                            "a profile file holds one YAML document; this is a second one (`---`)",
                        ));
                    }
                    None
                }
                Event::Alias(id) => match self.anchors.get(&id) {
                    Some((node, size)) => {
                        let (node, size) = (node.clone(), *size);
                        self.count(size, &pos)?;
                        Some(node)
                    }
                    None => {
                        return Err(Diagnostic::error(pos, "this alias names no earlier anchor"));
                    }
                },
                Event::Scalar(text, style, anchor, tag) => {
                    let mut plain = style == ScalarStyle::Plain;
                    if let Some(tag) = tag {
                        if tag.is_yaml_core_schema() && tag.suffix == "str" {
                            plain = false;
                        } else {
                            return Err(Diagnostic::error(
                                pos,
                                format!(
                                    "YAML tags such as `{tag}` are not part of the profile format"
                                ),
                            ));
                        }
                    }
                    let value = if plain && is_null(&text) {
                        Value::Null
                    } else {
                        Value::Scalar(Scalar { text: text.into_owned(), plain })
                    };
                    self.count(1, &pos)?;
                    let node = Node::new(pos, value);
                    if anchor > 0 {
                        self.anchors.insert(anchor, (node.clone(), 1));
                    }
                    Some(node)
                }
                Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _)
                    if stack.len() >= MAX_DEPTH =>
                {
                    let _ = anchor;
                    return Err(Diagnostic::error(
                        pos,
                        format!(
                            "maps and lists nest deeper than {MAX_DEPTH} levels here: a profile \
                             needs fewer than ten, so it is refused"
                        ),
                    ));
                }
                Event::SequenceStart(anchor, _) => {
                    self.count(1, &pos)?;
                    stack.push(Frame::Seq(pos, anchor, self.nodes, Vec::new()));
                    None
                }
                Event::MappingStart(anchor, _) => {
                    self.count(1, &pos)?;
                    stack.push(Frame::Map(pos, anchor, self.nodes, Vec::new(), None));
                    None
                }
                Event::SequenceEnd => match stack.pop() {
                    Some(Frame::Seq(pos, anchor, start, items)) => {
                        let node = Node::new(pos, Value::Seq(items));
                        if anchor > 0 {
                            self.anchors.insert(anchor, (node.clone(), self.nodes - start + 1));
                        }
                        Some(node)
                    }
                    _ => return Err(Diagnostic::error(pos, "unbalanced YAML sequence")),
                },
                Event::MappingEnd => match stack.pop() {
                    Some(Frame::Map(pos, anchor, start, entries, _)) => {
                        let node = Node::new(pos, Value::Map(entries));
                        if anchor > 0 {
                            self.anchors.insert(anchor, (node.clone(), self.nodes - start + 1));
                        }
                        Some(node)
                    }
                    _ => return Err(Diagnostic::error(pos, "unbalanced YAML mapping")),
                },
            };
            let Some(node) = done else { continue };
            match stack.last_mut() {
                None => root = Some(node),
                Some(Frame::Seq(_, _, _, items)) => items.push(node),
                Some(Frame::Map(_, _, _, entries, pending)) => match pending.take() {
                    None => {
                        let key_text = match &node.value {
                            Value::Scalar(s) => s.text.clone(),
                            Value::Null => String::new(),
                            _ => {
                                return Err(Diagnostic::error(
                                    node.pos,
                                    "a map key must be a single value, not a list or a map",
                                ));
                            }
                        };
                        if let Some((first, _)) =
                            entries.iter().find(|(k, _)| k.as_str() == Some(key_text.as_str()))
                        {
                            return Err(Diagnostic::error(
                                node.pos.clone(),
                                format!(
                                    "key `{key_text}` is given twice in this map (first at line {})",
                                    first.pos.line
                                ),
                            ));
                        }
                        let key = Node::new(
                            node.pos,
                            Value::Scalar(Scalar { text: key_text, plain: true }),
                        );
                        *pending = Some(key);
                    }
                    Some(key) => entries.push((key, node)),
                },
            }
        }
        Ok(root.unwrap_or_else(|| Node::new(Pos::start_of(self.file), Value::Null)))
    }
}

fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Arc<str> {
        Arc::from("t.yaml")
    }

    #[test]
    fn positions_are_one_based() {
        let n = parse(&file(), "a:\n  b: [1, x]\n").unwrap();
        let b = n.get("a").unwrap().get("b").unwrap();
        assert_eq!((b.pos.line, b.pos.column), (2, 6));
        let items = b.as_seq().unwrap();
        assert_eq!(items[1].as_str(), Some("x"));
        assert_eq!((items[1].pos.line, items[1].pos.column), (2, 10));
        let key = n.get("a").unwrap().key("b").unwrap();
        assert_eq!((key.pos.line, key.pos.column), (2, 3));
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let e = parse(&file(), "a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.pos.line, 3);
        assert!(e.message.contains("given twice"), "{}", e.message);
    }

    #[test]
    fn second_document_is_refused() {
        let e = parse(&file(), "a: 1\n---\nb: 2\n").unwrap_err();
        assert!(e.message.contains("second"), "{}", e.message);
    }

    #[test]
    fn syntax_error_has_position() {
        let e = parse(&file(), "a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.pos.line >= 1);
        assert!(e.message.starts_with("this is not valid YAML"));
    }

    #[test]
    fn unquoted_substitution_in_flow_gets_a_hint() {
        let e = parse(&file(), "a: { b: 10.${x}.1 }\n").unwrap_err();
        assert!(e.message.contains("must be quoted"), "{}", e.message);
    }

    #[test]
    fn quoted_and_plain_are_told_apart() {
        let n = parse(&file(), "a: \"1\"\nb: 1\nc: ~\nd: ''\n").unwrap();
        assert!(matches!(&n.get("a").unwrap().value, Value::Scalar(s) if !s.plain));
        assert!(matches!(&n.get("b").unwrap().value, Value::Scalar(s) if s.plain));
        assert_eq!(n.get("c").unwrap().value, Value::Null);
        assert_eq!(n.get("d").unwrap().as_str(), Some(""));
    }

    #[test]
    fn billion_laughs_is_refused_at_once_with_a_position() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            doc.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let start = std::time::Instant::now();
        let e = parse(&file(), &doc).unwrap_err();
        assert!(e.message.contains("expands to more than"), "{}", e.message);
        assert!(e.pos.line > 1 && e.pos.line <= 12, "{}", e.pos);
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        // A reasonable use of aliases still works, and its values count once per use.
        let n = parse(&file(), "a: &x [1, 2]\nb: *x\nc: *x\n").unwrap();
        assert_eq!(n.get("c").unwrap().as_seq().unwrap().len(), 2);
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        for doc in [
            "a:\n".to_string()
                + &(1..300).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect::<String>(),
            "[".repeat(100_000),
            "{a: ".repeat(50_000),
        ] {
            let e = parse(&file(), &doc).unwrap_err();
            assert!(
                e.message.contains("nest deeper") || e.message.contains("not valid YAML"),
                "{}",
                e.message
            );
        }
        let ok = (0..MAX_DEPTH).map(|_| "[").collect::<String>()
            + &(0..MAX_DEPTH).map(|_| "]").collect::<String>();
        assert!(parse(&file(), &ok).is_ok());
    }

    #[test]
    fn oversized_files_are_refused_before_parsing() {
        let big = format!("a: \"{}\"\n", "x".repeat(MAX_FILE_BYTES));
        let e = parse(&file(), &big).unwrap_err();
        assert!(e.message.contains("at most"), "{}", e.message);
    }

    #[test]
    fn aliases_copy_the_anchor() {
        let n = parse(&file(), "a: &x {k: v}\nb: *x\n").unwrap();
        assert_eq!(n.get("b").unwrap().get("k").unwrap().as_str(), Some("v"));
    }
}
