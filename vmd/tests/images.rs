//! Base images over http and https (loopback servers started by the test; https with a CA
//! made by the test, given as vmd's `--image-ca`) and from node paths; and the netd client
//! against a stand-in netd on a unix socket.

#![allow(clippy::unwrap_used)]

mod common;

use backroom_profiles::render_str;
use backroom_vmd::images::ImageCache;
use backroom_vmd::layout::Layout;
use backroom_vmd::nics::{NetdNics, NicSource};
use common::*;

fn blob(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn download_is_resumed_verified_and_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let www = tmp.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("base.img"), blob(3 << 20)).unwrap();
    let sha = sha256_file(&www.join("base.img"));
    let http = HttpServer::start(www.clone(), 2);
    let url = format!("http://127.0.0.1:{}/base.img", http.port);
    let cache = ImageCache::new(Layout::new(tmp.path().join("state"))).unwrap();

    let p = cache.fetch_url(&url, &sha).await.unwrap();
    assert_eq!(p, tmp.path().join("state/images/sha256").join(&sha));
    assert_eq!(sha256_file(&p), sha);
    let reqs = http.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 3, "two cut downloads, then the rest: {reqs:?}");
    assert_eq!(reqs[0], "GET /base.img from 0 (cut)");
    assert!(reqs[1].contains("from 1572864 (cut)"), "resumed where the first stopped: {reqs:?}");
    assert!(reqs[2].starts_with("GET /base.img from 23"), "{reqs:?}");
    // Cached by digest: no request the second time.
    cache.fetch_url(&url, &sha).await.unwrap();
    assert_eq!(http.requests.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn https_downloads_trust_the_image_ca_given_and_refuse_an_unknown_one() {
    let tmp = tempfile::tempdir().unwrap();
    let www = tmp.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("base.img"), blob(1 << 20)).unwrap();
    let sha = sha256_file(&www.join("base.img"));
    let tls = TestTls::new();
    let https = HttpServer::start_tls(www.clone(), &tls);
    let url = format!("https://127.0.0.1:{}/base.img", https.port);

    // The system's store does not know this CA: refused, nothing kept.
    let plain = ImageCache::new(Layout::new(tmp.path().join("plain"))).unwrap();
    let e = plain.fetch_url(&url, &sha).await.unwrap_err();
    let text = format!("{e} {:?}", std::error::Error::source(&e));
    assert!(text.contains(&url), "the error names the download: {text}");
    assert!(plain.cached(&sha).is_none());
    assert!(https.requests.lock().unwrap().is_empty(), "no request got through the handshake");

    // Given the CA (vmd --image-ca): downloaded, verified, cached.
    let ca = tmp.path().join("hq-ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    let cache = ImageCache::with_ca(Layout::new(tmp.path().join("state")), Some(&ca)).unwrap();
    let p = cache.fetch_url(&url, &sha).await.unwrap();
    assert_eq!(sha256_file(&p), sha);
    assert_eq!(https.requests.lock().unwrap().len(), 1);

    // A file that holds no certificate is refused with its name.
    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let e = ImageCache::with_ca(Layout::new(tmp.path().join("junk")), Some(&junk)).unwrap_err();
    assert!(e.to_string().contains("junk.pem"), "{e}");
}

#[tokio::test]
async fn a_wrong_digest_is_refused_and_nothing_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let www = tmp.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("base.img"), blob(1 << 16)).unwrap();
    let http = HttpServer::start(www.clone(), 0);
    let url = format!("http://127.0.0.1:{}/base.img", http.port);
    let cache = ImageCache::new(Layout::new(tmp.path().join("state"))).unwrap();
    let wrong = "ab".repeat(32);
    let e = cache.fetch_url(&url, &wrong).await.unwrap_err().to_string();
    assert!(e.contains("the profile says") && e.contains("not used"), "{e}");
    assert!(cache.cached(&wrong).is_none());
    assert!(!tmp.path().join("state/images/partial").join(format!("{wrong}.part")).exists());
    let e = cache
        .fetch_url(&format!("http://127.0.0.1:{}/missing.img", http.port), &wrong)
        .await
        .unwrap_err();
    let e = backroom_daemon::chain(&e);
    assert!(e.contains("failed 5 times") && e.contains("HTTP 404"), "{e}");
}

#[tokio::test]
async fn node_path_images_are_verified_and_copied_into_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("nvr.img");
    std::fs::write(&img, blob(1 << 16)).unwrap();
    let sha = sha256_file(&img);
    // The image's folder is one vmd takes node paths from (vmd --image-folder).
    let cache = ImageCache::new(Layout::new(tmp.path().join("state")))
        .unwrap()
        .with_folders(vec![tmp.path().to_path_buf()]);
    let e = cache.fetch_path(&img, Some(&"cd".repeat(32))).await.unwrap_err().to_string();
    assert!(e.contains(&format!("its sha256 is {sha}")), "{e}");
    let p = cache.fetch_path(&img, Some(&sha)).await.unwrap();
    assert_eq!(sha256_file(&p), sha);
    // Changing the node file later cannot touch the cached base.
    std::fs::remove_file(&img).unwrap();
    std::fs::write(&img, b"changed").unwrap();
    assert_eq!(sha256_file(&p), sha);
    assert!(
        cache
            .fetch_path(&tmp.path().join("nope.img"), None)
            .await
            .unwrap_err()
            .to_string()
            .contains("no such file")
    );
}

#[tokio::test]
async fn netd_client_takes_nics_from_netd_and_checks_them() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = common::fake_netd::FakeNetd::default();
    fake.answers.lock().unwrap().insert(
        "nvr".into(),
        vec![common::fake_netd::iface("cctv", "02:42:aa:bb:cc:dd", "10.9.20.77/24", "10.9.20.1")],
    );
    fake.answers.lock().unwrap().insert(
        "wrong".into(),
        vec![common::fake_netd::iface("pos", "02:42:aa:bb:cc:de", "10.9.10.7/24", "")],
    );
    let sock = common::fake_netd::serve(fake.clone(), tmp.path());
    let t = "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {name: t}\n\
             network:\n  segments:\n    - {name: cctv, internal: true, subnet: 10.9.20.0/24, address: 10.9.20.1/24}\n\
             workloads:\n  - {name: nvr, kind: vm, cpus: 1, memory: 1Gi, boot: {kernel: {kernel: /k}}, networks: [{segment: cctv, address: auto}]}\n\
             \x20 - {name: wrong, kind: vm, cpus: 1, memory: 1Gi, boot: {kernel: {kernel: /k}}, networks: [{segment: cctv, address: auto}]}\n";
    let p = render_str("t.yaml", t).unwrap().profile;
    let netd = NetdNics::new(&sock);
    let vms: Vec<_> = p.vms().collect();
    let nics = netd.attach(&p, vms[0]).await.unwrap();
    assert_eq!(nics[0].mac, "02:42:aa:bb:cc:dd");
    assert_eq!(nics[0].bridge, "br-cctv");
    assert_eq!(nics[0].address.unwrap().to_string(), "10.9.20.77/24");
    assert_eq!(nics[0].gateway.unwrap().to_string(), "10.9.20.1");
    let e = netd.attach(&p, vms[1]).await.unwrap_err().to_string();
    assert!(e.contains("where its profile has `cctv`"), "{e}");
    netd.detach("nvr").await.unwrap();
    assert_eq!(fake.detached.lock().unwrap().as_slice(), ["nvr"]);
    let gone = NetdNics::new(tmp.path().join("absent.sock"));
    assert!(gone.attach(&p, vms[0]).await.unwrap_err().to_string().contains("cannot reach netd"));
}

#[test]
fn a_daemon_refuses_a_boot_image_outside_its_image_folders_and_copies_nothing() {
    require_libvirt();
    let tmp = tempfile::Builder::new().prefix("vmd-folders").tempdir_in("/tmp").unwrap();
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    // The node's own key, beside the image folder; and a link to it from inside.
    let key = tmp.path().join("node.key");
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
    std::os::unix::fs::symlink(&key, images.join("nvr.qcow2")).unwrap();
    let d = Daemon::start(tmp.path(), &["--image-folder", images.to_str().unwrap()]);
    let vm = uniq();
    let _domains = Domains(vec![vm.clone()]);
    let profile = |image: &std::path::Path| {
        let t = format!(
            "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {{name: folders}}\n\
             node: {{reserved: {{cpus: 0.5, memory: 1Gi}}, capacity: {{cpus: 4, memory: 4Gi}}}}\n\
             workloads:\n  - {{name: {vm}, kind: vm, cpus: 1, memory: 256Mi, boot: {{disk: {{image: {}}}}}}}\n",
            image.display()
        );
        render_str("folders.yaml", &t).unwrap()
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for image in [key.clone(), images.join("nvr.qcow2"), images.join("../node.key")] {
        let r = profile(&image);
        let e = rt
            .block_on(async {
                let mut c = backroom_vmd::client::vmd_client(&d.socket).await.unwrap();
                c.apply(backroom_api::vmd::ApplyRequest {
                    revision: r.revision.as_str().into(),
                    profile_yaml: r.to_yaml(),
                })
                .await
            })
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{image:?}: {e:?}");
        let m = e.message();
        assert!(m.contains(&image.display().to_string()), "names the path: {m}");
        assert!(m.contains(&images.display().to_string()), "names the folder: {m}");
        assert!(m.contains("--image-folder"), "{m}");
    }
    let cached = std::fs::read_dir(d.state.join("images/sha256")).map(|r| r.count()).unwrap_or(0);
    let partial = std::fs::read_dir(d.state.join("images/partial")).map(|r| r.count()).unwrap_or(0);
    assert_eq!(cached + partial, 0, "nothing copied into the image cache");
    assert!(!virsh(&["list", "--all", "--name"]).lines().any(|l| l.trim() == format!("bk-{vm}")));
    assert!(d.list().is_empty(), "no VM taken on");
}
