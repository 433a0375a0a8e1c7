//! A serde deserializer over the positioned YAML tree.
//!
//! Every error it returns carries the position of the innermost node it was reading, so a wrong
//! type, an unknown field or a bad unit points at the very text that caused it. Scalars are typed
//! by what the target asks for (a `u16` field parses the text as a number), like a
//! non-self-describing format.

use std::fmt;

use serde::de::{self, DeserializeSeed, Error as _, IntoDeserializer, Visitor};

use crate::pos::Pos;
use crate::yaml::{Node, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct DeError {
    pub pos: Option<Pos>,
    pub message: String,
}

impl DeError {
    fn at(mut self, node: &Node) -> Self {
        if self.pos.is_none() {
            self.pos = Some(node.pos.clone());
            self.message.push_str(&node.subs_note());
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pos {
            Some(p) => write!(f, "{p}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for DeError {}

fn one_of(names: &'static [&'static str]) -> String {
    if names.is_empty() {
        return "none is allowed here".to_string();
    }
    names.join(", ")
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError { pos: None, message: msg.to_string() }
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Self::custom(format_args!("expected {exp}, found {}", describe(unexp)))
    }

    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Self::custom(format_args!("expected {exp}, found {}", describe(unexp)))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self::custom(format_args!(
            "unknown field `{field}` (the fields allowed here are: {})",
            one_of(expected)
        ))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Self::custom(format_args!("`{variant}` is not one of: {}", one_of(expected)))
    }

    fn missing_field(field: &'static str) -> Self {
        Self::custom(format_args!("the required field `{field}` is missing"))
    }

    fn duplicate_field(field: &'static str) -> Self {
        Self::custom(format_args!("field `{field}` is given twice"))
    }
}

fn describe(unexp: de::Unexpected<'_>) -> String {
    match unexp {
        de::Unexpected::Str(s) => format!("`{s}`"),
        de::Unexpected::Map => "a map".into(),
        de::Unexpected::Seq => "a list".into(),
        de::Unexpected::Unit => "nothing".into(),
        other => other.to_string(),
    }
}

/// Deserializes `T` from `node`, ignoring the map keys named in `skip` at the top level.
pub fn from_node<'a, T: de::Deserialize<'a>>(
    node: &'a Node,
    skip: &'a [&'a str],
) -> Result<T, DeError> {
    T::deserialize(NodeDe { node, skip })
}

pub struct NodeDe<'a> {
    node: &'a Node,
    skip: &'a [&'a str],
}

impl<'a> NodeDe<'a> {
    fn new(node: &'a Node) -> Self {
        NodeDe { node, skip: &[] }
    }

    fn text(&self, expected: &str) -> Result<&'a str, DeError> {
        match &self.node.value {
            Value::Scalar(s) => Ok(&s.text),
            _ => Err(de::Error::custom(format_args!(
                "expected {expected}, found {}",
                self.node.kind_name()
            ))),
        }
    }

    fn parse<T: std::str::FromStr>(&self, expected: &str) -> Result<T, DeError> {
        let text = self.text(expected)?;
        text.trim()
            .parse()
            .map_err(|_| de::Error::custom(format_args!("expected {expected}, found `{text}`")))
    }
}

macro_rules! number {
    ($method:ident, $visit:ident, $ty:ty, $what:expr) => {
        fn $method<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
            let node = self.node;
            let v: $ty = self.parse($what).map_err(|e: DeError| e.at(node))?;
            visitor.$visit(v).map_err(|e: DeError| e.at(node))
        }
    };
}

impl<'a> de::Deserializer<'a> for NodeDe<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let node = self.node;
        let r: Result<V::Value, DeError> = match &node.value {
            Value::Null => visitor.visit_unit(),
            Value::Scalar(s) if s.plain => {
                if s.text == "true" {
                    visitor.visit_bool(true)
                } else if s.text == "false" {
                    visitor.visit_bool(false)
                } else if let Ok(u) = s.text.parse::<u64>() {
                    visitor.visit_u64(u)
                } else if let Ok(i) = s.text.parse::<i64>() {
                    visitor.visit_i64(i)
                } else if let Ok(f) = s.text.parse::<f64>() {
                    visitor.visit_f64(f)
                } else {
                    visitor.visit_str(&s.text)
                }
            }
            Value::Scalar(s) => visitor.visit_str(&s.text),
            Value::Seq(_) => return self.deserialize_seq(visitor),
            Value::Map(_) => return self.deserialize_map(visitor),
        };
        r.map_err(|e: DeError| e.at(node))
    }

    fn deserialize_bool<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let node = self.node;
        let b = match self.text("true or false").map_err(|e: DeError| e.at(node))? {
            "true" => true,
            "false" => false,
            other => {
                return Err(DeError::custom(format_args!(
                    "expected true or false, found `{other}`"
                ))
                .at(node));
            }
        };
        visitor.visit_bool(b).map_err(|e: DeError| e.at(node))
    }

    number!(deserialize_i8, visit_i8, i8, "a whole number");
    number!(deserialize_i16, visit_i16, i16, "a whole number");
    number!(deserialize_i32, visit_i32, i32, "a whole number");
    number!(deserialize_i64, visit_i64, i64, "a whole number");
    number!(deserialize_u8, visit_u8, u8, "a whole number from 0 to 255");
    number!(deserialize_u16, visit_u16, u16, "a whole number from 0 to 65535");
    number!(deserialize_u32, visit_u32, u32, "a whole number");
    number!(deserialize_u64, visit_u64, u64, "a whole number");
    number!(deserialize_f32, visit_f32, f32, "a number");
    number!(deserialize_f64, visit_f64, f64, "a number");

    fn deserialize_char<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let node = self.node;
        let text = self.text("text").map_err(|e: DeError| e.at(node))?;
        visitor.visit_str(text).map_err(|e: DeError| e.at(node))
    }

    fn deserialize_string<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'a>>(self, _visitor: V) -> Result<V::Value, DeError> {
        Err(DeError::custom("binary data is not part of the profile format").at(self.node))
    }

    fn deserialize_byte_buf<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let node = self.node;
        match node.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
        .map_err(|e: DeError| e.at(node))
    }

    fn deserialize_unit<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let node = self.node;
        match node.value {
            Value::Null => visitor.visit_unit().map_err(|e: DeError| e.at(node)),
            _ => Err(DeError::custom(format_args!("expected nothing, found {}", node.kind_name()))
                .at(node)),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if name == crate::types::TEXT {
            // A value type reads the scalar's text exactly as written (see `types::TEXT`).
            return self.deserialize_str(visitor);
        }
        let node = self.node;
        visitor.visit_newtype_struct(self).map_err(|e: DeError| e.at(node))
    }

    fn deserialize_seq<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let node = self.node;
        let items: &[Node] = match &node.value {
            Value::Seq(items) => items,
            Value::Null => &[],
            _ => {
                return Err(DeError::custom(format_args!(
                    "expected a list, found {}",
                    node.kind_name()
                ))
                .at(node));
            }
        };
        visitor.visit_seq(SeqAccess { items: items.iter() }).map_err(|e: DeError| e.at(node))
    }

    fn deserialize_tuple<V: Visitor<'a>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let node = self.node;
        let entries: &[(Node, Node)] = match &node.value {
            Value::Map(entries) => entries,
            Value::Null => &[],
            _ => {
                return Err(DeError::custom(format_args!(
                    "expected a map of `key: value` lines, found {}",
                    node.kind_name()
                ))
                .at(node));
            }
        };
        visitor
            .visit_map(MapAccess { entries: entries.iter(), skip: self.skip, value: None })
            .map_err(|e: DeError| e.at(node))
    }

    fn deserialize_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let node = self.node;
        match &node.value {
            Value::Scalar(_) => visitor.visit_enum(EnumAccess { tag: node, content: None }),
            Value::Map(entries) if entries.len() == 1 => {
                let (k, v) = &entries[0];
                visitor.visit_enum(EnumAccess { tag: k, content: Some(v) })
            }
            _ => Err(DeError::custom(format_args!(
                "expected a single word or a one-key map, found {}",
                node.kind_name()
            ))),
        }
        .map_err(|e: DeError| e.at(node))
    }

    fn deserialize_identifier<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

struct SeqAccess<'a> {
    items: std::slice::Iter<'a, Node>,
}

impl<'a> de::SeqAccess<'a> for SeqAccess<'a> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'a>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            Some(node) => {
                seed.deserialize(NodeDe::new(node)).map(Some).map_err(|e: DeError| e.at(node))
            }
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAccess<'a> {
    entries: std::slice::Iter<'a, (Node, Node)>,
    skip: &'a [&'a str],
    value: Option<&'a Node>,
}

impl<'a> de::MapAccess<'a> for MapAccess<'a> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'a>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        for (k, v) in self.entries.by_ref() {
            if k.as_str().is_some_and(|key| self.skip.contains(&key)) {
                continue;
            }
            self.value = Some(v);
            return seed.deserialize(NodeDe::new(k)).map(Some).map_err(|e: DeError| e.at(k));
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'a>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.value.take() {
            Some(node) => seed.deserialize(NodeDe::new(node)).map_err(|e: DeError| e.at(node)),
            None => Err(DeError::custom("a map value was read before its key")),
        }
    }
}

struct EnumAccess<'a> {
    tag: &'a Node,
    content: Option<&'a Node>,
}

impl<'a> de::EnumAccess<'a> for EnumAccess<'a> {
    type Error = DeError;
    type Variant = VariantAccess<'a>;

    fn variant_seed<T: DeserializeSeed<'a>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), DeError> {
        let tag = self.tag;
        let v = seed.deserialize(NodeDe::new(tag)).map_err(|e: DeError| e.at(tag))?;
        Ok((v, VariantAccess { tag, content: self.content }))
    }
}

struct VariantAccess<'a> {
    tag: &'a Node,
    content: Option<&'a Node>,
}

impl<'a> VariantAccess<'a> {
    fn content(&self) -> Result<&'a Node, DeError> {
        self.content.ok_or_else(|| {
            DeError::custom(format_args!(
                "`{}` needs a value here (write it as `{}: ...`)",
                self.tag.as_str().unwrap_or_default(),
                self.tag.as_str().unwrap_or_default()
            ))
            .at(self.tag)
        })
    }
}

impl<'a> de::VariantAccess<'a> for VariantAccess<'a> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        match self.content {
            None => Ok(()),
            Some(node) => Err(DeError::custom(format_args!(
                "`{}` takes no value",
                self.tag.as_str().unwrap_or_default()
            ))
            .at(node)),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'a>>(self, seed: T) -> Result<T::Value, DeError> {
        let node = self.content()?;
        seed.deserialize(NodeDe::new(node)).map_err(|e: DeError| e.at(node))
    }

    fn tuple_variant<V: Visitor<'a>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        let node = self.content()?;
        de::Deserializer::deserialize_seq(NodeDe::new(node), visitor)
    }

    fn struct_variant<V: Visitor<'a>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let node = self.content()?;
        de::Deserializer::deserialize_map(NodeDe::new(node), visitor)
    }
}

impl<'a> IntoDeserializer<'a, DeError> for NodeDe<'a> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}
