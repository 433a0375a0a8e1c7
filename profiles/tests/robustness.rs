//! Property tests: mutated and truncated versions of the sample documents never panic, and
//! every finding has a real position.

#![allow(clippy::unwrap_used)] // test helpers fail loudly on broken fixtures

use std::path::Path;

use backroom_profiles::{Diagnostic, Loader, MemSource, render_with};
use proptest::prelude::*;

fn sample_files() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fleet");
    let mut out = Vec::new();
    for sub in ["base", "regions", "stores"] {
        let mut entries: Vec<_> =
            std::fs::read_dir(root.join(sub)).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            let rel = format!("fleet/{sub}/{}", p.file_name().unwrap().to_string_lossy());
            out.push((rel, std::fs::read_to_string(&p).unwrap()));
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    ReplaceByte(usize, u8),
    DeleteLine(usize),
    DuplicateLine(usize),
    Indent(usize),
    Insert(usize, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let tokens = prop::sample::select(vec![
        ":",
        "- ",
        "{",
        "}",
        "[",
        "]",
        "\"",
        "'",
        "${",
        "${x}",
        "&a ",
        "*a",
        "!!str ",
        "#",
        "\t",
        "\n",
        "  ",
        "remove: true",
        "kind: vm",
        "vlan: 10",
        "9999999999999999999",
        "-1",
        "0.0001",
        "null",
        "~",
    ]);
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::ReplaceByte(i, b)),
        any::<usize>().prop_map(Mutation::DeleteLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        any::<usize>().prop_map(Mutation::Indent),
        (any::<usize>(), tokens).prop_map(|(i, t)| Mutation::Insert(i, t.to_string())),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let bytes = text.as_bytes();
    let lines: Vec<&str> = text.lines().collect();
    match m {
        Mutation::Truncate(i) => {
            String::from_utf8_lossy(&bytes[..i % (bytes.len() + 1)]).into_owned()
        }
        Mutation::ReplaceByte(i, b) => {
            let mut v = bytes.to_vec();
            if !v.is_empty() {
                let n = v.len();
                v[i % n] = *b;
            }
            String::from_utf8_lossy(&v).into_owned()
        }
        Mutation::DeleteLine(i) | Mutation::DuplicateLine(i) | Mutation::Indent(i) => {
            let mut ls: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
            if ls.is_empty() {
                return String::new();
            }
            let k = i % ls.len();
            match m {
                Mutation::DeleteLine(_) => {
                    ls.remove(k);
                }
                Mutation::DuplicateLine(_) => ls.insert(k, ls[k].clone()),
                _ => ls[k] = format!("  {}", ls[k]),
            }
            ls.join("\n")
        }
        Mutation::Insert(i, t) => {
            let mut k = i % (text.len() + 1);
            while !text.is_char_boundary(k) {
                k -= 1;
            }
            format!("{}{t}{}", &text[..k], &text[k..])
        }
    }
}

fn check_positions(diags: &[Diagnostic]) {
    for d in diags {
        assert!(d.pos.line >= 1, "{d}");
        assert!(d.pos.column >= 1, "{d}");
        assert!(d.pos.file.starts_with("fleet/"), "{d}");
        assert!(!d.message.is_empty(), "{d}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn mutated_documents_never_panic_and_every_error_has_a_position(
        which in any::<usize>(),
        muts in prop::collection::vec(mutation(), 1..4),
    ) {
        let files = sample_files();
        let k = which % files.len();
        let mut src = MemSource::new();
        for (i, (path, text)) in files.iter().enumerate() {
            let text = if i == k { muts.iter().fold(text.clone(), |t, m| apply(&t, m)) } else { text.clone() };
            src.insert(path, text);
        }
        let mut loader = Loader::new(src);
        // Render every store: the mutated file may be a layer some of them share.
        for (path, _) in files.iter().filter(|(p, _)| p.starts_with("fleet/stores/")) {
            match render_with(&mut loader, Path::new(path)) {
                Ok(r) => {
                    check_positions(&r.warnings);
                    // Whatever renders also reads back from its canonical form to itself.
                    let again = backroom_profiles::render_str("fleet/again.yaml", &r.to_yaml());
                    prop_assert_eq!(again.map(|a| a.revision), Ok(r.revision.clone()));
                }
                Err(e) => {
                    prop_assert!(e.errors().count() > 0);
                    check_positions(&e.diagnostics);
                }
            }
        }
    }
}
