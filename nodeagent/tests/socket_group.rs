//! `--socket-group`: the real `nodeagent` serving with it, and the real `nodectl` run as a
//! non-root user (with `setpriv`, util-linux): refused when neither its gid nor its
//! supplementary groups hold the group, accepted when either does; refused by the peer
//! credentials check too when the socket's mode is opened wide; an unknown group stops the
//! daemon at start with a clear message. The group is made here (`groupadd -r`, a unique name)
//! and removed afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Namespace, bin, require_services};

/// A uid and gid no account on this machine has (the client runs as them).
const STRANGER: u32 = 64_123;

/// A system group for one test, deleted on drop.
struct Group {
    name: String,
    gid: u32,
}

impl Group {
    fn new() -> Group {
        let name = format!("bkdd{}", std::process::id());
        let o = Command::new("groupadd").args(["-r", &name]).output().expect("groupadd (passwd)");
        assert!(o.status.success(), "groupadd: {}", String::from_utf8_lossy(&o.stderr));
        let line = std::fs::read_to_string("/etc/group")
            .unwrap()
            .lines()
            .find(|l| l.starts_with(&format!("{name}:")))
            .map(str::to_string)
            .expect("the new group is in /etc/group");
        let gid = line.split(':').nth(2).unwrap().parse().unwrap();
        Group { name, gid }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).status();
    }
}

/// nodectl run as `STRANGER` with primary group `gid` and supplementary `groups`.
fn nodectl_as(nodectl: &Path, socket: &Path, gid: u32, groups: &[u32]) -> Output {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={STRANGER}")).arg(format!("--regid={gid}"));
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        c.arg(format!("--groups={}", list.join(",")));
    }
    c.arg(nodectl).arg("--socket").arg(socket).arg("status").output().expect("setpriv (util-linux)")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn agent(dir: &Path, ns: &Namespace, group: &str) -> Command {
    let mut c = Command::new(bin("nodeagent"));
    c.arg("--socket")
        .arg(dir.join("nodeagent.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--netd-socket", "none", "--vmd-socket", "none"])
        .args(["--containerd-namespace", &ns.name, "--socket-group", group])
        .stdout(Stdio::null());
    c
}

#[test]
fn only_root_and_the_socket_group_may_use_the_socket() {
    require_services();
    let group = Group::new();
    let ns = Namespace::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The stranger must reach the socket's folder and run nodectl: both in a 0755 folder.
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let nodectl: PathBuf = d.join("nodectl");
    std::fs::copy(bin("nodectl"), &nodectl).unwrap();
    let socket = d.join("nodeagent.sock");
    let log = std::fs::File::create(d.join("nodeagent.log")).unwrap();
    let mut child = agent(d, &ns, &group.name).stderr(log).spawn().unwrap();
    let t0 = Instant::now();
    loop {
        let o = Command::new(&nodectl).arg("--socket").arg(&socket).arg("status").output().unwrap();
        if o.status.success() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!(
                "nodeagent did not answer root: {}",
                std::fs::read_to_string(d.join("nodeagent.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, group.gid), "0660, owned by the group");

    let outsider = nodectl_as(&nodectl, &socket, STRANGER, &[]);
    let by_gid = nodectl_as(&nodectl, &socket, group.gid, &[]);
    let by_supplementary = nodectl_as(&nodectl, &socket, STRANGER, &[STRANGER, group.gid]);
    // With the socket's mode opened wide, only the peer credentials check stands.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let outsider_wide = nodectl_as(&nodectl, &socket, STRANGER, &[]);
    let member_wide = nodectl_as(&nodectl, &socket, STRANGER, &[group.gid]);
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(d.join("nodeagent.log")).unwrap_or_default();

    assert!(!outsider.status.success(), "a non-member got in: {}", text(&outsider));
    assert!(by_gid.status.success(), "the group as gid was refused: {}", text(&by_gid));
    assert!(
        by_supplementary.status.success(),
        "the group as a supplementary group was refused: {}",
        text(&by_supplementary)
    );
    assert!(
        !outsider_wide.status.success(),
        "peer credentials let a non-member in: {}",
        text(&outsider_wide)
    );
    assert!(member_wide.status.success(), "{}", text(&member_wide));
    assert!(
        log.contains("refused a connection") && log.contains(&format!("uid={STRANGER}")),
        "the refusal by credentials is logged: {log}"
    );

    // An unknown group: no daemon, and a message that says what to do.
    let gone = format!("{}x", group.name);
    let o = agent(d, &ns, &gone).stderr(Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "started with an unknown group: {err}");
    assert!(err.contains(&format!("the socket group \"{gone}\" does not exist")), "{err}");
}
