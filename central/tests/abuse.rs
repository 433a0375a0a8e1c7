//! The abuse suite: every RPC of the node and operator APIs fed oversized, malformed and
//! hostile messages (a generated corpus, raw bytes that are not protobuf, and proptest's
//! arbitrary requests) must get a clear answer (a result, or an error with a code and a
//! sentence), while `store list`, measured all along through the operator API, stays fast.
//!
//! `cargo test -p backroom-central --test abuse` runs it once (the fast part); `make chaos`
//! runs the ignored `abuse_long` for BACKROOM_ABUSE_SECONDS (default 300) and prints the same
//! figures.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use backroom_api::node::node_service_client::NodeServiceClient;
use backroom_api::node::{
    ApplyResult, CommandResult, EnrollRequest, EventBatch, Heartbeat, Hello, RenewRequest, Status,
    WorkloadStatus,
};
use backroom_api::operator::{
    CreateApiTokenRequest, CreateEnrollTokenRequest, FleetPushRequest, FleetStatusRequest,
    GetCommandRequest, GetStoreRequest, ListAlertsRequest, ListAuditRequest, ListStoresRequest,
    SendCommandRequest, StoreProfile,
};
use backroom_central::client::Client;
use backroom_central::server::Running;
use backroom_session::enroll::Identity;
use bytes::{Buf, BufMut, Bytes};
use common::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;

/// How long any one hostile call may take to be answered.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

struct Harness {
    c: Running,
    _data: tempfile::TempDir,
    admin: Client,
    viewer: Client,
    token: String,
    node: Identity,
    _node_dir: tempfile::TempDir,
    cases: AtomicUsize,
}

async fn harness() -> Harness {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let viewer = with_role(&c, &mut admin, "viewer").await;
    let node_dir = tempfile::tempdir().unwrap();
    let node = enroll(&c, &mut admin, "store-0042", node_dir.path()).await;
    let token = std::fs::read_to_string(data.path().join("admin.token")).unwrap();
    Harness {
        c,
        _data: data,
        admin,
        viewer,
        token: token.trim().to_string(),
        node,
        _node_dir: node_dir,
        cases: AtomicUsize::new(0),
    }
}

/// `store list` every 10 ms until stopped; its latencies.
struct Probe {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<Duration>, usize)>,
}

fn probe(mut client: Client) -> Probe {
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let task = tokio::spawn(async move {
        let mut lat = Vec::new();
        let mut failed = 0;
        while !s.load(Ordering::SeqCst) {
            let t = Instant::now();
            match tokio::time::timeout(
                Duration::from_secs(10),
                client.list_stores(ListStoresRequest::default()),
            )
            .await
            {
                Ok(Ok(_)) => lat.push(t.elapsed()),
                other => {
                    eprintln!("abuse: store list failed: {other:?}");
                    failed += 1;
                    lat.push(t.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (lat, failed)
    });
    Probe { stop, task }
}

impl Probe {
    /// Stops it; prints and returns the p99.
    async fn finish(self, cases: usize, took: Duration) -> Duration {
        self.stop.store(true, Ordering::SeqCst);
        let (mut lat, failed) = self.task.await.unwrap();
        lat.sort();
        let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
        let (p50, p99, max) = (pct(0.5), pct(0.99), *lat.last().unwrap());
        println!(
            "abuse: {cases} hostile calls in {:.1}s; meanwhile `store list` {} times: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {failed} failed",
            took.as_secs_f64(),
            lat.len(),
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
        );
        assert_eq!(failed, 0, "store list failed while the abuse ran");
        // `make chaos` collects one figures table from every part of the suite.
        if let Ok(path) = std::env::var("BACKROOM_CHAOS_TABLE") {
            use std::io::Write;
            let row = format!(
                "| hostile RPCs, both APIs (corpus, raw bytes, proptest) | {cases} calls in {:.0} s | clear answers only; concurrent `store list` p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, 0 failed |",
                took.as_secs_f64(),
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                max.as_secs_f64() * 1e3,
            );
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
            writeln!(f, "{row}").unwrap();
        }
        p99
    }
}

/// A clear answer: a result, or an error with a code other than Unknown and a sentence.
fn judge<T>(
    h: &Harness,
    what: &str,
    r: Result<Result<T, tonic::Status>, tokio::time::error::Elapsed>,
) {
    h.cases.fetch_add(1, Ordering::Relaxed);
    match r {
        Err(_) => panic!("{what}: central did not answer within {ANSWER_WITHIN:?}"),
        Ok(Ok(_)) => {}
        // A method central does not have: tonic's router answers with the code alone, which
        // says it all.
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {}
        Ok(Err(s)) => {
            assert_ne!(s.code(), tonic::Code::Unknown, "{what}: {s:?}");
            assert!(!s.message().trim().is_empty(), "{what}: an error without a sentence: {s:?}");
        }
    }
}

macro_rules! call {
    ($h:expr, $what:expr, $fut:expr) => {
        judge($h, $what, tokio::time::timeout(ANSWER_WITHIN, $fut).await)
    };
}

fn big(n: usize) -> String {
    "€".repeat(n / 3)
}

/// Strings a hostile client likes.
fn nasty() -> Vec<String> {
    vec![
        String::new(),
        " ".into(),
        "../../etc/passwd".into(),
        "store-0042\0".into(),
        "'; DROP TABLE stores; --".into(),
        "STORE-0042".into(),
        "😀".repeat(100),
        "\u{202e}gnp.exe".into(),
        big(1 << 20),
    ]
}

async fn operator_corpus(h: &Harness) {
    let mut a = h.admin.clone();
    let mut v = h.viewer.clone();
    for s in nasty() {
        call!(
            h,
            "enroll token",
            a.create_enroll_token(CreateEnrollTokenRequest {
                store_id: s.clone(),
                region: s.clone(),
                ttl_seconds: u64::MAX,
                replace: false,
            })
        );
        call!(
            h,
            "enroll token (viewer)",
            v.create_enroll_token(CreateEnrollTokenRequest {
                store_id: s.clone(),
                ..Default::default()
            })
        );
        call!(
            h,
            "get store",
            a.get_store(GetStoreRequest { store_id: s.clone(), events: u32::MAX })
        );
        call!(
            h,
            "send command",
            a.send_command(SendCommandRequest {
                store_id: s.clone(),
                kind: s.clone(),
                workload: s.clone(),
                ttl_seconds: u64::MAX,
            })
        );
        call!(
            h,
            "restart with a hostile workload",
            a.send_command(SendCommandRequest {
                store_id: "store-0042".into(),
                kind: "restart".into(),
                workload: s.clone(),
                ttl_seconds: 1,
            })
        );
        call!(h, "get command", a.get_command(GetCommandRequest { id: s.clone() }));
        call!(
            h,
            "api token",
            a.create_api_token(CreateApiTokenRequest { name: s.clone(), role: s.clone() })
        );
        call!(
            h,
            "list stores",
            a.list_stores(ListStoresRequest { page_size: u32::MAX, page_token: s.clone() })
        );
        call!(
            h,
            "fleet status",
            v.fleet_status(FleetStatusRequest { page_size: u32::MAX, page_token: s.clone() })
        );
        call!(
            h,
            "list alerts",
            a.list_alerts(ListAlertsRequest {
                include_resolved: true,
                page_size: u32::MAX,
                page_token: s.clone()
            })
        );
        call!(
            h,
            "list audit",
            a.list_audit(ListAuditRequest {
                store_id: s.clone(),
                actor: s.clone(),
                since_unix_ms: i64::MIN,
                page_size: u32::MAX,
                page_token: s.clone(),
            })
        );
        call!(h, "list audit (viewer)", v.list_audit(ListAuditRequest::default()));
    }
    // Fleet pushes: garbage, a bomb, deep nesting, too big, lying about the revision, many.
    let store = |yaml: String, rev: &str| StoreProfile {
        store_id: "store-0042".into(),
        revision: rev.into(),
        profile_yaml: yaml,
        source: "abuse.yaml".into(),
    };
    let mut laughs = String::from("a: &a [x,x,x,x,x,x,x,x,x]\n");
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i", "j"])
    {
        laughs.push_str(&format!("{name}: &{name} [{}]\n", vec![format!("*{prev}"); 9].join(",")));
    }
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    for yaml in
        ["".into(), "{{{{".into(), laughs, deep, big(3 << 20), "apiVersion: backroom/v1\n".into()]
    {
        call!(h, "fleet push", a.fleet_push(FleetPushRequest { stores: vec![store(yaml, "0")] }));
    }
    call!(h, "fleet push of nothing", a.fleet_push(FleetPushRequest { stores: vec![] }));
    let many: Vec<StoreProfile> = (0..3000)
        .map(|i| StoreProfile { store_id: format!("s{i}"), ..store("x: 1\n".into(), "r") })
        .collect();
    call!(h, "fleet push of 3000 garbage stores", a.fleet_push(FleetPushRequest { stores: many }));
    call!(h, "fleet push (viewer)", v.fleet_push(FleetPushRequest::default()));
    // Tokens: none, garbage, huge.
    for t in ["", "Bearer", "bko1.nope", &"x".repeat(8000)] {
        let url = format!("https://{}", h.c.api);
        match backroom_central::client::connect(&url, &h.c.ca_pem, t).await {
            Ok(mut c) => call!(h, "a bad API token", c.list_stores(ListStoresRequest::default())),
            // Refused before it is sent (not a header value): also a clear answer.
            Err(_) => {
                h.cases.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn mtls(h: &Harness, id: &Identity) -> NodeServiceClient<tonic::transport::Channel> {
    let ch =
        backroom_session::tls::channel(&node_url(&h.c), id.tls().unwrap(), false).await.unwrap();
    NodeServiceClient::new(ch).max_encoding_message_size(64 << 20)
}

async fn node_corpus(h: &Harness) {
    // Enroll and renew without a certificate, with nonsense.
    let ch = backroom_session::tls::channel(
        &node_url(&h.c),
        backroom_session::tls::enroll_config(&h.c.ca_fingerprint).unwrap(),
        false,
    )
    .await
    .unwrap();
    let mut anon = NodeServiceClient::new(ch).max_encoding_message_size(64 << 20);
    let other_ca =
        backroom_session::token::EnrollToken::generate("store-0042", &"0".repeat(64)).to_string();
    for token in nasty().into_iter().chain([other_ca, "bkt1.store-0042.AAAA.BBBB".into()]) {
        call!(
            h,
            "enroll",
            anon.enroll(EnrollRequest {
                token: token.clone(),
                csr_pem: token.clone(),
                agent_version: token.clone(),
                hostname: token,
            })
        );
    }
    call!(h, "renew without a certificate", anon.renew(RenewRequest { csr_pem: "x".into() }));
    let mut node = mtls(h, &h.node).await;
    for csr in nasty() {
        call!(h, "renew with a bad CSR", node.renew(RenewRequest { csr_pem: csr }));
    }
    // Sessions that do not start with hello, or speak for another store.
    for first in [
        NBody::Status(Status::default()),
        NBody::Heartbeat(Heartbeat::default()),
        NBody::Hello(Hello { store_id: "store-0117".into(), ..Default::default() }),
        NBody::Hello(Hello { store_id: big(1 << 20), ..Default::default() }),
    ] {
        let opened = match first {
            NBody::Hello(hello) => RawSession::try_open(&h.c, &h.node, hello).await.map(|_| ()),
            other => {
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                tx.send(backroom_api::node::NodeMessage { body: Some(other) }).await.unwrap();
                node.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.map(|_| ())
            }
        };
        judge(h, "a session without a proper hello", Ok(opened));
    }
    // A session, then everything a node should never send.
    let mut s = RawSession::open(&h.c, &h.node).await;
    let w = |i: usize| WorkloadStatus {
        name: format!("w{i}-{}", "n".repeat(150)),
        kind: "container".into(),
        state: big(300),
        reason: big(300),
        addresses: vec!["10.0.0.1/24".into(); 4],
        ..Default::default()
    };
    s.send(NBody::Status(Status {
        applied_revision: big(10_000),
        desired_revision: big(10_000),
        agent_version: big(10_000),
        last_apply: Some(ApplyResult { message: big(100_000), ..Default::default() }),
        workloads: (0..10_000).map(w).collect(),
        ..Default::default()
    }))
    .await;
    s.send(NBody::CommandResult(CommandResult { id: big(5000), ok: true, message: big(1 << 20) }))
        .await;
    let odd = vec![
        event(0, "", "", ""),
        event(7, &big(5000), &big(5000), &big(100_000)),
        event(7, "dup", "dup", "dup"),
        event(3, "crash_loop", &big(2000), "out of order"),
    ];
    s.send(NBody::Events(EventBatch { events: odd })).await;
    h.cases.fetch_add(4, Ordering::Relaxed);
    assert!(s.next_ack().await.is_some(), "odd events got no ack");
    // A message over the node port's decode limit ends the session, clearly.
    s.send(NBody::Events(EventBatch { events: vec![event(8, "k", "w", &"x".repeat(17 << 20))] }))
        .await;
    h.cases.fetch_add(1, Ordering::Relaxed);
    assert!(s.closed_within(ANSWER_WITHIN).await, "a 17 MiB message did not end the session");
    // And the store can still open a session after all that.
    let mut s = RawSession::open(&h.c, &h.node).await;
    s.send(NBody::Events(EventBatch { events: vec![event(9, "k", "w", "m")] })).await;
    assert!(s.next_ack().await.is_some());
}

/// Bytes as they are: to send what is not protobuf.
#[derive(Clone, Default)]
struct RawCodec;
struct RawEnc;
struct RawDec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEnc;
    type Decoder = RawDec;
    fn encoder(&mut self) -> RawEnc {
        RawEnc
    }
    fn decoder(&mut self) -> RawDec {
        RawDec
    }
}

impl Encoder for RawEnc {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

fn garbage() -> Vec<Bytes> {
    let mut rng_bytes = vec![0u8; 4096];
    for (i, b) in rng_bytes.iter_mut().enumerate() {
        *b = (i * 7919 % 251) as u8;
    }
    vec![
        Bytes::new(),
        Bytes::from_static(&[0xff; 64]),
        Bytes::from(rng_bytes),
        // Field 1, length-delimited, claiming 2 GiB.
        Bytes::from_static(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x07]),
        // 10,000 nested groups: past prost's recursion limit.
        Bytes::from(vec![0x0b; 10_000]),
        // A varint that never ends.
        Bytes::from(
            vec![0x08].into_iter().chain(std::iter::repeat_n(0x80, 64)).collect::<Vec<u8>>(),
        ),
    ]
}

async fn raw_corpus(h: &Harness) {
    let operator = [
        "CreateEnrollToken",
        "FleetPush",
        "FleetStatus",
        "ListStores",
        "GetStore",
        "SendCommand",
        "GetCommand",
        "ListAlerts",
        "ListAudit",
        "CreateApiToken",
    ];
    let api = backroom_session::tls::channel(
        &format!("https://{}", h.c.api),
        backroom_session::tls::server_auth_config(&h.c.ca_pem).unwrap(),
        false,
    )
    .await
    .unwrap();
    let node = backroom_session::tls::channel(&node_url(&h.c), h.node.tls().unwrap(), false)
        .await
        .unwrap();
    let paths = operator
        .iter()
        .map(|m| (api.clone(), format!("/backroom.operator.v1.Operator/{m}")))
        .chain(
            ["Enroll", "Renew", "Nope"]
                .iter()
                .map(|m| (node.clone(), format!("/backroom.node.v1.NodeService/{m}"))),
        )
        .chain([(api.clone(), "/not.a.Service/At".to_string())]);
    for (ch, path) in paths {
        for body in garbage() {
            let mut g = tonic::client::Grpc::new(ch.clone());
            g.ready().await.unwrap();
            let mut req = tonic::Request::new(body);
            req.metadata_mut()
                .insert("authorization", format!("Bearer {}", h.token).parse().unwrap());
            let p = PathAndQuery::try_from(path.as_str()).unwrap();
            call!(h, &format!("raw bytes to {path}"), g.unary::<_, Bytes, _>(req, p, RawCodec));
        }
    }
}

async fn everything_once(h: &Harness) {
    operator_corpus(h).await;
    node_corpus(h).await;
    raw_corpus(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_gets_a_clear_answer_and_store_list_stays_fast_meanwhile() {
    let h = harness().await;
    let p = probe(h.admin.clone());
    let t = Instant::now();
    everything_once(&h).await;
    let p99 = p.finish(h.cases.load(Ordering::Relaxed), t.elapsed()).await;
    assert!(p99 < Duration::from_secs(1), "store list p99 {p99:?} while the abuse ran");
    h.c.stop().await;
}

/// `make chaos`: the corpus and random requests over and over for BACKROOM_ABUSE_SECONDS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: make chaos runs it"]
async fn abuse_long() {
    let secs: u64 =
        std::env::var("BACKROOM_ABUSE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let h = harness().await;
    let p = probe(h.admin.clone());
    let t = Instant::now();
    let mut rounds = 0;
    while t.elapsed() < Duration::from_secs(secs) {
        everything_once(&h).await;
        let mut runner = proptest::test_runner::TestRunner::new(cases(16));
        for _ in 0..16 {
            let req = operator_request().new_tree(&mut runner).unwrap().current();
            send_operator(&h, req).await;
        }
        rounds += 1;
    }
    println!("abuse --long: {rounds} rounds");
    let p99 = p.finish(h.cases.load(Ordering::Relaxed), t.elapsed()).await;
    assert!(p99 < Duration::from_secs(1), "store list p99 {p99:?} while the abuse ran");
    h.c.stop().await;
}

// ---- property tests: arbitrary requests ------------------------------------------------------

#[derive(Debug, Clone)]
enum OpReq {
    Enroll(String, String, u64, bool),
    Command(String, String, String, u64),
    GetStore(String, u32),
    Alerts(bool, u32, String),
    Audit(String, String, i64, u32, String),
    Token(String, String),
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => ".{0,40}",
        1 => "[a-z0-9-]{1,70}",
        1 => (0usize..200_000).prop_map(|n| "x".repeat(n)),
    ]
}

fn operator_request() -> impl Strategy<Value = OpReq> {
    prop_oneof![
        (text(), text(), any::<u64>(), any::<bool>())
            .prop_map(|(a, b, c, d)| OpReq::Enroll(a, b, c, d)),
        (text(), text(), text(), any::<u64>()).prop_map(|(a, b, c, d)| OpReq::Command(a, b, c, d)),
        (text(), any::<u32>()).prop_map(|(a, b)| OpReq::GetStore(a, b)),
        (any::<bool>(), any::<u32>(), text()).prop_map(|(a, b, c)| OpReq::Alerts(a, b, c)),
        (text(), text(), any::<i64>(), any::<u32>(), text())
            .prop_map(|(a, b, c, d, e)| OpReq::Audit(a, b, c, d, e)),
        (text(), text()).prop_map(|(a, b)| OpReq::Token(a, b)),
    ]
}

async fn send_operator(h: &Harness, r: OpReq) {
    let mut a = h.admin.clone();
    match r {
        OpReq::Enroll(store_id, region, ttl_seconds, replace) => call!(
            h,
            "enroll token",
            a.create_enroll_token(CreateEnrollTokenRequest {
                store_id,
                region,
                ttl_seconds,
                replace
            })
        ),
        OpReq::Command(store_id, kind, workload, ttl_seconds) => call!(
            h,
            "command",
            a.send_command(SendCommandRequest { store_id, kind, workload, ttl_seconds })
        ),
        OpReq::GetStore(store_id, events) => {
            call!(h, "get store", a.get_store(GetStoreRequest { store_id, events }))
        }
        OpReq::Alerts(include_resolved, page_size, page_token) => call!(
            h,
            "alerts",
            a.list_alerts(ListAlertsRequest { include_resolved, page_size, page_token })
        ),
        OpReq::Audit(store_id, actor, since_unix_ms, page_size, page_token) => call!(
            h,
            "audit",
            a.list_audit(ListAuditRequest {
                store_id,
                actor,
                since_unix_ms,
                page_size,
                page_token
            })
        ),
        OpReq::Token(name, role) => {
            call!(h, "api token", a.create_api_token(CreateApiTokenRequest { name, role }))
        }
    }
}

fn event_strategy() -> impl Strategy<Value = backroom_api::node::Event> {
    (any::<u64>(), any::<i64>(), text(), text(), text(), text()).prop_map(
        |(seq, at, kind, workload, message, subject)| backroom_api::node::Event {
            seq,
            at_unix_ms: at,
            kind,
            workload,
            message,
            subject,
        },
    )
}

fn cases(n: u32) -> ProptestConfig {
    // Failures are printed with their input; nothing is written beside the sources.
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

/// One runtime and one central for all the cases of a property.
fn with_harness(f: impl FnOnce(&tokio::runtime::Runtime, &Harness)) {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let h = rt.block_on(harness());
    f(&rt, &h);
    rt.block_on(h.c.stop());
}

#[test]
fn arbitrary_operator_requests_get_a_clear_answer() {
    with_harness(|rt, h| {
        let mut runner = proptest::test_runner::TestRunner::new(cases(48));
        runner
            .run(&operator_request(), |req| {
                rt.block_on(send_operator(h, req));
                Ok(())
            })
            .unwrap();
        // Central still answers.
        let mut a = h.admin.clone();
        rt.block_on(a.list_stores(ListStoresRequest::default())).unwrap();
    });
}

#[test]
fn arbitrary_event_batches_are_acknowledged_or_end_the_session_and_never_break_central() {
    with_harness(|rt, h| {
        let mut runner = proptest::test_runner::TestRunner::new(cases(32));
        runner
            .run(&proptest::collection::vec(event_strategy(), 0..50), |events| {
                rt.block_on(async {
                    let mut s = RawSession::open(&h.c, &h.node).await;
                    let empty = events.is_empty();
                    s.send(NBody::Events(EventBatch { events })).await;
                    s.send(NBody::Heartbeat(Heartbeat::default())).await;
                    if !empty {
                        // An ack, or the session closed: never silence.
                        let _ = s.next_ack().await;
                    }
                    let mut a = h.admin.clone();
                    let r = tokio::time::timeout(
                        ANSWER_WITHIN,
                        a.get_store(GetStoreRequest { store_id: "store-0042".into(), events: 5 }),
                    )
                    .await;
                    prop_assert!(matches!(r, Ok(Ok(_))), "get store after a batch: {r:?}");
                    let stored = r.unwrap().unwrap().into_inner().events;
                    prop_assert!(
                        stored.iter().all(|e| e.message.len() <= 4096 && e.kind.len() <= 256)
                    );
                    Ok(())
                })
            })
            .unwrap();
    });
}
