#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

const HOUR: Duration = Duration::from_secs(3600);
/// Some instant in 2026, not on a slot boundary.
const NOW: i64 = 1_796_385_780_000;

fn secret(n: u8) -> Secret {
    Secret::from_bytes(&[n; 32]).unwrap()
}

#[test]
fn a_code_reads_back_for_its_store_and_role() {
    let s = secret(1);
    let c = issue(&s, "store-0042", Role::Technician, NOW, HOUR).unwrap();
    assert_eq!(c.text.len(), 11);
    assert_eq!(c.text.as_bytes()[5], b'-');
    // The end of the 10-minute slot the hour ends in.
    assert_eq!(c.expires_ms % SLOT_MS, 0);
    assert!(c.expires_ms >= NOW + 3_600_000 && c.expires_ms < NOW + 3_600_000 + SLOT_MS);
    let g = verify(&s, "store-0042", &c.text, NOW).unwrap();
    assert_eq!(g, Grant { role: Role::Technician, expires_ms: c.expires_ms });
    let staff = issue(&s, "store-0042", Role::Staff, NOW, HOUR).unwrap();
    assert_eq!(verify(&s, "store-0042", &staff.text, NOW).unwrap().role, Role::Staff);
}

#[test]
fn input_is_forgiving() {
    let s = secret(2);
    let c = issue(&s, "store-0001", Role::Staff, NOW, HOUR).unwrap();
    let plain: String = c.text.chars().filter(|c| *c != '-').collect();
    let spaced = format!(" {} {} ", &plain[..5], &plain[5..]).to_lowercase();
    assert!(verify(&s, "store-0001", &spaced, NOW).is_ok(), "{spaced}");
    // O for 0, I and L for 1.
    let misread = plain.replace('0', "o").replace('1', "L");
    assert!(verify(&s, "store-0001", &misread, NOW).is_ok(), "{misread}");
    let misread = plain.replace('1', "I");
    assert!(verify(&s, "store-0001", &misread, NOW).is_ok(), "{misread}");
}

#[test]
fn malformed_codes_say_what_is_wrong() {
    let s = secret(3);
    let e = verify(&s, "s", "ABCDE-FGHJ", NOW).unwrap_err();
    assert!(e.to_string().contains("10 letters and digits, this one has 9"), "{e}");
    let e = verify(&s, "s", "ABCDE-FGHJKM", NOW).unwrap_err();
    assert!(e.to_string().contains("this one has 11"), "{e}");
    let e = verify(&s, "s", "ABCDU-FGHJK", NOW).unwrap_err();
    assert!(matches!(e, CodeError::Malformed(_)), "{e}");
    assert!(e.to_string().contains("`U`"), "{e}");
}

#[test]
fn a_code_is_good_until_its_expiry_and_not_after() {
    let s = secret(4);
    let c = issue(&s, "store-0042", Role::Technician, NOW, HOUR).unwrap();
    assert!(verify(&s, "store-0042", &c.text, c.expires_ms).is_ok());
    match verify(&s, "store-0042", &c.text, c.expires_ms + 1) {
        Err(CodeError::Expired { at_ms }) => assert_eq!(at_ms, c.expires_ms),
        other => panic!("{other:?}"),
    }
    // Long after (the slot's low bits came round again): not a valid code at all.
    let later = c.expires_ms + (1i64 << SLOT_BITS) * SLOT_MS;
    assert!(matches!(verify(&s, "store-0042", &c.text, later), Err(CodeError::Wrong)));
    // Weeks after: still known as expired.
    let weeks = c.expires_ms + 21 * 86_400_000;
    assert!(matches!(verify(&s, "store-0042", &c.text, weeks), Err(CodeError::Expired { .. })));
}

#[test]
fn clocks_that_disagree_by_days_still_agree_on_a_code() {
    let s = secret(5);
    let c = issue(&s, "store-0042", Role::Staff, NOW, MAX_TTL).unwrap();
    // The node's clock two weeks behind central's: the code reads right (and lasts longer).
    let behind = NOW - 14 * 86_400_000;
    assert_eq!(verify(&s, "store-0042", &c.text, behind).unwrap().expires_ms, c.expires_ms);
}

#[test]
fn ttl_bounds() {
    let s = secret(6);
    assert!(matches!(
        issue(&s, "s", Role::Staff, NOW, MAX_TTL + Duration::from_secs(1)),
        Err(CodeError::TtlTooLong(_))
    ));
    assert!(matches!(
        issue(&s, "s", Role::Staff, NOW, Duration::from_secs(60)),
        Err(CodeError::TtlTooShort(_))
    ));
    assert!(issue(&s, "s", Role::Staff, NOW, MIN_TTL).is_ok());
    assert!(issue(&s, "s", Role::Staff, NOW, MAX_TTL).is_ok());
}

#[test]
fn roles_parse_print_and_allow() {
    assert_eq!("Technician".parse::<Role>().unwrap(), Role::Technician);
    assert_eq!("staff".parse::<Role>().unwrap().to_string(), "staff");
    assert!("boss".parse::<Role>().unwrap_err().to_string().contains("staff or technician"));
    assert_eq!(serde_json::to_string(&Role::Technician).unwrap(), "\"technician\"");
    assert!(Role::Technician.allows(Role::Staff) && Role::Technician.allows(Role::Technician));
    assert!(Role::Staff.allows(Role::Staff) && !Role::Staff.allows(Role::Technician));
}

#[test]
fn the_secret_is_kept_private_and_never_printed() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("central").join(SECRET_FILE);
    assert!(Secret::load(&path).unwrap().is_none());
    let s = Secret::generate();
    assert_ne!(s, Secret::generate());
    s.save(&path).unwrap();
    assert_eq!(Secret::load(&path).unwrap().unwrap(), s);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let shown = format!("{s:?}");
    assert!(!shown.contains(&hex::encode(s.as_bytes())[..8]), "{shown}");
    assert!(matches!(Secret::from_bytes(&[0; 31]), Err(CodeError::SecretLength(31))));
    std::fs::write(&path, "not hex\n").unwrap();
    let e = Secret::load(&path).unwrap_err();
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
}

#[test]
fn the_limiter_locks_doubles_and_unlocks_with_time() {
    let s = secret(7);
    let good = issue(&s, "store-0042", Role::Staff, NOW, HOUR).unwrap();
    let mut l = Limiter::default();
    let mut now = NOW;
    for _ in 0..LIMIT - 1 {
        assert!(matches!(l.verify(&s, "store-0042", "00000-00000", now), Err(CodeError::Wrong)));
    }
    // Malformed and expired attempts are no guesses: they do not count.
    assert!(matches!(l.verify(&s, "store-0042", "000", now), Err(CodeError::Malformed(_))));
    l.check(now).unwrap();
    // The fifth wrong one locks for a minute; even the right code is refused meanwhile.
    assert!(matches!(l.verify(&s, "store-0042", "00000-00001", now), Err(CodeError::Wrong)));
    let until = now + 60_000;
    assert!(matches!(l.check(now), Err(CodeError::Locked { until_ms }) if until_ms == until));
    assert!(matches!(
        l.verify(&s, "store-0042", &good.text, until - 1),
        Err(CodeError::Locked { .. })
    ));
    // Unlocked when the minute is over; five more wrong ones lock for two minutes.
    now = until;
    l.check(now).unwrap();
    for _ in 0..LIMIT - 1 {
        assert_eq!(l.failure(now), None);
    }
    assert_eq!(l.failure(now), Some(now + 120_000));
    // It doubles up to 30 minutes.
    for _ in 0..10 {
        for _ in 0..LIMIT {
            l.failure(now);
        }
    }
    assert_eq!(l.locked_until_ms, now + 30 * 60_000);
    // What the node persists reads back; a right code after the lock resets everything.
    let json = serde_json::to_string(&l).unwrap();
    let mut back: Limiter = serde_json::from_str(&json).unwrap();
    assert_eq!(back, l);
    now = back.locked_until_ms;
    assert!(back.verify(&s, "store-0042", &good.text, now).is_ok());
    assert_eq!(back, Limiter::default());
}

fn store_id() -> impl Strategy<Value = String> {
    "[a-z0-9-]{1,63}"
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Staff), Just(Role::Technician)]
}

proptest! {
    #[test]
    fn issue_verify_round_trips(
        key in any::<[u8; 32]>(),
        store in store_id(),
        role in role(),
        now in 1_600_000_000_000i64..2_500_000_000_000,
        ttl_s in MIN_TTL.as_secs()..=MAX_TTL.as_secs(),
        wait in 0.0f64..=1.0,
    ) {
        let s = Secret::from_bytes(&key).unwrap();
        let c = issue(&s, &store, role, now, Duration::from_secs(ttl_s)).unwrap();
        prop_assert!(c.expires_ms >= now + (ttl_s as i64) * 1000);
        prop_assert!(c.expires_ms < now + (ttl_s as i64) * 1000 + SLOT_MS);
        // Any time from issue to expiry.
        let at = now + ((c.expires_ms - now) as f64 * wait) as i64;
        let g = verify(&s, &store, &c.text, at).unwrap();
        prop_assert_eq!(g, Grant { role, expires_ms: c.expires_ms });
        let late = verify(&s, &store, &c.text, c.expires_ms + 1);
        prop_assert!(matches!(late, Err(CodeError::Expired { .. })), "{:?}", late);
    }

    #[test]
    fn one_changed_character_is_refused(
        key in any::<[u8; 32]>(),
        store in store_id(),
        role in role(),
        pos in 0usize..CODE_LEN,
        delta in 1usize..32,
    ) {
        let s = Secret::from_bytes(&key).unwrap();
        let c = issue(&s, &store, role, NOW, HOUR).unwrap();
        let mut chars: Vec<u8> = c.text.bytes().filter(|b| *b != b'-').collect();
        let i = ALPHABET.iter().position(|a| *a == chars[pos]).unwrap();
        chars[pos] = ALPHABET[(i + delta) % 32];
        let changed = String::from_utf8(chars).unwrap();
        prop_assert!(verify(&s, &store, &changed, NOW).is_err(), "{} → {}", c.text, changed);
    }

    #[test]
    fn another_store_or_secret_refuses(
        key in any::<[u8; 32]>(),
        other_key in any::<[u8; 32]>(),
        store in store_id(),
        other in store_id(),
        role in role(),
    ) {
        prop_assume!(key != other_key && store != other);
        let s = Secret::from_bytes(&key).unwrap();
        let c = issue(&s, &store, role, NOW, HOUR).unwrap();
        let o = Secret::from_bytes(&other_key).unwrap();
        let r = verify(&o, &store, &c.text, NOW);
        prop_assert!(matches!(r, Err(CodeError::Wrong)), "{:?}", r);
        let r = verify(&s, &other, &c.text, NOW);
        prop_assert!(matches!(r, Err(CodeError::Wrong)), "{:?}", r);
    }

    #[test]
    fn the_limiter_round_trips_through_json(failures in 0u32..5, locks in 0u32..20, until in 0i64..i64::MAX / 2) {
        let l = Limiter { failures, locks, locked_until_ms: until };
        let back: Limiter = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
        prop_assert_eq!(back, l);
    }
}
