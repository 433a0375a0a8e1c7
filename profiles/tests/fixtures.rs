//! The sample fleet renders; every bad fixture is refused with exactly the errors its
//! `# expect: [FILE:]LINE:COLUMN MESSAGE-FRAGMENT` lines name.

#![allow(clippy::unwrap_used)] // test helpers fail loudly on broken fixtures

use std::path::{Path, PathBuf};

use backroom_profiles::{Severity, render_file, render_fleet};

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

#[test]
fn the_sample_fleet_renders_without_errors_or_warnings_but_that_runbooks_do_not_run_yet() {
    let stores = render_fleet(&dir("fleet")).expect("fleet folder lists");
    assert!(stores.len() >= 3, "the sample fleet has at least three stores");
    let mut formats = std::collections::BTreeSet::new();
    let mut has_vm = false;
    let mut has_container = false;
    for s in &stores {
        let r = match &s.result {
            Ok(r) => r,
            Err(e) => panic!("{} does not render:\n{:#?}", s.path.display(), e.diagnostics),
        };
        // The one warning the sample fleet has: its runbooks are not run yet (said loudly).
        let other: Vec<_> = r
            .warnings
            .iter()
            .filter(|d| !d.message.contains("does not run runbooks yet"))
            .collect();
        assert!(other.is_empty(), "{}: {:#?}", s.id, other);
        assert_eq!(
            r.warnings.len(),
            r.profile.runbooks.len(),
            "{}: one warning per runbook: {:#?}",
            s.id,
            r.warnings
        );
        formats.insert(r.profile.metadata.name.to_string());
        has_vm |= r.profile.vms().count() > 0;
        has_container |= r.profile.containers().count() > 0;
    }
    assert_eq!(formats.into_iter().collect::<Vec<_>>(), ["coffee-shop", "grocery"]);
    assert!(has_vm && has_container);
}

#[derive(Debug)]
struct Expect {
    file: String,
    line: u32,
    column: u32,
    fragment: String,
}

fn expectations(path: &Path) -> Vec<Expect> {
    let text = std::fs::read_to_string(path).unwrap();
    let own = path.file_name().unwrap().to_string_lossy().into_owned();
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(|rest| {
            let (loc, fragment) =
                rest.split_once(' ').expect("expect line has a position and a message");
            let parts: Vec<&str> = loc.split(':').collect();
            let (file, line, column) = match parts.as_slice() {
                [l, c] => (own.clone(), l, c),
                [f, l, c] => (f.to_string(), l, c),
                _ => panic!("bad expect position {loc} in {}", path.display()),
            };
            Expect {
                file,
                line: line.parse().unwrap(),
                column: column.parse().unwrap(),
                fragment: fragment.to_string(),
            }
        })
        .collect()
}

#[test]
fn every_bad_fixture_is_refused_with_its_position_and_reason() {
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir("fleet-bad"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('_'))
        .collect();
    entries.sort();
    for path in entries {
        let expects = expectations(&path);
        assert!(!expects.is_empty(), "{} has no `# expect:` line", path.display());
        let invalid = match render_file(&path) {
            Ok(_) => {
                failures
                    .push(format!("{}: rendered, but should have been refused", path.display()));
                continue;
            }
            Err(e) => e,
        };
        let errors: Vec<_> =
            invalid.diagnostics.iter().filter(|d| d.severity == Severity::Error).collect();
        for d in &errors {
            assert!(d.pos.line >= 1 && d.pos.column >= 1 && !d.pos.file.is_empty(), "{d}");
        }
        let matched = expects.iter().all(|x| {
            errors.iter().any(|d| {
                d.pos.file.ends_with(&x.file)
                    && d.pos.line == x.line
                    && d.pos.column == x.column
                    && d.message.contains(&x.fragment)
            })
        });
        if !matched || errors.len() != expects.len() {
            failures.push(format!(
                "{}:\n  expected {:#?}\n  got:\n{}",
                path.display(),
                expects,
                errors.iter().map(|d| format!("    {d}\n")).collect::<String>()
            ));
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 25, "only {checked} bad fixtures");
}
