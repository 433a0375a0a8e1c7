//! `centralctl profile …` as an operator runs it: exit codes, positions, summaries.

#![allow(clippy::unwrap_used)] // test helpers fail loudly

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn centralctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_centralctl")).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn validate_a_fleet_folder_prints_every_store_and_exits_zero() {
    let fleet = repo("profiles/fleet");
    let o = centralctl(&["profile", "validate", fleet.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    for store in ["store-0042", "store-0117", "store-2001", "store-2002"] {
        assert!(
            t.lines().any(|l| l.starts_with("ok ") && l.contains(store) && l.contains("rev ")),
            "{store}: {t}"
        );
    }
    assert!(t.contains("4 profiles valid, 0 invalid"), "{t}");
}

#[test]
fn validate_reports_file_line_column_and_exits_one() {
    let good = repo("profiles/fleet/stores/store-0042.yaml");
    let bad = repo("profiles/fleet-bad/vlan-twice.yaml");
    let o = centralctl(&["profile", "validate", good.to_str().unwrap(), bad.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    let line =
        t.lines().find(|l| l.contains("VLAN 10 is used twice")).unwrap_or_else(|| panic!("{t}"));
    assert!(line.contains("vlan-twice.yaml:5:27: error: "), "{line}");
    assert!(t.contains("1 profile valid, 1 invalid"), "{t}");
}

#[test]
fn validate_shows_warnings_without_failing() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("tagged.yaml");
    std::fs::write(
        &f,
        "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {name: t}\nworkloads:\n  - name: web\n    kind: container\n    image: registry.example/web:1.0\n",
    )
    .unwrap();
    let o = centralctl(&["profile", "validate", f.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(
        t.contains(
            "tagged.yaml:7:12: warning: image `registry.example/web:1.0` is given without a digest"
        ),
        "{t}"
    );
    assert!(t.contains("tagged.yaml:5:11: warning: workload `web` has no health check"), "{t}");
}

#[test]
fn render_prints_the_canonical_document_and_its_revision() {
    let f = repo("profiles/fleet/stores/store-0042.yaml");
    let o = centralctl(&["profile", "render", f.to_str().unwrap()]);
    let t = String::from_utf8(o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(0));
    let rev = t.lines().find_map(|l| l.strip_prefix("# revision ")).unwrap();
    assert_eq!(rev.len(), 64);
    assert!(t.contains("subnet: 10.42.10.0/24"));
    assert!(!t.contains("${"), "everything is substituted");
    // The rendered text is itself a valid profile with the same revision.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rendered.yaml");
    std::fs::write(&out, &t).unwrap();
    let again = centralctl(&["profile", "render", out.to_str().unwrap()]);
    let again = String::from_utf8(again.stdout).unwrap();
    assert_eq!(again.lines().find_map(|l| l.strip_prefix("# revision ")), Some(rev));
}

#[test]
fn diff_shows_changes_and_exits_zero_either_way() {
    let a = repo("profiles/fleet/stores/store-0042.yaml");
    let b = repo("profiles/fleet/stores/store-0117.yaml");
    let o = centralctl(&["profile", "diff", a.to_str().unwrap(), b.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("segments:\n  - cctv"), "{t}");
    assert!(t.contains("  + promo  (container "), "{t}");
    let same = centralctl(&["profile", "diff", a.to_str().unwrap(), a.to_str().unwrap()]);
    assert_eq!(same.status.code(), Some(0));
    assert!(text(&same).contains("no changes"));
    let bad = repo("profiles/fleet-bad/vlan-twice.yaml");
    let o = centralctl(&["profile", "diff", a.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("vlan-twice.yaml:5:27"));
}

/// `centralctl profile validate FILE` under a 512 MiB address-space limit: a hostile profile must
/// be refused in bounded memory, not abort (134) or be killed.
fn validate_bounded(file: &Path) -> Output {
    Command::new("prlimit")
        .arg("--as=536870912")
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_centralctl"))
        .args(["profile", "validate"])
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn validate_refuses_a_billion_laughs_with_a_position_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("laughs.yaml");
    // 14 lines: every alias doubles nine times over what the line before it holds.
    let mut y = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (i, name) in
        ["b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n"].iter().enumerate()
    {
        let prev = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m"][i];
        let refs = vec![format!("*{prev}"); 9].join(",");
        y.push_str(&format!("{name}: &{name} [{refs}]\n"));
    }
    assert_eq!(y.lines().count(), 14);
    std::fs::write(&f, &y).unwrap();
    let o = validate_bounded(&f);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    let line = t.lines().find(|l| l.contains(": error: ")).unwrap_or_else(|| panic!("{t}"));
    assert!(line.starts_with(&format!("{}:", f.display())), "{line}");
    let pos = line[f.display().to_string().len() + 1..].split(": ").next().unwrap();
    let (l, c) = pos.split_once(':').unwrap_or_else(|| panic!("no line:column in {line}"));
    assert!(l.parse::<u32>().is_ok() && c.parse::<u32>().is_ok(), "{line}");
    assert!(line.contains("aliases"), "a sentence saying why: {line}");
}

#[test]
fn validate_refuses_a_deeply_nested_block_mapping_with_a_position_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("deep.yaml");
    let mut y = String::new();
    for depth in 0..1000 {
        y.push_str(&" ".repeat(depth));
        y.push_str(&format!("k{depth}:\n"));
    }
    std::fs::write(&f, &y).unwrap();
    let o = validate_bounded(&f);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    let line = t.lines().find(|l| l.contains(": error: ")).unwrap_or_else(|| panic!("{t}"));
    assert!(line.starts_with(&format!("{}:", f.display())), "{line}");
    assert!(line.contains("nest deeper than"), "{line}");
}
