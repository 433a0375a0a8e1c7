//! The node daemons' systemd units (packaging/systemd) keep only the capabilities their
//! comments document, and exactly those: each unit's `CapabilityBoundingSet` equals the list its
//! comments give a reason for, and the list this test holds (a change to either is a change to
//! the README's least-privilege table too). Each has `NoNewPrivileges=yes`, serves with
//! `--socket-group backroom` (with `SupplementaryGroups=backroom`, so no CAP_CHOWN is needed
//! to hand the socket to the group), and its `ExecStart` is a command line the built binary
//! accepts (run with `--help` appended: clap refuses an unknown flag before it prints help).
//! `systemd-analyze verify` checks the units too when it is installed (scripts/deps.d lists
//! `systemd`); when it is absent the test says so and checks the rest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use backroom_integration::procs::require_bin;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The capabilities each daemon keeps (see each unit's comments and the README).
const KEPT: [(&str, &[&str]); 3] = [
    ("netd", &["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE", "CAP_SYS_ADMIN"]),
    ("vmd", &["CAP_SYS_ADMIN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"]),
    ("nodeagent", &["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]),
];

struct Unit {
    name: String,
    text: String,
}

impl Unit {
    fn read(name: &str) -> Unit {
        let p = repo().join(format!("packaging/systemd/{name}.service"));
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        Unit { name: name.into(), text }
    }

    /// The values of `key` in `[Service]`, in order.
    fn service(&self, key: &str) -> Vec<String> {
        let mut section = "";
        let mut out = Vec::new();
        for line in self.text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line;
            } else if section == "[Service]"
                && let Some((k, v)) = line.split_once('=')
                && k.trim() == key
            {
                out.push(v.trim().to_string());
            }
        }
        out
    }

    fn one(&self, key: &str) -> String {
        let v = self.service(key);
        assert_eq!(v.len(), 1, "{}.service: one {key}= in [Service], found {v:?}", self.name);
        v[0].clone()
    }

    /// The capabilities the comments give a reason for: lines `#   CAP_X: why`.
    fn documented(&self) -> BTreeSet<String> {
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter_map(|l| l.trim_start().split_once(':'))
            .filter(|(cap, _)| cap.starts_with("CAP_") && !cap.contains(' '))
            .map(|(cap, _)| cap.to_string())
            .collect()
    }
}

#[test]
fn each_unit_keeps_exactly_the_documented_capabilities() {
    for (name, kept) in KEPT {
        let u = Unit::read(name);
        let set: BTreeSet<String> =
            u.one("CapabilityBoundingSet").split_whitespace().map(str::to_string).collect();
        let want: BTreeSet<String> = kept.iter().map(|c| c.to_string()).collect();
        assert_eq!(set, want, "{name}.service: CapabilityBoundingSet is not the README's list");
        assert_eq!(u.documented(), want, "{name}.service: each kept capability needs its reason");
        assert_eq!(u.one("NoNewPrivileges"), "yes", "{name}.service");
        assert_eq!(u.one("AmbientCapabilities"), "", "{name}.service: no ambient capabilities");
        assert_eq!(u.one("SupplementaryGroups"), "backroom", "{name}.service");
        let exec = u.one("ExecStart");
        assert!(exec.contains("--socket-group backroom"), "{name}.service: {exec}");
    }
}

#[test]
fn the_backroom_group_is_made_by_sysusers() {
    let p = repo().join("packaging/sysusers.d/backroom.conf");
    let text = std::fs::read_to_string(&p).unwrap();
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines, [vec!["g", "backroom", "-"]], "{text}");
}

#[test]
fn each_exec_start_is_a_command_line_its_binary_accepts() {
    for (name, _) in KEPT {
        let u = Unit::read(name);
        let exec = u.one("ExecStart");
        let mut words = exec.split_whitespace();
        let program = words.next().unwrap();
        assert_eq!(program, format!("/usr/bin/{name}"), "{name}.service");
        // `$NAME` words are systemd's expansions of an EnvironmentFile, empty unless set.
        let args: Vec<&str> = words.filter(|w| !w.starts_with('$')).collect();
        let bin = require_bin(name);
        // clap parses left to right: a flag the binary does not have (or not at that place)
        // fails before `--help` is reached.
        let out = Command::new(&bin).args(&args).arg("--help").output().unwrap();
        assert!(
            out.status.success(),
            "{name}.service: `{name} {}` is refused: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        let help = String::from_utf8_lossy(&out.stdout);
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            assert!(help.contains(flag), "{name}.service: {flag} is not in its --help:\n{help}");
        }
    }
}

#[test]
fn systemd_analyze_verify_finds_nothing_wrong() {
    let found = Command::new("systemd-analyze").arg("--version").output();
    if found.is_err() {
        let listed = std::fs::read_to_string(repo().join("scripts/deps.d/build.list"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.split('#').next().unwrap_or("").trim() == "systemd");
        assert!(listed, "systemd-analyze is absent and `systemd` is not in scripts/deps.d");
        eprintln!(
            "systemd-analyze is not installed: the units were checked by this test only (scripts/install-deps installs it)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for (name, _) in KEPT {
        // The built binary in place of /usr/bin's, so that verify checks it can run.
        let text = Unit::read(name)
            .text
            .replace(&format!("/usr/bin/{name}"), &require_bin(name).display().to_string());
        let p = dir.path().join(format!("{name}.service"));
        std::fs::write(&p, text).unwrap();
        units.push(p);
    }
    // The recovery console's template, as the instance on the server's screen.
    let console =
        std::fs::read_to_string(repo().join("packaging/systemd/backroom-console@.service"))
            .unwrap()
            .replace("/usr/bin/nodectl", &require_bin("nodectl").display().to_string());
    let p = dir.path().join("backroom-console@tty1.service");
    std::fs::write(&p, console).unwrap();
    units.push(p);
    // central's unit, from the backroom-central package.
    let central =
        std::fs::read_to_string(repo().join("packaging/systemd/backroom-central.service"))
            .unwrap()
            .replace("/usr/bin/central", &require_bin("central").display().to_string());
    let p = dir.path().join("backroom-central.service");
    std::fs::write(&p, central).unwrap();
    units.push(p);
    let out =
        Command::new("systemd-analyze").args(["verify", "--man=no"]).args(&units).output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify:\n{said}");
}

#[test]
fn the_console_unit_starts_a_command_nodectl_accepts() {
    let text = std::fs::read_to_string(repo().join("packaging/systemd/backroom-console@.service"))
        .unwrap();
    let exec = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("an ExecStart");
    let mut argv = exec.split_whitespace();
    assert_eq!(argv.next(), Some("/usr/bin/nodectl"));
    let out = Command::new(require_bin("nodectl")).args(argv).arg("--help").output().unwrap();
    assert!(out.status.success(), "{exec}: {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("TTYPath=/dev/%I") && text.contains("Restart=always"), "{text}");
}
