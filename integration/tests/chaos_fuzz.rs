//! Fuzzing, on the stable toolchain, of what a store, a link or an operator sends in: the profile
//! parser (every layer of the sample fleet, the bad-profile fixtures, the canonical form central
//! sends in `Desired`) and the protobuf decoders of the node, operator and local APIs.
//!
//! A mutation fuzzer guided by behaviour, not by coverage (coverage-guided fuzzers need a nightly
//! toolchain or an instrumenting compiler this machine does not have): inputs are mutated from a
//! corpus (byte flips, inserts of YAML and protobuf tokens, truncation, splices of two inputs,
//! repeated spans); a mutant whose outcome is new (a new set of error kinds for the parser, a new
//! set of decoders that accept it for protobuf) joins the corpus. What must hold:
//! - nothing panics, and no input takes longer than [`SLOW`];
//! - the parser: every finding has a file, a line, a column and a sentence, and whatever renders
//!   reads back from its canonical form to the same revision;
//! - protobuf: whatever decodes encodes to bytes that decode and encode again to the same bytes.
//!
//! An input that breaks one of these is written to `integration/fuzz/regressions/<target>/`,
//! and [`every_saved_regression_still_holds`] replays that folder in every `make test`: a crash
//! found becomes a regression test. `make test` fuzzes each target for a few seconds
//! (BACKROOM_CHAOS_FUZZ_SECS, default 3); `make chaos` for 60 s each.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backroom_api::{netd, node, nodeagent, operator, vmd};
use backroom_integration::chaos::{Rng, env_count, table_row};
use backroom_profiles::{Loader, MemSource, render_with};
use prost::Message;

/// An input slower than this is a finding.
const SLOW: Duration = Duration::from_secs(2);
const CORPUS_MAX: usize = 4000;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn regressions(target: &str) -> PathBuf {
    repo().join("integration/fuzz/regressions").join(target)
}

/// The sample fleet's files, as `fleet/<sub>/<name>` (read once).
fn fleet() -> &'static [(String, String)] {
    static FLEET: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
    FLEET.get_or_init(read_fleet)
}

fn read_fleet() -> Vec<(String, String)> {
    let root = repo().join("profiles/fleet");
    let mut out = Vec::new();
    for sub in ["base", "regions", "stores"] {
        let mut names: Vec<_> =
            std::fs::read_dir(root.join(sub)).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for p in names {
            let rel = format!("fleet/{sub}/{}", p.file_name().unwrap().to_string_lossy());
            out.push((rel, std::fs::read_to_string(&p).unwrap()));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Targets: each takes an input and says what it did (its "behaviour"), or what went wrong.

/// The parser target. The input's first byte picks the fleet file it replaces (the others stay
/// as they are, so layering runs over it) and the store that is rendered.
fn profile_target(input: &[u8]) -> Result<BTreeSet<String>, String> {
    let files = fleet();
    let (pick, body) = input.split_first().map(|(a, b)| (*a as usize, b)).unwrap_or((0, &[][..]));
    let k = pick % files.len();
    let text = String::from_utf8_lossy(body).into_owned();
    let mut src = MemSource::new();
    for (i, (path, t)) in files.iter().enumerate() {
        src.insert(path, if i == k { text.clone() } else { t.clone() });
    }
    let mut loader = Loader::new(src);
    let mut seen = BTreeSet::new();
    let stores: Vec<&String> =
        files.iter().map(|(p, _)| p).filter(|p| p.starts_with("fleet/stores/")).collect();
    let store = stores[(pick / files.len()) % stores.len()];
    // The mutated store itself when a store was picked, else one that layers over the file.
    let path = if files[k].0.starts_with("fleet/stores/") { &files[k].0 } else { store };
    {
        match render_with(&mut loader, Path::new(path)) {
            Ok(r) => {
                for d in &r.warnings {
                    check_diag(d)?;
                    seen.insert(kind_of(&d.message));
                }
                let again = backroom_profiles::render_str("fleet/again.yaml", &r.to_yaml())
                    .map_err(|e| {
                        format!("the canonical form of {path} does not read back: {e:?}")
                    })?;
                if again.revision != r.revision {
                    return Err(format!(
                        "{path}: the canonical form reads back to another revision"
                    ));
                }
                seen.insert("rendered".into());
            }
            Err(e) => {
                if e.errors().count() == 0 {
                    return Err(format!("{path} was refused with no error"));
                }
                for d in &e.diagnostics {
                    check_diag(d)?;
                    seen.insert(kind_of(&d.message));
                }
            }
        }
    }
    // The canonical form central sends in `Desired` is parsed by the node on its own.
    let _ = backroom_profiles::render_str("desired.yaml", &text);
    Ok(seen)
}

fn check_diag(d: &backroom_profiles::Diagnostic) -> Result<(), String> {
    if d.pos.line < 1 || d.pos.column < 1 || d.pos.file.is_empty() || d.message.trim().is_empty() {
        return Err(format!("a finding without a position or a sentence: {d}"));
    }
    Ok(())
}

/// A finding's kind: its sentence with the specifics (numbers, quoted names) taken out.
fn kind_of(message: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in message.chars().take(60) {
        match c {
            '`' | '"' | '\'' => {
                quoted = !quoted;
                out.push('_');
            }
            _ if quoted => {}
            '0'..='9' => {
                if !out.ends_with('#') {
                    out.push('#');
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Decodes `bytes` as `M`; when it decodes, its encoding must decode and encode to itself.
fn round_trip<M: Message + Default>(
    name: &str,
    bytes: &[u8],
    seen: &mut BTreeSet<String>,
) -> Result<(), String> {
    let Ok(m) = M::decode(bytes) else { return Ok(()) };
    let once = m.encode_to_vec();
    let again = M::decode(once.as_slice())
        .map_err(|e| format!("{name}: its own encoding does not decode: {e}"))?;
    if again.encode_to_vec() != once {
        return Err(format!("{name}: decode → encode is not stable"));
    }
    seen.insert(name.to_string());
    Ok(())
}

/// The protobuf target: every decoder a peer's bytes reach.
fn proto_target(input: &[u8]) -> Result<BTreeSet<String>, String> {
    let mut s = BTreeSet::new();
    macro_rules! each {
        ($($t:ty),* $(,)?) => { $( round_trip::<$t>(stringify!($t), input, &mut s)?; )* };
    }
    each!(
        node::EnrollRequest,
        node::RenewRequest,
        node::NodeMessage,
        node::CentralMessage,
        operator::CreateEnrollTokenRequest,
        operator::FleetPushRequest,
        operator::FleetStatusRequest,
        operator::ListStoresRequest,
        operator::GetStoreRequest,
        operator::GetStoreReply,
        operator::SendCommandRequest,
        operator::GetCommandRequest,
        operator::ListAlertsRequest,
        operator::ListAuditRequest,
        operator::CreateApiTokenRequest,
        operator::RevokeStoreRequest,
        operator::RevokeEnrollTokenRequest,
        operator::RevokeApiTokenRequest,
        nodeagent::StatusReply,
        nodeagent::ApplyRequest,
        netd::ApplyRequest,
        vmd::ApplyRequest,
    );
    Ok(s)
}

/// Encoded messages of the kinds a node and an operator really send, to mutate from.
fn proto_seeds() -> Vec<Vec<u8>> {
    use node::{central_message, node_message};
    let fleet = fleet();
    let ev = |seq| node::Event {
        seq,
        at_unix_ms: 1_790_000_000_000,
        kind: "failing".into(),
        workload: "orders".into(),
        message: "orders.1 is unhealthy: http 503".into(),
        subject: "workload orders".into(),
    };
    let msgs: Vec<Vec<u8>> = vec![
        node::NodeMessage {
            body: Some(node_message::Body::Hello(node::Hello {
                store_id: "store-0042".into(),
                agent_version: "nodeagent 0.1.0".into(),
                applied_revision: "8d3801f91892".into(),
                desired_revision: "8d3801f91892".into(),
                next_event_seq: 17,
            })),
        }
        .encode_to_vec(),
        node::NodeMessage {
            body: Some(node_message::Body::Status(node::Status {
                applied_revision: "8d3801f91892".into(),
                workloads: vec![node::WorkloadStatus {
                    name: "menu".into(),
                    kind: "container".into(),
                    state: "running".into(),
                    healthy: true,
                    restarts: 2,
                    addresses: vec!["10.1.10.254/24".into()],
                    ..Default::default()
                }],
                at_unix_ms: 1_790_000_000_000,
                ..Default::default()
            })),
        }
        .encode_to_vec(),
        node::NodeMessage {
            body: Some(node_message::Body::Events(node::EventBatch { events: vec![ev(1), ev(2)] })),
        }
        .encode_to_vec(),
        node::CentralMessage {
            body: Some(central_message::Body::Desired(node::Desired {
                revision: "8d3801f91892".into(),
                profile_yaml: fleet[0].1.clone(),
            })),
        }
        .encode_to_vec(),
        operator::FleetPushRequest {
            stores: fleet
                .iter()
                .map(|(p, t)| operator::StoreProfile {
                    store_id: p.clone(),
                    revision: "r".into(),
                    profile_yaml: t.clone(),
                    source: p.clone(),
                })
                .collect(),
        }
        .encode_to_vec(),
        operator::GetStoreRequest { store_id: "store-0042".into(), events: 100 }.encode_to_vec(),
    ];
    msgs
}

fn profile_seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for (i, (_, t)) in fleet().iter().enumerate() {
        let mut v = vec![i as u8];
        v.extend_from_slice(t.as_bytes());
        out.push(v);
    }
    let bad = repo().join("profiles/fleet-bad");
    let mut names: Vec<_> = std::fs::read_dir(&bad).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for (i, p) in names.iter().enumerate() {
        let mut v = vec![(i % 7) as u8];
        v.extend_from_slice(&std::fs::read(p).unwrap());
        out.push(v);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The fuzzer.

const TOKENS: &[&[u8]] = &[
    b":",
    b"- ",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"'",
    b"${",
    b"${x}",
    b"&a ",
    b"*a",
    b"!!str ",
    b"#",
    b"\t",
    b"\n",
    b"  ",
    b"remove: true",
    b"kind: vm",
    b"vlan: 4095",
    b"cpus: 0.25",
    b"9999999999999999999",
    b"-1",
    b"1e309",
    b"null",
    b"~",
    b"extends: [",
    b"<<: *a",
    b"? ",
    b"|\n",
    b">-\n",
    b"\xff",
    b"\xe2\x82",
    b"\x00",
    // protobuf: a varint that never ends, a length past the end, a deep group, a huge tag
    b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80",
    b"\x0a\xff\xff\xff\xff\x0f",
    b"\x0b\x0b\x0b\x0b",
    b"\xf8\xff\xff\xff\x0f",
    b"\x12\x00",
    b"\x1a\x02\x08\x01",
];

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = corpus[rng.below(corpus.len() as u64) as usize].clone();
    for _ in 0..=rng.below(4) {
        let n = v.len() as u64;
        match rng.below(8) {
            0 if n > 0 => {
                let i = rng.below(n) as usize;
                v[i] ^= 1 << rng.below(8);
            }
            1 if n > 0 => {
                let i = rng.below(n) as usize;
                v[i] = rng.next_u64() as u8;
            }
            2 => {
                let t = TOKENS[rng.below(TOKENS.len() as u64) as usize];
                let i = rng.below(n + 1) as usize;
                v.splice(i..i, t.iter().copied());
            }
            3 if n > 0 => v.truncate(rng.below(n) as usize),
            4 if n > 1 => {
                let a = rng.below(n) as usize;
                let b = (a + 1 + rng.below(64) as usize).min(v.len());
                v.drain(a..b);
            }
            5 if n > 0 => {
                // repeat a span (deep nesting, long runs)
                let a = rng.below(n) as usize;
                let b = (a + 1 + rng.below(16) as usize).min(v.len());
                let span = v[a..b].to_vec();
                for _ in 0..rng.below(64) {
                    v.splice(a..a, span.iter().copied());
                }
            }
            6 => {
                // splice with another input
                let o = &corpus[rng.below(corpus.len() as u64) as usize];
                let cut = rng.below(n + 1) as usize;
                let from = rng.below(o.len() as u64 + 1) as usize;
                v.truncate(cut);
                v.extend_from_slice(&o[from..]);
            }
            _ if n > 0 => {
                // a line indented or a byte repeated
                let i = rng.below(n) as usize;
                v.insert(i, b' ');
            }
            _ => v.push(rng.next_u64() as u8),
        }
    }
    v.truncate(1 << 20);
    v
}

thread_local! {
    static FUZZING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Panics on a fuzzing thread are findings, reported once with their file: the panic hook stays
/// quiet for them and prints as usual for everything else.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !FUZZING.get() {
                default(info);
            }
        }));
    });
}

type Target = fn(&[u8]) -> Result<BTreeSet<String>, String>;

/// One input through a target: its behaviour, or the failure (a panic, a broken property, too
/// slow) in words.
fn run_one(target: Target, input: &[u8]) -> Result<BTreeSet<String>, String> {
    let t = Instant::now();
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| target(input)));
    let took = t.elapsed();
    match r {
        Err(p) => {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panicked: {what}"))
        }
        Ok(Err(e)) => Err(e),
        Ok(Ok(_)) if took > SLOW => Err(format!("took {took:?}")),
        Ok(Ok(b)) => Ok(b),
    }
}

fn save(target: &str, input: &[u8], why: &str) -> PathBuf {
    use sha2::Digest;
    let dir = regressions(target);
    std::fs::create_dir_all(&dir).unwrap();
    let name = hex::encode(&sha2::Sha256::digest(input)[..8]);
    let p = dir.join(name);
    std::fs::write(&p, input).unwrap();
    std::fs::write(p.with_extension("why"), why).unwrap();
    p
}

/// Fuzzes `target` for `secs` seconds; returns (inputs run, corpus size, findings).
fn fuzz(
    name: &str,
    target: Target,
    seeds: Vec<Vec<u8>>,
    secs: u64,
    rng: &mut Rng,
) -> (u64, usize, Vec<String>) {
    let mut corpus = seeds;
    let mut behaviours: BTreeSet<BTreeSet<String>> = BTreeSet::new();
    for s in &corpus {
        if let Ok(b) = run_one(target, s) {
            behaviours.insert(b);
        }
    }
    let mut findings = Vec::new();
    let (start, mut runs) = (Instant::now(), 0u64);
    quiet_panics();
    FUZZING.set(true);
    while start.elapsed() < Duration::from_secs(secs) && findings.len() < 10 {
        let input = mutate(rng, &corpus);
        runs += 1;
        match run_one(target, &input) {
            Ok(b) => {
                if !behaviours.contains(&b) && corpus.len() < CORPUS_MAX {
                    behaviours.insert(b);
                    corpus.push(input);
                }
            }
            Err(why) => {
                let p = save(name, &input, &why);
                findings.push(format!("{}: {why}", p.display()));
            }
        }
    }
    FUZZING.set(false);
    (runs, corpus.len(), findings)
}

fn fuzz_case(name: &str, target: Target, seeds: Vec<Vec<u8>>) {
    let secs = env_count("BACKROOM_CHAOS_FUZZ_SECS", 3);
    let mut rng = Rng::from_env(name);
    let (runs, corpus, findings) = fuzz(name, target, seeds, secs, &mut rng);
    let rate = runs as f64 / secs.max(1) as f64;
    eprintln!(
        "fuzz {name}: {runs} inputs in {secs} s ({rate:.0}/s), corpus {corpus}, {} findings",
        findings.len()
    );
    table_row(
        &format!("fuzzing: {name}"),
        &format!("{secs} s, {runs} inputs ({rate:.0}/s), corpus grew to {corpus}"),
        &if findings.is_empty() {
            "no panic, no slow input, every property held".to_string()
        } else {
            format!("{} findings, saved as regressions", findings.len())
        },
    );
    assert!(
        findings.is_empty(),
        "fuzz {name} found (each saved as a regression):\n{}",
        findings.join("\n")
    );
}

#[test]
fn fuzz_the_profile_parser() {
    fuzz_case("profile", profile_target, profile_seeds());
}

#[test]
fn fuzz_the_protobuf_decoders() {
    fuzz_case("protobuf", proto_target, proto_seeds());
}

/// Every input a fuzzing run ever saved still holds every property (a crash found is a
/// regression test from then on).
#[test]
fn every_saved_regression_still_holds() {
    let mut failed = Vec::new();
    let mut n = 0;
    for (name, target) in
        [("profile", profile_target as Target), ("protobuf", proto_target as Target)]
    {
        let Ok(dir) = std::fs::read_dir(regressions(name)) else { continue };
        for e in dir {
            let p = e.unwrap().path();
            if p.extension().is_some() {
                continue;
            }
            n += 1;
            if let Err(why) = run_one(target, &std::fs::read(&p).unwrap()) {
                failed.push(format!("{}: {why}", p.display()));
            }
        }
    }
    eprintln!("{n} saved fuzz regressions replayed");
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// The fuzzer finds what it is built to find: a target that panics on one byte sequence the
/// seed does not hold is caught, and the input saved.
#[test]
fn the_fuzzer_finds_a_planted_panic() {
    fn planted(input: &[u8]) -> Result<BTreeSet<String>, String> {
        if input.windows(2).any(|w| w == b"${") {
            panic!("planted");
        }
        Ok(BTreeSet::from([input.len().min(3).to_string()]))
    }
    let mut rng = Rng::from_env("planted");
    let (_, _, found) =
        fuzz("planted-selftest", planted, vec![b"menu: { a: 1 }".to_vec()], 5, &mut rng);
    let _ = std::fs::remove_dir_all(regressions("planted-selftest"));
    assert!(!found.is_empty(), "the fuzzer did not find a panic on `${{` in 5 s");
    assert!(found[0].contains("panicked: planted"), "{found:?}");
}
