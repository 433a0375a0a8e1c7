//! A small YAML writer for canonical documents: block style, two-space indent, strings quoted
//! whenever a plain scalar could be read back as something else.

use serde_json::Value;

pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => write_map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => write_seq(&mut out, a, 0),
        other => {
            out.push_str(&scalar(other, 0));
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn write_map(out: &mut String, m: &serde_json::Map<String, Value>, ind: usize) {
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 {
            indent(out, ind);
        }
        out.push_str(&string(k, ind));
        out.push(':');
        write_value(out, v, ind + 2, false);
    }
}

fn write_seq(out: &mut String, a: &[Value], ind: usize) {
    for (i, v) in a.iter().enumerate() {
        if i > 0 {
            indent(out, ind);
        }
        out.push('-');
        write_value(out, v, ind + 2, true);
    }
}

/// Writes what follows `key:` or `-`. `in_seq` lets a map start on the dash's line.
fn write_value(out: &mut String, v: &Value, ind: usize, in_seq: bool) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            if in_seq {
                out.push(' ');
            } else {
                out.push('\n');
                indent(out, ind);
            }
            write_map(out, m, ind);
        }
        Value::Array(a) if !a.is_empty() => {
            if a.iter().all(|x| !x.is_object() && !x.is_array()) && !a.iter().any(is_multiline) {
                let items: Vec<String> = a.iter().map(|x| scalar(x, ind)).collect();
                out.push_str(" [");
                out.push_str(&items.join(", "));
                out.push_str("]\n");
            } else {
                out.push('\n');
                indent(out, ind);
                write_seq(out, a, ind);
            }
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other, ind));
            out.push('\n');
        }
    }
}

fn is_multiline(v: &Value) -> bool {
    matches!(v, Value::String(s) if s.contains('\n'))
}

fn scalar(v: &Value, ind: usize) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s, ind),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
    }
}

fn string(s: &str, ind: usize) -> String {
    if is_plain_safe(s) {
        return s.to_string();
    }
    if s.contains('\n') && block_safe(s) {
        let chomp = if s.ends_with('\n') { "" } else { "-" };
        let mut out = format!("|{chomp}");
        for line in s.strip_suffix('\n').unwrap_or(s).split('\n') {
            out.push('\n');
            if !line.is_empty() {
                out.extend(std::iter::repeat_n(' ', ind));
                out.push_str(line);
            }
        }
        return out;
    }
    serde_json::to_string(s).unwrap_or_default()
}

/// A literal block keeps the text exactly when no line starts with a space or tab (which would
/// need an indentation indicator), nothing ends in extra newlines, and no control characters.
fn block_safe(s: &str) -> bool {
    let body = s.strip_suffix('\n').unwrap_or(s);
    !body.ends_with('\n')
        && !body.is_empty()
        && !body.starts_with([' ', '\t'])
        && !s.chars().any(|c| c.is_control() && c != '\n')
        && !body.split('\n').any(|l| l.ends_with([' ', '\t']))
}

fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else { return false };
    if !(first.is_ascii_alphanumeric() || first == '/') {
        return false;
    }
    if !s.chars().all(|c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '@' | ':' | '+' | '-' | '=')
    }) {
        return false;
    }
    if s.ends_with(':') {
        return false;
    }
    let lower = s.to_ascii_lowercase();
    if matches!(lower.as_str(), "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n")
    {
        return false;
    }
    // Anything a YAML reader could take for a number stays quoted.
    let looks_numeric = s.parse::<f64>().is_ok()
        || s.starts_with("0x")
        || s.starts_with("0o")
        || (s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars().all(|c| {
                c.is_ascii_digit() || matches!(c, '.' | '_' | ':' | '-' | '+' | 'e' | 'E')
            }));
    !looks_numeric
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_block_yaml() {
        let v = json!({"a": 1, "b": {"c": "x y", "d": [1, 2]}, "e": [{"name": "p", "v": "42"}], "f": "l1\nl2\n"});
        let y = to_yaml(&v);
        assert_eq!(
            y,
            "a: 1\nb:\n  c: \"x y\"\n  d: [1, 2]\ne:\n  - name: p\n    v: \"42\"\nf: |\n  l1\n  l2\n"
        );
    }

    #[test]
    fn ambiguous_strings_are_quoted() {
        for s in ["true", "1.5", "10", "", "no", "12:30", "-x", "a: b", "#c", "2026.11.2"] {
            assert!(!is_plain_safe(s), "{s}");
        }
        for s in ["10.42.10.0/24", "registry.example/retail/orders:3.2.0", "dhcp"] {
            assert!(is_plain_safe(s), "{s}");
        }
    }
}
