//! The side-effecting operations on one workload's containers. Each runs as its own task (so a
//! slow pull never blocks the engine) and reports an [`OpOutcome`] the engine applies to the
//! workload's record.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backroom_daemon::SharedClock;
use backroom_profiles::ContainerSpec;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::logs::Logs;
use crate::network::Network;
use crate::record::{HealthState, Instance, Role, spec_hash};
use crate::runtime::{CreateRequest, LABEL_ROLE, LABEL_SPEC, LABEL_WORKLOAD, Runtime};

/// What the operations need, shared.
pub struct Ctx<R, N> {
    pub runtime: Arc<R>,
    pub net: Arc<N>,
    pub logs: Logs,
    pub volumes_dir: PathBuf,
    /// `<state>/etc`: each workload's resolv.conf and hosts.
    pub etc_dir: PathBuf,
    pub resolv_conf: PathBuf,
    pub stop_grace: Duration,
    pub clock: SharedClock,
}

impl<R, N> Clone for Ctx<R, N> {
    fn clone(&self) -> Self {
        Ctx {
            runtime: self.runtime.clone(),
            net: self.net.clone(),
            logs: self.logs.clone(),
            volumes_dir: self.volumes_dir.clone(),
            etc_dir: self.etc_dir.clone(),
            resolv_conf: self.resolv_conf.clone(),
            stop_grace: self.stop_grace,
            clock: self.clock.clone(),
        }
    }
}

/// A container started, with the tasks that copy its output.
pub struct Launched {
    pub instance: Instance,
    pub pumps: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Launched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launched").field("instance", &self.instance.container_id).finish()
    }
}

/// Why a container did not start: its image could not be had, or something after.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Pull(Error),
    #[error(transparent)]
    Run(#[from] Error),
}

impl StartError {
    pub fn is_pull(&self) -> bool {
        matches!(self, StartError::Pull(_))
    }
}

#[derive(Debug)]
pub enum OpOutcome {
    /// A new instance runs (start, restart, replace, rollback to the previous version).
    Started {
        launched: Launched,
        replaced: Option<String>,
    },
    /// Starting failed; `removed` lists containers the operation removed before failing.
    StartFailed {
        error: StartError,
        removed: Vec<String>,
    },
    /// Stop-first: the new version could not start and the previous one runs again (or not).
    ReplaceFailed {
        error: StartError,
        restored: Option<Launched>,
        removed: String,
    },
    Promoted {
        removed: String,
        netns: Option<String>,
        addresses: Vec<String>,
        /// What went wrong on the way without stopping the promotion.
        warnings: Vec<Error>,
    },
    /// The `next` instance is gone (rollback or abandon).
    NextRemoved {
        removed: String,
        rollback_reason: Option<String>,
        errors: Vec<Error>,
    },
    /// Stop-first rollback: the new primary is removed and the previous version started.
    RolledBack {
        removed: String,
        reason: String,
        restored: std::result::Result<Launched, StartError>,
    },
    Removed {
        errors: Vec<Error>,
    },
}

/// Starts a container of `workload` running `spec` in `role`.
pub async fn launch<R: Runtime, N: Network>(
    ctx: &Ctx<R, N>,
    spec: &ContainerSpec,
    role: Role,
    container_id: &str,
    revision: &str,
) -> std::result::Result<Launched, StartError> {
    let workload = spec.name.as_str();
    let image_ref = spec
        .image
        .as_ref()
        .ok_or_else(|| Error::Invalid(format!("workload {workload} has no image")))?;
    let image = ctx.runtime.ensure_image(image_ref).await.map_err(StartError::Pull)?;
    let endpoints = if spec.networks.is_empty() {
        None
    } else {
        Some(ctx.net.attach(workload, role.netd_instance()).await?)
    };
    for v in &spec.volumes {
        let dir = crate::spec::volume_dir(&ctx.volumes_dir, v.name.as_str());
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io("create the volume folder", &dir, e))?;
    }
    let netns = endpoints.as_ref().map(|e| e.netns_path.clone()).filter(|p| !p.is_empty());
    let (resolv, hosts) = crate::etc::prepare(&ctx.etc_dir, &ctx.resolv_conf, workload)?;
    let oci = crate::spec::build(&crate::spec::SpecInput {
        container: spec,
        image: &image.config,
        cgroups_path: ctx.runtime.cgroups_path(container_id),
        netns: netns.as_deref(),
        volumes_dir: &ctx.volumes_dir,
        etc_files: Some((&resolv, &hosts)),
    })?;
    let (stdout, stderr) = ctx.logs.prepare(container_id)?;
    let pumps = ctx.logs.pump(workload, container_id)?;
    let hash = spec_hash(spec);
    let labels = BTreeMap::from([
        (LABEL_WORKLOAD.to_string(), workload.to_string()),
        (LABEL_ROLE.to_string(), format!("{role:?}").to_lowercase()),
        (LABEL_SPEC.to_string(), hash.clone()),
    ]);
    let image_name = image.name.clone();
    let image_digest = image.digest.clone();
    let started = ctx
        .runtime
        .start(CreateRequest {
            id: container_id.to_string(),
            image,
            spec: oci,
            labels,
            stdout,
            stderr,
        })
        .await;
    let pid = match started {
        Ok(pid) => pid,
        Err(e) => {
            let _ = ctx.runtime.remove(container_id, Duration::from_secs(1)).await;
            for p in pumps {
                p.abort();
            }
            ctx.logs.remove_fifos(container_id);
            return Err(e.into());
        }
    };
    let now = u64::try_from(ctx.clock.now_ms()).unwrap_or(0);
    Ok(Launched {
        instance: Instance {
            container_id: container_id.to_string(),
            role,
            spec: spec.clone(),
            spec_hash: hash,
            revision: revision.to_string(),
            image: image_name,
            image_digest,
            netns,
            addresses: endpoints.map(|e| e.addresses).unwrap_or_default(),
            pid,
            started_ms: now,
            exit: None,
            health: HealthState { since_ms: now, ..Default::default() },
        },
        pumps,
    })
}

/// Removes a container and its FIFOs.
pub async fn remove<R: Runtime, N: Network>(ctx: &Ctx<R, N>, container_id: &str) -> Result<()> {
    let r = ctx.runtime.remove(container_id, ctx.stop_grace).await;
    ctx.logs.remove_fifos(container_id);
    r
}

pub async fn start<R: Runtime, N: Network>(
    ctx: Ctx<R, N>,
    spec: ContainerSpec,
    role: Role,
    id: String,
    revision: String,
) -> OpOutcome {
    match launch(&ctx, &spec, role, &id, &revision).await {
        Ok(launched) => OpOutcome::Started { launched, replaced: None },
        Err(e) => {
            if role == Role::Next
                && !spec.networks.is_empty()
                && let Err(d) = ctx.net.detach(spec.name.as_str(), role.netd_instance()).await
            {
                tracing::warn!(error = %backroom_daemon::Chain(&d), "cannot give the new version's endpoints back to netd");
            }
            OpOutcome::StartFailed { error: e, removed: vec![] }
        }
    }
}

/// Stops `old` (if any) and starts `spec` as the primary.
pub async fn restart<R: Runtime, N: Network>(
    ctx: Ctx<R, N>,
    old: Option<String>,
    spec: ContainerSpec,
    id: String,
    revision: String,
) -> OpOutcome {
    let mut removed = Vec::new();
    if let Some(old) = &old {
        if let Err(e) = remove(&ctx, old).await {
            return OpOutcome::StartFailed { error: e.into(), removed };
        }
        removed.push(old.clone());
    }
    match launch(&ctx, &spec, Role::Primary, &id, &revision).await {
        Ok(launched) => OpOutcome::Started { launched, replaced: old },
        Err(error) => OpOutcome::StartFailed { error, removed },
    }
}

/// Stop-first: stops `old`, starts `spec`; when that fails, starts `previous` again.
#[allow(clippy::too_many_arguments)]
pub async fn replace<R: Runtime, N: Network>(
    ctx: Ctx<R, N>,
    old: String,
    previous: ContainerSpec,
    previous_revision: String,
    spec: ContainerSpec,
    id: String,
    restore_id: String,
    revision: String,
) -> OpOutcome {
    if let Err(e) = remove(&ctx, &old).await {
        return OpOutcome::StartFailed { error: e.into(), removed: vec![] };
    }
    match launch(&ctx, &spec, Role::Primary, &id, &revision).await {
        Ok(launched) => OpOutcome::Started { launched, replaced: Some(old) },
        Err(error) => {
            let restored = match launch(
                &ctx,
                &previous,
                Role::Primary,
                &restore_id,
                &previous_revision,
            )
            .await
            {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::error!(error = %backroom_daemon::Chain(&e), "the previous version does not start either");
                    None
                }
            };
            OpOutcome::ReplaceFailed { error, restored, removed: old }
        }
    }
}

/// Start-first, the new version is ready: stop the old, move the stable addresses to the new.
pub async fn promote<R: Runtime, N: Network>(
    ctx: Ctx<R, N>,
    workload: String,
    old: String,
    networked: bool,
) -> OpOutcome {
    let mut warnings: Vec<Error> = remove(&ctx, &old).await.err().into_iter().collect();
    let (mut netns, mut addresses) = (None, Vec::new());
    if networked {
        match ctx.net.promote(&workload, "next").await {
            Ok(e) => {
                netns = Some(e.netns_path).filter(|p| !p.is_empty());
                addresses = e.addresses;
            }
            Err(e) => warnings.push(e),
        }
    }
    OpOutcome::Promoted { removed: old, netns, addresses, warnings }
}

/// Removes the `next` instance (rollback or abandon).
pub async fn drop_next<R: Runtime, N: Network>(
    ctx: Ctx<R, N>,
    workload: String,
    next: String,
    networked: bool,
    rollback_reason: Option<String>,
) -> OpOutcome {
    let mut errors = Vec::new();
    if let Err(e) = remove(&ctx, &next).await {
        errors.push(e);
    }
    if networked && let Err(e) = ctx.net.detach(&workload, "next").await {
        errors.push(e);
    }
    OpOutcome::NextRemoved { removed: next, rollback_reason, errors }
}

/// Stop-first rollback: remove the failed new primary, start the previous version again.
pub async fn roll_back<R: Runtime, N: Network>(
    ctx: Ctx<R, N>,
    failed: String,
    previous: ContainerSpec,
    previous_revision: String,
    id: String,
    reason: String,
) -> OpOutcome {
    if let Err(e) = remove(&ctx, &failed).await {
        tracing::warn!(error = %backroom_daemon::Chain(&e), "the failed version is not removed cleanly");
    }
    let restored = launch(&ctx, &previous, Role::Primary, &id, &previous_revision).await;
    OpOutcome::RolledBack { removed: failed, reason, restored }
}

/// The workload left the profile: remove its containers and endpoints.
pub async fn remove_all<R: Runtime, N: Network>(
    ctx: Ctx<R, N>,
    workload: String,
    containers: Vec<(String, Role, bool)>,
) -> OpOutcome {
    let mut errors = Vec::new();
    for (id, role, networked) in containers {
        if let Err(e) = remove(&ctx, &id).await {
            errors.push(e);
        }
        if networked && let Err(e) = ctx.net.detach(&workload, role.netd_instance()).await {
            errors.push(e);
        }
    }
    OpOutcome::Removed { errors }
}
