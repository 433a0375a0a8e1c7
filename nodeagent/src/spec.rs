//! The OCI runtime spec of a container, as a pure function of the profile's container spec,
//! the image's config and what netd gave (the network namespace).
//!
//! Defaults where the profile says nothing: the image's entrypoint, command, environment, user
//! and working directory; a reduced capability set (Docker's default minus `NET_RAW`,
//! `MKNOD`, `SETFCAP`), no-new-privileges, a deny-all device cgroup (runc adds the standard
//! devices), a pids limit, and the hostname set to the workload's name. `command` in the profile
//! replaces the image's entrypoint and command together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use backroom_profiles::ContainerSpec;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder, Process, ProcessBuilder,
    RootBuilder, Spec, UserBuilder, get_default_maskedpaths, get_default_mounts,
    get_default_namespaces, get_default_readonly_paths,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The runtime defaults an image carries (from its config blob).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: String,
    pub working_dir: String,
    /// The uncompressed layer digests, bottom first.
    pub diff_ids: Vec<String>,
}

impl ImageConfig {
    /// Reads an image config blob (OCI or Docker, same fields).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let c: oci_spec::image::ImageConfiguration =
            serde_json::from_slice(bytes).map_err(|source| Error::ImageConfig { source })?;
        let inner = c.config().clone().unwrap_or_default();
        Ok(ImageConfig {
            entrypoint: inner.entrypoint().clone().unwrap_or_default(),
            cmd: inner.cmd().clone().unwrap_or_default(),
            env: inner.env().clone().unwrap_or_default(),
            user: inner.user().clone().unwrap_or_default(),
            working_dir: inner.working_dir().clone().unwrap_or_default(),
            diff_ids: c.rootfs().diff_ids().clone(),
        })
    }
}

/// What the spec is made from, besides the profile's container spec.
pub struct SpecInput<'a> {
    pub container: &'a ContainerSpec,
    pub image: &'a ImageConfig,
    /// The cgroup path (`/backroom/<namespace>/<container id>`).
    pub cgroups_path: String,
    /// netd's namespace for this instance; None: a fresh namespace with loopback only.
    pub netns: Option<&'a str>,
    /// Where volumes live on the host (`<state>/volumes`).
    pub volumes_dir: &'a Path,
    /// The host files mounted read-only as `/etc/resolv.conf` and `/etc/hosts` (see
    /// [`crate::etc`]); None: the image's own.
    pub etc_files: Option<(&'a Path, &'a Path)>,
}

const CAPS: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::AuditWrite,
];

const PIDS_LIMIT: i64 = 4096;
const CPU_PERIOD_US: u64 = 100_000;

fn bad(source: oci_spec::OciSpecError) -> Error {
    Error::RuntimeSpec { source }
}

/// The argv: the profile's command, or the image's entrypoint + cmd.
pub fn argv(c: &ContainerSpec, image: &ImageConfig) -> Result<Vec<String>> {
    let args: Vec<String> = if c.command.is_empty() {
        image.entrypoint.iter().chain(image.cmd.iter()).cloned().collect()
    } else {
        c.command.clone()
    };
    if args.is_empty() {
        return Err(Error::Invalid(format!(
            "workload {} has no command: the profile gives none and the image has neither entrypoint nor cmd",
            c.name
        )));
    }
    Ok(args)
}

/// The image's environment with the profile's on top (by variable name).
pub fn env(c: &ContainerSpec, image: &ImageConfig) -> Vec<String> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut put = |k: &str, v: &str| {
        if !vars.contains_key(k) {
            order.push(k.to_string());
        }
        vars.insert(k.to_string(), v.to_string());
    };
    put("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for e in &image.env {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        put(k, v);
    }
    for (k, v) in &c.env {
        put(k, v);
    }
    put("HOSTNAME", c.name.as_str());
    order.iter().map(|k| format!("{k}={}", vars.get(k).map_or("", String::as_str))).collect()
}

/// uid and gid from the image's `user` (numeric `uid[:gid]`, or `root`).
pub fn user(image: &ImageConfig) -> Result<(u32, u32)> {
    let u = image.user.trim();
    if u.is_empty() || u == "root" || u == "0" {
        return Ok((0, 0));
    }
    let (uid, gid) = u.split_once(':').unwrap_or((u, u));
    match (uid.parse::<u32>(), gid.parse::<u32>()) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        _ => Err(Error::Invalid(format!(
            "the image's user `{u}` is a name: nodeagent needs a numeric uid[:gid] in the image config"
        ))),
    }
}

/// The process of the container (also the base of `exec` probes).
pub fn process(c: &ContainerSpec, image: &ImageConfig, args: Vec<String>) -> Result<Process> {
    let (uid, gid) = user(image)?;
    let caps: oci_spec::runtime::Capabilities = CAPS.iter().copied().collect();
    let cwd =
        if image.working_dir.is_empty() { "/".to_string() } else { image.working_dir.clone() };
    ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(uid).gid(gid).build().map_err(bad)?)
        .args(args)
        .env(env(c, image))
        .cwd(cwd)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .inheritable(oci_spec::runtime::Capabilities::new())
                .ambient(oci_spec::runtime::Capabilities::new())
                .build()
                .map_err(bad)?,
        )
        // No rlimits: the task keeps containerd's (raising them may not be allowed).
        .rlimits(vec![])
        .no_new_privileges(true)
        .build()
        .map_err(bad)
}

/// The host directory of a named volume.
pub fn volume_dir(volumes_dir: &Path, name: &str) -> PathBuf {
    volumes_dir.join(name)
}

fn bind(source: &Path, dest: &str, ro: bool) -> Result<Mount> {
    let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
    options.push(if ro { "ro" } else { "rw" }.to_string());
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(options)
        .build()
        .map_err(bad)
}

/// The whole runtime spec.
pub fn build(input: &SpecInput<'_>) -> Result<Spec> {
    let c = input.container;
    let args = argv(c, input.image)?;
    let process = process(c, input.image, args)?;

    // proc, dev, devpts, shm, mqueue, sysfs (read-only) and cgroup (read-only).
    let mut mounts = get_default_mounts();
    for v in &c.volumes {
        mounts.push(bind(&volume_dir(input.volumes_dir, v.name.as_str()), &v.path, false)?);
    }
    if let Some((resolv, hosts)) = input.etc_files {
        mounts.push(bind(resolv, "/etc/resolv.conf", true)?);
        mounts.push(bind(hosts, "/etc/hosts", true)?);
    }

    let namespaces: Vec<LinuxNamespace> = get_default_namespaces()
        .into_iter()
        .map(|ns| {
            if ns.typ() == LinuxNamespaceType::Network
                && let Some(path) = input.netns
            {
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Network)
                    .path(path)
                    .build()
                    .map_err(bad)
            } else {
                Ok(ns)
            }
        })
        .collect::<Result<_>>()?;

    let limits = c.resources.unwrap_or(backroom_profiles::Limits { cpus: None, memory: None });
    let mut res = LinuxResourcesBuilder::default()
        .devices(vec![
            LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().map_err(bad)?,
        ])
        .pids(LinuxPidsBuilder::default().limit(PIDS_LIMIT).build().map_err(bad)?);
    if let Some(m) = limits.memory {
        let bytes = i64::try_from(m.bytes()).map_err(|_| {
            Error::Invalid(format!("the memory limit {m} of {} is too large", c.name))
        })?;
        // swap = limit: no swap beyond the memory limit.
        res = res
            .memory(LinuxMemoryBuilder::default().limit(bytes).swap(bytes).build().map_err(bad)?);
    }
    if let Some(cpus) = limits.cpus {
        let quota = i64::from(cpus.millis()) * i64::try_from(CPU_PERIOD_US).unwrap_or(0) / 1000;
        res = res.cpu(
            LinuxCpuBuilder::default().quota(quota).period(CPU_PERIOD_US).build().map_err(bad)?,
        );
    }

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(res.build().map_err(bad)?)
        .cgroups_path(PathBuf::from(&input.cgroups_path))
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths())
        .build()
        .map_err(bad)?;

    let mut spec = Spec::default();
    spec.set_version("1.0.2".to_string());
    spec.set_hostname(Some(c.name.as_str().to_string()));
    spec.set_root(Some(
        RootBuilder::default().path("rootfs").readonly(false).build().map_err(bad)?,
    ));
    spec.set_process(Some(process));
    spec.set_mounts(Some(mounts));
    spec.set_linux(Some(linux));
    spec.set_annotations(None);
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(extra: &str) -> ContainerSpec {
        let text = format!(
            "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {{name: t}}\nworkloads:\n  - name: web\n    kind: container\n    image: reg.example/web:1\n{extra}"
        );
        backroom_profiles::render_str("t.yaml", &text)
            .unwrap()
            .profile
            .containers()
            .next()
            .unwrap()
            .clone()
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/bin/busybox".into()],
            cmd: vec!["httpd".into(), "-f".into()],
            env: vec!["PATH=/bin".into(), "LANG=C".into()],
            ..Default::default()
        }
    }

    #[test]
    fn the_spec_carries_the_profile() {
        let c = container(
            "    command: [/bin/sh, -c, 'sleep 1']\n    env: {LANG: fr_FR.UTF-8, A: b}\n    resources: {cpus: 0.5, memory: 64Mi}\n    volumes: [{name: data, path: /data}]\n",
        );
        let img = image();
        let spec = build(&SpecInput {
            container: &c,
            image: &img,
            cgroups_path: "/backroom/ns/web.1".into(),
            netns: Some("/run/netns/bk-web"),
            volumes_dir: Path::new("/var/lib/backroom/volumes"),
            etc_files: Some((Path::new("/s/etc/web/resolv.conf"), Path::new("/s/etc/web/hosts"))),
        })
        .unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["process"]["args"], serde_json::json!(["/bin/sh", "-c", "sleep 1"]));
        assert_eq!(
            json["process"]["env"],
            serde_json::json!(["PATH=/bin", "LANG=fr_FR.UTF-8", "A=b", "HOSTNAME=web"])
        );
        assert_eq!(json["process"]["noNewPrivileges"], true);
        let caps = json["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(caps.iter().any(|c| c == "CAP_NET_BIND_SERVICE"));
        assert!(!caps.iter().any(|c| c == "CAP_NET_RAW" || c == "CAP_SYS_ADMIN"));
        assert_eq!(json["hostname"], "web");
        assert_eq!(json["root"]["path"], "rootfs");
        assert_eq!(json["linux"]["cgroupsPath"], "/backroom/ns/web.1");
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(json["linux"]["resources"]["cpu"]["period"], 100_000);
        let net = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .unwrap()
            .clone();
        assert_eq!(net["path"], "/run/netns/bk-web");
        let vol = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/data")
            .unwrap()
            .clone();
        assert_eq!(vol["source"], "/var/lib/backroom/volumes/data");
        assert_eq!(vol["type"], "bind");
    }

    #[test]
    fn image_defaults_apply_when_the_profile_is_silent() {
        let c = container("");
        let img = image();
        let spec = build(&SpecInput {
            container: &c,
            image: &img,
            cgroups_path: "/backroom/ns/web.1".into(),
            netns: None,
            volumes_dir: Path::new("/v"),
            etc_files: None,
        })
        .unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["process"]["args"], serde_json::json!(["/bin/busybox", "httpd", "-f"]));
        let net = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .unwrap()
            .clone();
        assert!(net.get("path").is_none(), "a fresh namespace: {net}");
        assert!(json["linux"]["resources"].get("memory").is_none());
    }

    #[test]
    fn no_command_and_named_users_are_refused() {
        let c = container("");
        let empty = ImageConfig::default();
        assert!(argv(&c, &empty).unwrap_err().to_string().contains("has no command"));
        let named = ImageConfig { user: "www-data".into(), ..image() };
        assert!(user(&named).is_err());
        assert_eq!(user(&ImageConfig { user: "1000:100".into(), ..image() }).unwrap(), (1000, 100));
    }
}
