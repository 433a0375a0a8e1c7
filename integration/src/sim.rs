//! Simulated store nodes: each holds a real mTLS session to central through the same link code
//! nodeagent uses (enrollment, hello, heartbeats, status, events from an outbox, commands),
//! without running any workload. Thousands fit in one process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backroom_api::node::{CommandResult, Status, WorkloadStatus};
use backroom_api::operator::CreateEnrollTokenRequest;
use backroom_central::client::Client;
use backroom_session::enroll::{self, Identity};
use backroom_session::link::{Inbound, Link, LinkConfig};
use backroom_session::outbox::{Limits, Outbox};
use backroom_session::token::EnrollToken;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

/// When each command reached its node.
pub type Receipts = Arc<Mutex<HashMap<String, Instant>>>;

pub struct SimNode {
    pub store: String,
    pub outbox: Arc<Outbox>,
    pub online: watch::Receiver<bool>,
    pub desired: watch::Receiver<String>,
    pub status: watch::Sender<Status>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SimNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Enrolls `n` stores named `<prefix>-<i>` (tokens from the operator API), `concurrency` at a time.
pub async fn enroll_many(
    admin: &Client,
    node_url: &str,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Identity>> {
    let results: Vec<anyhow::Result<Identity>> = futures::stream::iter(0..n)
        .map(|i| {
            let mut admin = admin.clone();
            let url = node_url.to_string();
            let store = format!("{prefix}-{i:05}");
            async move {
                let t = admin
                    .create_enroll_token(CreateEnrollTokenRequest {
                        store_id: store.clone(),
                        region: "sim".into(),
                        ttl_seconds: 3600,
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .token;
                let token = EnrollToken::parse(&t)?;
                Ok(enroll::enroll(&url, &token, "fleetsim", "sim").await?)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Starts one simulated node's session. Commands are answered at once and their arrival time
/// recorded in `receipts`.
pub fn start_node(
    url: &str,
    id: Identity,
    state_dir: PathBuf,
    heartbeat_hint: Duration,
    receipts: Receipts,
) -> SimNode {
    let store = id.store_id.clone();
    let status = Status {
        agent_version: "fleetsim".into(),
        workloads: vec![WorkloadStatus {
            name: "app".into(),
            kind: "container".into(),
            state: "running".into(),
            healthy: true,
            ..Default::default()
        }],
        ..Default::default()
    };
    let (status_tx, status_rx) = watch::channel(status);
    let (tx, mut rx) = mpsc::channel(8);
    let mut cfg = LinkConfig::new(url, state_dir, "fleetsim");
    cfg.backoff_min = Duration::from_millis(200).min(heartbeat_hint);
    cfg.backoff_max = Duration::from_secs(10);
    let outbox = Arc::new(Outbox::in_memory(Limits::default()));
    let link = Link::new(cfg, id, Arc::clone(&outbox), status_rx, tx);
    let online = link.online();
    let (desired_tx, desired) = watch::channel(String::new());
    let task = tokio::spawn(async move {
        let handler = async move {
            while let Some(msg) = rx.recv().await {
                match msg {
                    Inbound::Desired { revision, .. } => {
                        desired_tx.send_replace(revision);
                    }
                    Inbound::Command { command, reply } => {
                        receipts
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(command.id.clone(), Instant::now());
                        let _ = reply.send(CommandResult {
                            id: command.id,
                            ok: true,
                            message: "done".into(),
                        });
                    }
                }
            }
        };
        tokio::join!(link.run(), handler);
    });
    SimNode { store, outbox, online, desired, status: status_tx, task }
}

/// How many of `nodes` have a session right now.
pub fn online(nodes: &[SimNode]) -> usize {
    nodes.iter().filter(|n| *n.online.borrow()).count()
}

/// Percentile (0..=100) of durations.
pub fn percentile(mut d: Vec<Duration>, p: f64) -> Duration {
    if d.is_empty() {
        return Duration::ZERO;
    }
    d.sort_unstable();
    let i = ((p / 100.0) * (d.len() - 1) as f64).round() as usize;
    d[i.min(d.len() - 1)]
}
