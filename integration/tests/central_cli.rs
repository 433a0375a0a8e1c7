//! `centralctl` against a real `central` process: tokens, fleet push and diff, store views,
//! roles, and central's record surviving kill -9.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use backroom_integration::procs::{CentralProc, require_bin};

fn repo(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel).display().to_string()
}

struct Ctl<'a> {
    central: &'a CentralProc,
    token: String,
}

impl Ctl<'_> {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(require_bin("centralctl"))
            .args(args)
            .env("BACKROOM_SERVER", format!("https://{}", self.central.api))
            .env("BACKROOM_TOKEN", &self.token)
            .env("BACKROOM_CA", self.central.data.join("ca.crt"))
            .env("HOME", self.central.data.as_os_str())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let text =
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "centralctl {args:?} failed: {text}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

#[test]
fn an_operator_pushes_a_fleet_and_reads_it_back_and_central_survives_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("central");
    std::fs::create_dir_all(&dir).unwrap();
    let mut central = CentralProc::start(&require_bin("central"), &dir, None, None, &[]).unwrap();
    let ctl = Ctl { token: central.admin_token().unwrap(), central: &central };

    let token =
        ctl.ok(&["token", "create", "--store", "store-0042", "--region", "us-west", "--ttl", "1h"]);
    assert!(token.trim().starts_with("bkt1.store-0042."), "{token}");

    let diff = ctl.ok(&["fleet", "diff", &repo("profiles/fleet")]);
    assert_eq!(diff.matches(": new store").count(), 4, "{diff}");
    let push = ctl.ok(&["fleet", "push", &repo("profiles/fleet")]);
    assert!(push.contains("4 stores pushed, 4 new revisions"), "{push}");
    let again = ctl.ok(&["fleet", "push", &repo("profiles/fleet")]);
    assert!(again.contains("4 stores pushed, 0 new revisions"), "{again}");
    let diff = ctl.ok(&["fleet", "diff", &repo("profiles/fleet")]);
    assert_eq!(diff.matches(": unchanged").count(), 4, "{diff}");

    let list = ctl.ok(&["store", "list"]);
    assert!(list.lines().next().unwrap().starts_with("STORE"), "{list}");
    for s in ["store-0042", "store-0117", "store-2001", "store-2002"] {
        assert!(
            list.lines().any(|l| l.starts_with(s) && l.contains("not enrolled")),
            "{s}: {list}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["store", "list", "--json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 4);
    assert!(ctl.ok(&["alerts"]).contains("no open alerts"));

    // A viewer can look but not push.
    let viewer = ctl.ok(&["api-token", "create", "--name", "dashboard", "--role", "viewer"]);
    let as_viewer = Ctl { token: viewer.trim().to_string(), central: &central };
    as_viewer.ok(&["store", "list"]);
    let refused = as_viewer.run(&["fleet", "push", &repo("profiles/fleet")]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Viewer role"), "{refused:?}");
    let bad = Ctl { token: "bko1.nope".into(), central: &central };
    let o = bad.run(&["store", "list"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not known"), "{o:?}");

    // An invalid fleet is refused before anything is sent.
    let fleet = data.path().join("fleet");
    for sub in ["base", "regions", "stores"] {
        std::fs::create_dir_all(fleet.join(sub)).unwrap();
        for e in std::fs::read_dir(repo(&format!("profiles/fleet/{sub}"))).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, fleet.join(sub).join(p.file_name().unwrap())).unwrap();
        }
    }
    let store = fleet.join("stores/store-0042.yaml");
    let text = std::fs::read_to_string(&store)
        .unwrap()
        .replace("store_octet: \"42\"", "store_octet: \"420\"");
    std::fs::write(&store, text).unwrap();
    let o = ctl.run(&["fleet", "push", fleet.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing was sent"), "{o:?}");

    // kill -9 and start again on the same data: everything is still there.
    let (listen, api) = (central.listen, central.api);
    drop(ctl);
    drop(as_viewer);
    drop(bad);
    central.kill().unwrap();
    let central =
        CentralProc::start(&require_bin("central"), &dir, Some(listen), Some(api), &[]).unwrap();
    let ctl = Ctl { token: central.admin_token().unwrap(), central: &central };
    let after = ctl.ok(&["fleet", "push", &repo("profiles/fleet")]);
    assert!(after.contains("0 new revisions"), "{after}");
    let get = ctl.ok(&["store", "get", "store-2001"]);
    assert!(get.contains("store-2001"), "{get}");
}
