//! The real OS host's file-only parts on temporary folders: the loader entry, loader.conf's
//! default, the one-shot EFI variable's bytes, the running version and slot, and the download
//! (resumed with a Range request, sha256-checked) from an HTTP server on 127.0.0.1. The slot
//! write, mount and reboot are the QEMU boot test's.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use backroom_nodeagent::os::real::{OsPaths, RealOsHost, efivar_bytes, entry_text, with_default};
use backroom_nodeagent::os::{OsHost, Running, Slot};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn paths(dir: &Path) -> OsPaths {
    let mut p = OsPaths::system(dir);
    p.esp = dir.join("esp");
    p.efivars = dir.join("efivars");
    p.partitions = dir.join("parts");
    p.os_version = dir.join("os-version");
    p.cmdline = dir.join("cmdline");
    p.run = dir.join("run");
    p.reboot = vec!["true".into()];
    for d in [&p.esp, &p.efivars, &p.partitions, &p.run] {
        std::fs::create_dir_all(d).unwrap();
    }
    p
}

#[test]
fn running_version_and_slot_come_from_os_version_and_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = paths(dir.path());
    let host = RealOsHost::new(p.clone()).unwrap();
    assert_eq!(host.running(), None, "no os-version file: not the store OS");
    std::fs::write(&p.os_version, "2026.12.1\n").unwrap();
    std::fs::write(&p.cmdline, "root=/dev/sda2 quiet\n").unwrap();
    assert_eq!(host.running(), None, "no backroom.slot=: not the store OS");
    std::fs::write(
        &p.cmdline,
        "root=/dev/disk/by-partlabel/backroom-root-b ro backroom.slot=b quiet\n",
    )
    .unwrap();
    assert_eq!(host.running(), Some(Running { version: "2026.12.1".into(), slot: Slot::B }));
}

#[test]
fn loader_entry_and_default_and_one_shot() {
    let dir = tempfile::tempdir().unwrap();
    let p = paths(dir.path());
    let host = RealOsHost::new(p.clone()).unwrap();
    host.write_entry(Slot::B, "2026.12.1").unwrap();
    let entry = std::fs::read_to_string(p.entry(Slot::B)).unwrap();
    assert_eq!(entry, entry_text(Slot::B, "2026.12.1"));
    assert_eq!(
        entry,
        "title Backroom store OS 2026.12.1 (slot B)\nversion 2026.12.1\nlinux /backroom/b/vmlinuz\n\
         initrd /backroom/b/initrd.img\noptions root=/dev/disk/by-partlabel/backroom-root-b \
         rootfstype=squashfs ro backroom.slot=b console=tty1 console=ttyS0,115200 quiet\n"
    );

    std::fs::create_dir_all(p.esp.join("loader")).unwrap();
    let conf = "default backroom-a.conf\ntimeout 0\neditor no\nconsole-mode keep\n";
    std::fs::write(p.loader_conf(), conf).unwrap();
    host.commit(Slot::B).unwrap();
    assert_eq!(
        std::fs::read_to_string(p.loader_conf()).unwrap(),
        "default backroom-b.conf\ntimeout 0\neditor no\nconsole-mode keep\n"
    );
    assert_eq!(
        with_default("timeout 0\n", "backroom-a.conf"),
        "default backroom-a.conf\ntimeout 0\n"
    );
    let leftovers: Vec<_> = std::fs::read_dir(p.esp.join("loader"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // An old value is replaced, not appended to.
    std::fs::write(p.one_shot_var(), [0u8; 100]).unwrap();
    host.boot_once(Slot::B).unwrap();
    let bytes = std::fs::read(p.one_shot_var()).unwrap();
    assert_eq!(bytes, efivar_bytes("backroom-b.conf"));
    let mut want = vec![7u8, 0, 0, 0];
    for c in "backroom-b.conf".bytes() {
        want.extend([c, 0]);
    }
    want.extend([0, 0]);
    assert_eq!(bytes, want);
    assert!(p.one_shot_var().ends_with("LoaderEntryOneShot-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"));
}

#[test]
fn boot_files_are_the_newest_kernel_and_initrd() {
    let dir = tempfile::tempdir().unwrap();
    let p = paths(dir.path());
    let host = RealOsHost::new(p.clone()).unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    for (n, t) in [
        ("vmlinuz-6.1.0-9-amd64", "old k"),
        ("vmlinuz-6.1.0-12-amd64", "new k"),
        ("initrd.img-6.1.0-9-amd64", "old i"),
        ("initrd.img-6.1.0-12-amd64", "new i"),
    ] {
        std::fs::write(root.join("boot").join(n), t).unwrap();
    }
    host.copy_boot_files(&root, Slot::A).unwrap();
    let esp = p.esp.join("backroom/a");
    assert_eq!(std::fs::read_to_string(esp.join("vmlinuz")).unwrap(), "new k");
    assert_eq!(std::fs::read_to_string(esp.join("initrd.img")).unwrap(), "new i");
}

#[tokio::test]
async fn the_slot_write_copies_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let p = paths(dir.path());
    let host = RealOsHost::new(p.clone()).unwrap();
    let image = dir.path().join("img");
    std::fs::write(&image, b"squashfs bytes").unwrap();
    std::fs::write(p.partition(Slot::B), b"").unwrap();
    host.write_slot(&image, Slot::B).await.unwrap();
    assert_eq!(std::fs::read(p.partition(Slot::B)).unwrap(), b"squashfs bytes");
}

/// Serves `body` over HTTP/1.1 on 127.0.0.1, honouring `Range: bytes=N-`; returns its URL and
/// the Range headers it saw.
async fn serve(body: Vec<u8>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let body = body.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                let req = String::from_utf8_lossy(&req).to_lowercase();
                let from = req
                    .lines()
                    .find_map(|l| l.strip_prefix("range: bytes="))
                    .and_then(|r| r.trim().trim_end_matches('-').parse::<usize>().ok());
                seen.lock().unwrap().push(from.map(|f| format!("bytes={f}-")).unwrap_or_default());
                let head = match from {
                    Some(f) if f >= body.len() => {
                        "HTTP/1.1 416 Range Not Satisfiable\r\ncontent-length: 0\r\n\r\n"
                            .to_string()
                    }
                    Some(f) => format!(
                        "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {f}-{}/{}\r\n\r\n",
                        body.len() - f,
                        body.len() - 1,
                        body.len()
                    ),
                    None => format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()),
                };
                let _ = s.write_all(head.as_bytes()).await;
                let start = from.unwrap_or(0).min(body.len());
                let _ = s.write_all(&body[start..]).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (format!("http://{addr}/os/root.img"), seen)
}

#[tokio::test]
async fn the_download_resumes_from_the_part_file_and_checks_the_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let p = paths(dir.path());
    let host = RealOsHost::new(p.clone()).unwrap();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sha = hex::encode(Sha256::digest(&body));
    let (url, seen) = serve(body.clone()).await;

    // A download cut short earlier left the first 100000 bytes.
    std::fs::create_dir_all(&p.downloads).unwrap();
    std::fs::write(p.downloads.join(format!("{sha}.part")), &body[..100_000]).unwrap();
    let file = host.fetch(&url, &sha).await.unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), body);
    assert_eq!(seen.lock().unwrap().as_slice(), ["bytes=100000-"]);
    assert!(!p.downloads.join(format!("{sha}.part")).exists());
    // Fetched once: the verified file is kept.
    host.fetch(&url, &sha).await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_sha256_mismatch_deletes_the_part_file_and_names_both_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let p = paths(dir.path());
    let host = RealOsHost::new(p.clone()).unwrap();
    let body = b"not the image you want".to_vec();
    let found = hex::encode(Sha256::digest(&body));
    let wanted = "0".repeat(64);
    let (url, _) = serve(body).await;
    let e = host.fetch(&url, &wanted).await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&found) && msg.contains(&wanted), "{msg}");
    assert!(matches!(e, backroom_nodeagent::Error::OsImageMismatch { .. }));
    assert!(!p.downloads.join(format!("{wanted}.part")).exists());
}
