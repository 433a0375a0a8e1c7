use super::*;

use proptest::prelude::*;

/// A CA of the test's own and an identity for `store` signed by it (what central would send).
fn identity(store: &str) -> Identity {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let (key_pem, _) = pki::new_key_and_csr(store).unwrap();
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, store);
    let cert = p.signed_by(&key, &issuer).unwrap();
    Identity::from_pems(key_pem, cert.pem(), ca_cert.pem(), "tokenhash".into()).unwrap()
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn the_identity_is_one_file_that_reads_back_whole() {
    let d = tempfile::tempdir().unwrap();
    assert!(Identity::load(d.path()).unwrap().is_none(), "nothing there: not enrolled");
    let id = identity("store-0042");
    id.save(d.path()).unwrap();
    assert_eq!(files(d.path()), ["identity.json"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.path().join(IDENTITY)).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let back = Identity::load(d.path()).unwrap().unwrap();
    assert_eq!(
        (back.store_id.as_str(), &back.key_pem, &back.cert_pem, &back.ca_pem, &back.enrolled_with),
        ("store-0042", &id.key_pem, &id.cert_pem, &id.ca_pem, &id.enrolled_with)
    );
}

#[test]
fn a_save_cut_off_at_any_point_leaves_the_old_identity_or_the_new_one() {
    let d = tempfile::tempdir().unwrap();
    let old = identity("store-0042");
    old.save(d.path()).unwrap();
    let new = identity("store-0042");
    let bytes = serde_json::to_vec_pretty(&IdentityFile {
        key_pem: new.key_pem.clone(),
        cert_pem: new.cert_pem.clone(),
        ca_pem: new.ca_pem.clone(),
        enrolled_with: new.enrolled_with.clone(),
    })
    .unwrap();
    // Each point the save can be cut at before its rename: a temporary file beside the
    // identity, torn anywhere or whole. The identity read is the old one, and it is whole.
    let tmp = d.path().join(".identity.json.tmp.1.0");
    for cut in [0, 1, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1, bytes.len()] {
        std::fs::write(&tmp, &bytes[..cut]).unwrap();
        let got = Identity::load(d.path()).unwrap().unwrap();
        assert_eq!(got.cert_pem, old.cert_pem, "cut at {cut}");
        assert_eq!(got.key_pem, old.key_pem, "cut at {cut}");
    }
    // After the rename: the new one, whole.
    std::fs::rename(&tmp, d.path().join(IDENTITY)).unwrap();
    let got = Identity::load(d.path()).unwrap().unwrap();
    assert_eq!((got.cert_pem, got.key_pem), (new.cert_pem, new.key_pem));
}

#[test]
fn the_layout_of_before_is_read_and_a_half_written_one_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let id = identity("store-0042");
    let write = |key: &str, cert: &str| {
        std::fs::write(d.path().join(OLD_KEY), key).unwrap();
        std::fs::write(d.path().join(OLD_CERT), cert).unwrap();
        std::fs::write(d.path().join(OLD_CA), &id.ca_pem).unwrap();
    };
    write(&id.key_pem, &id.cert_pem);
    let got = Identity::load(d.path()).unwrap().unwrap();
    assert_eq!((got.store_id.as_str(), got.enrolled_with.as_str()), ("store-0042", ""));
    // A save replaces it with the one file and leaves no old key behind.
    got.save(d.path()).unwrap();
    assert_eq!(files(d.path()), ["identity.json"]);

    // An older nodeagent cut off between its writes: the new key beside the old certificate.
    std::fs::remove_file(d.path().join(IDENTITY)).unwrap();
    let other = identity("store-0042");
    write(&other.key_pem, &id.cert_pem);
    let e = Identity::load(d.path()).unwrap_err();
    assert!(matches!(e, EnrollError::Broken { .. }), "{e}");
    assert!(e.to_string().contains("does not belong to the certificate"), "{e}");
    // Only part of it there.
    std::fs::remove_file(d.path().join(OLD_CERT)).unwrap();
    assert!(matches!(Identity::load(d.path()), Err(EnrollError::Broken { .. })));
}

#[test]
fn a_garbled_identity_file_falls_back_to_the_layout_of_before_or_says_so() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join(IDENTITY), b"{\"key_pem\": \"---").unwrap();
    let e = Identity::load(d.path()).unwrap_err();
    assert!(e.to_string().contains("identity.json"), "{e}");
    let id = identity("store-0042");
    std::fs::write(d.path().join(OLD_KEY), &id.key_pem).unwrap();
    std::fs::write(d.path().join(OLD_CERT), &id.cert_pem).unwrap();
    std::fs::write(d.path().join(OLD_CA), &id.ca_pem).unwrap();
    assert_eq!(Identity::load(d.path()).unwrap().unwrap().cert_pem, id.cert_pem);
}

#[test]
fn an_enrollment_keeps_its_key_until_it_is_done() {
    let d = tempfile::tempdir().unwrap();
    let first = pending_key(d.path()).unwrap();
    assert_eq!(pending_key(d.path()).unwrap(), first, "a retry sends the same key");
    std::fs::write(d.path().join(PENDING_KEY), "torn").unwrap();
    let again = pending_key(d.path()).unwrap();
    assert_ne!(again, first);
    assert!(pki::key_pem_fingerprint(&again).is_ok());
}

#[test]
fn only_what_may_pass_is_tried_again() {
    use tonic::Code;
    for code in
        [Code::Unavailable, Code::DeadlineExceeded, Code::Cancelled, Code::Unknown, Code::Internal]
    {
        assert!(status_is_transient(&tonic::Status::new(code, "x")), "{code:?}");
    }
    for code in [
        Code::PermissionDenied,
        Code::InvalidArgument,
        Code::Unauthenticated,
        Code::FailedPrecondition,
        Code::NotFound,
    ] {
        assert!(!status_is_transient(&tonic::Status::new(code, "x")), "{code:?}");
    }
    let cut = EnrollError::Interrupted {
        what: "enrollment",
        source: tonic::Status::unavailable("reset"),
    };
    assert!(cut.is_transient());
    assert!(!EnrollError::Refused("the enrollment token was already used".into()).is_transient());
    assert!(!EnrollError::IdentityRefused("revoked".into()).is_transient());
}

proptest! {
    /// What the node writes as its identity, it reads back, whatever the text inside.
    #[test]
    fn the_identity_file_round_trips(key in ".*", cert in ".*", ca in ".*", token in "[0-9a-f]{0,64}") {
        let f = IdentityFile { key_pem: key, cert_pem: cert, ca_pem: ca, enrolled_with: token };
        let bytes = serde_json::to_vec_pretty(&f).unwrap();
        prop_assert_eq!(serde_json::from_slice::<IdentityFile>(&bytes).unwrap(), f);
    }
}

#[test]
fn the_console_secret_is_kept_beside_the_identity_and_never_needed_to_load_it() {
    let d = tempfile::tempdir().unwrap();
    let mut id = identity("store-0042");
    let secret = crate::console_code::Secret::generate();
    id.console_secret = Some(secret.clone());
    id.save(d.path()).unwrap();
    assert_eq!(files(d.path()), ["console.key", "identity.json"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(console_secret_path(d.path())).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let back = Identity::load(d.path()).unwrap().unwrap();
    assert_eq!(back.console_secret, Some(secret));
    // The Debug of an identity shows neither the key nor the secret.
    assert!(!format!("{back:?}").contains(&hex::encode(back.console_secret.unwrap().as_bytes())));
    // A garbled secret file does not lock the node out: the identity loads without it.
    std::fs::write(console_secret_path(d.path()), b"garbage").unwrap();
    let back = Identity::load(d.path()).unwrap().unwrap();
    assert!(back.console_secret.is_none());
    // Central's bytes: empty (an older central) and the wrong length are no secret.
    assert!(console_secret_from(&[]).is_none());
    assert!(console_secret_from(&[1; 31]).is_none());
    assert!(console_secret_from(&[1; 32]).is_some());
}
