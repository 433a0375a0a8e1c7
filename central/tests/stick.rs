//! `centralctl token create --stick` against a real central (SQLite, loopback): the image is a
//! FAT filesystem that the system's own tools (util-linux's blkid, dosfstools' fsck.vfat,
//! mtools' mtype) call BACKROOM and accept, its `provision.toml` reads with the shared parser,
//! and the token in it enrolls.

#![allow(clippy::unwrap_used)] // test helpers fail loudly

mod common;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use backroom_daemon::clock::SystemClock;
use backroom_session::enroll::enroll_once;
use backroom_session::provision;
use common::{admin, any_port, node_url, start};

/// Runs a tool of the system's, failing loudly (with the package to install) if it is missing.
fn tool(name: &str, package: &str, args: &[&str]) -> Output {
    match std::process::Command::new(name).args(args).env("MTOOLS_SKIP_CHECK", "0").output() {
        Ok(o) => o,
        Err(e) => panic!(
            "{name} cannot be run ({e}): install the Debian package {package} (scripts/install-deps)"
        ),
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_create_stick_writes_a_fat_image_whose_token_enrolls() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), Arc::new(SystemClock), any_port(), any_port()).await;
    let _admin = admin(&c, data.path()).await;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("store-0042.img");
    let url = node_url(&c);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_centralctl"))
        .args(["token", "create", "--store", "store-0042", "--stick"])
        .arg(&img)
        .args(["--central-url", &url, "--central-url", "https://central-2.example:7443"])
        .args(["--insecure-registry", "10.0.2.2:5055"])
        .env("BACKROOM_SERVER", format!("https://{}", c.api))
        .env("BACKROOM_CA", data.path().join("ca.crt"))
        .env("BACKROOM_TOKEN_FILE", data.path().join("admin.token"))
        .env_remove("BACKROOM_TOKEN")
        .output()
        .await
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(said.contains(&format!("written to {}", img.display())), "{said}");
    assert!(
        said.contains(&format!("dd if={} of=/dev/sdX bs=1M conv=fsync", img.display())),
        "{said}"
    );
    let size = std::fs::metadata(&img).unwrap().len();
    assert!(size <= 16 << 20, "at most 16 MiB (spec): {size}");

    let img_s = img.to_str().unwrap();
    let label = tool("blkid", "util-linux", &["-o", "value", "-s", "LABEL", img_s]);
    assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "BACKROOM", "{}", text(&label));
    let fsck = tool("fsck.vfat", "dosfstools", &["-n", img_s]);
    assert!(fsck.status.success(), "fsck.vfat -n refuses the image: {}", text(&fsck));
    let cat = tool("mtype", "mtools", &["-i", img_s, "::provision.toml"]);
    assert!(cat.status.success(), "mtype: {}", text(&cat));
    let toml = String::from_utf8(cat.stdout).unwrap();

    let p = provision::parse(Path::new("provision.toml"), &toml).unwrap();
    assert_eq!(p.central, [url.clone(), "https://central-2.example:7443".to_string()]);
    assert_eq!(p.insecure_registries, ["10.0.2.2:5055"]);
    assert_eq!(p.token.to_string(), printed, "the token printed is the one on the stick");
    assert_eq!(p.token.store_id, "store-0042");

    let node = tempfile::tempdir().unwrap();
    let id = enroll_once(&p.central[0], &p.token, node.path(), "test-agent 1.0", "testhost")
        .await
        .unwrap();
    assert_eq!(id.store_id, "store-0042");
    c.stop().await;
}

#[tokio::test]
async fn stick_needs_a_central_url_and_checks_it_before_making_a_token() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_centralctl"))
            .args(["--server", "https://127.0.0.1:9", "--token", "x"])
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&["token", "create", "--store", "s", "--stick", "/tmp/never.img"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--central-url <URL>"), "{}", text(&o));
    // Refused before central is asked (nothing answers on port 9).
    let o = run(&[
        "token",
        "create",
        "--store",
        "s",
        "--stick",
        "/tmp/never.img",
        "--central-url",
        "central.example:7443",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("--central-url: \"central.example:7443\" is not an https://"),
        "{}",
        text(&o)
    );
    assert!(!Path::new("/tmp/never.img").exists());
}
