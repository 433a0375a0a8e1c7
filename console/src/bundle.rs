//! The USB stick: where a support bundle goes and where a new enrollment token may come from.
//!
//! A support bundle is one `.tar.gz` with what support needs to see what happened without a
//! shell on the box: nodeagent's status and recent actions, each app's log tail, the profile
//! with every `env` value replaced by `<redacted>`, netd's and vmd's state files, and the
//! journal's tail. Never the node's key or its console secret. The whole is kept under a size
//! cap: a part that does not fit keeps its end (the newest lines) and says it was cut.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The filesystem label the console looks for (the same as a provisioning stick).
pub const STICK_LABEL: &str = "BACKROOM";
/// Where the console mounts a stick it found by its label.
pub const MOUNT_POINT: &str = "/run/backroom/stick";
/// The default cap of a bundle, before compression.
pub const DEFAULT_CAP: u64 = 64 << 20;

/// One file of the bundle.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    pub data: Vec<u8>,
}

/// Replaces every value under an `env:` key of a rendered profile (block or flow style) by
/// `<redacted>`: passwords and API keys live there.
pub fn redact_env(yaml: &str) -> String {
    let mut out = String::with_capacity(yaml.len());
    // The indentation of the `env:` key we are under, if any.
    let mut under: Option<usize> = None;
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim_start();
        let t_item = t.strip_prefix("- ").unwrap_or(t);
        if let Some(i) = under {
            if !t.is_empty() && indent > i {
                match t.split_once(':') {
                    Some((k, _)) => out.push_str(&format!("{}{k}: <redacted>\n", &line[..indent])),
                    None => out.push_str(&format!("{}<redacted>\n", &line[..indent])),
                }
                continue;
            }
            under = None;
        }
        if let Some(rest) = t_item.strip_prefix("env:") {
            let key_col = indent + (t.len() - t_item.len());
            if rest.trim().is_empty() {
                under = Some(key_col);
                out.push_str(line);
            } else {
                let head = &line[..line.len() - rest.len()];
                out.push_str(&format!("{head} <redacted>"));
            }
            out.push('\n');
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Cuts the parts to fit `cap` bytes in all, in order: a part that does not fit keeps its end.
pub fn fit(parts: Vec<Part>, cap: u64) -> Vec<Part> {
    let mut left = cap as usize;
    let mut out = Vec::with_capacity(parts.len());
    for mut p in parts {
        if p.data.len() > left {
            let note = format!("[cut to the last {left} bytes by the bundle's size cap]\n");
            let keep = left.saturating_sub(note.len());
            let tail = p.data.split_off(p.data.len() - keep);
            p.data = note.into_bytes();
            p.data.extend_from_slice(&tail);
            if keep == 0 {
                p.data.truncate(left);
            }
        }
        left -= p.data.len();
        out.push(p);
    }
    out
}

/// `20261204T141502Z` from unix ms.
pub fn stamp(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Writes the bundle into `dir` (a stick's root) and returns its path and size. Written under a
/// temporary name, flushed to the stick and renamed: a stick pulled out early holds no bundle
/// that looks whole.
pub fn write(
    dir: &Path,
    store: &str,
    at_ms: i64,
    parts: Vec<Part>,
    cap: u64,
) -> Result<(PathBuf, u64), String> {
    let store = if store.is_empty() { "store" } else { store };
    let name = format!("backroom-support-{store}-{}.tar.gz", stamp(at_ms));
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.part"));
    let file =
        std::fs::File::create(&tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let root = name.trim_end_matches(".tar.gz").to_string();
    let mtime = u64::try_from(at_ms / 1000).unwrap_or(0);
    for p in fit(parts, cap) {
        let mut h = tar::Header::new_gnu();
        h.set_size(p.data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        h.set_cksum();
        tar.append_data(&mut h, format!("{root}/{}", p.name), p.data.as_slice())
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    }
    let gz = tar.into_inner().map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    let mut file = gz.finish().map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    file.flush()
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    std::fs::rename(&tmp, &path).map_err(|e| format!("cannot rename {}: {e}", tmp.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok((path, size))
}

/// A stick the console mounted itself: unmounted when dropped.
#[derive(Debug)]
pub struct Stick {
    pub dir: PathBuf,
    mounted: bool,
}

impl Drop for Stick {
    fn drop(&mut self) {
        if self.mounted {
            let _ = std::process::Command::new("umount").arg(&self.dir).status();
        }
    }
}

/// The stick to use: `explicit` (a folder where one is mounted), else the filesystem labelled
/// [`STICK_LABEL`], mounted at [`MOUNT_POINT`] for as long as the returned value lives.
pub fn find_stick(explicit: Option<&Path>) -> Result<Stick, String> {
    if let Some(d) = explicit {
        if !d.is_dir() {
            return Err(format!("the USB stick folder {} is not there", d.display()));
        }
        return Ok(Stick { dir: d.to_path_buf(), mounted: false });
    }
    let dev = PathBuf::from(format!("/dev/disk/by-label/{STICK_LABEL}"));
    if !dev.exists() {
        return Err(format!(
            "no USB stick found: plug in a stick with a FAT filesystem labelled {STICK_LABEL}"
        ));
    }
    std::fs::create_dir_all(MOUNT_POINT).map_err(|e| format!("cannot make {MOUNT_POINT}: {e}"))?;
    let st = std::process::Command::new("mount")
        .arg(&dev)
        .arg(MOUNT_POINT)
        .status()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !st.success() {
        return Err(format!("the stick {} cannot be mounted ({st})", dev.display()));
    }
    Ok(Stick { dir: PathBuf::from(MOUNT_POINT), mounted: true })
}

/// An enrollment token on the stick: a file `token` or `token.txt`, or `token = "..."` in
/// `provision.toml`.
pub fn token_on_stick(dir: &Path) -> Result<String, String> {
    for name in ["token", "token.txt"] {
        if let Ok(s) = std::fs::read_to_string(dir.join(name)) {
            let t = s.trim();
            if !t.is_empty() {
                return Ok(t.to_string());
            }
        }
    }
    if let Ok(s) = std::fs::read_to_string(dir.join("provision.toml")) {
        for line in s.lines() {
            if let Some((k, v)) = line.split_once('=')
                && k.trim() == "token"
            {
                let v = v.trim().trim_matches('"');
                if !v.is_empty() {
                    return Ok(v.to_string());
                }
            }
        }
    }
    Err(format!(
        "the stick at {} holds no token (a file named token, or token = \"...\" in provision.toml)",
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_are_redacted_in_both_styles() {
        let y = "workloads:\n  - name: orders\n    env:\n      DB_PASSWORD: hunter2\n      MODE: \"prod\"\n    image: x\n  - name: menu\n    env: { TOKEN: abc }\n";
        let r = redact_env(y);
        assert!(!r.contains("hunter2") && !r.contains("prod") && !r.contains("abc"), "{r}");
        assert!(r.contains("DB_PASSWORD: <redacted>") && r.contains("MODE: <redacted>"), "{r}");
        assert!(r.contains("    image: x") && r.contains("env: <redacted>"), "{r}");
        let item = "- env:\n    A: secret\n  name: x\n";
        let r = redact_env(item);
        assert!(!r.contains("secret") && r.contains("  name: x"), "{r}");
    }

    #[test]
    fn the_cap_keeps_the_end_of_what_does_not_fit() {
        let parts = vec![
            Part { name: "a".into(), data: vec![b'a'; 100] },
            Part { name: "b".into(), data: b"old lines\n".repeat(100) },
            Part { name: "c".into(), data: vec![b'c'; 100] },
        ];
        let out = fit(parts, 300);
        let total: usize = out.iter().map(|p| p.data.len()).sum();
        assert!(total <= 300, "{total}");
        assert_eq!(out[0].data.len(), 100);
        let b = String::from_utf8_lossy(&out[1].data);
        assert!(b.starts_with("[cut to the last 200 bytes") && b.ends_with("old lines\n"), "{b}");
        assert!(out[2].data.is_empty());
    }

    #[test]
    fn a_bundle_is_a_tar_gz_with_its_parts() {
        let dir = tempfile::tempdir().unwrap();
        let parts = vec![Part { name: "status.json".into(), data: b"{}".to_vec() }];
        let (path, size) =
            write(dir.path(), "store-0042", 1_764_857_702_000, parts, 1 << 20).unwrap();
        assert!(size > 0);
        assert!(
            path.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("backroom-support-store-0042-2025")
        );
        let f = std::fs::File::open(&path).unwrap();
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(f));
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names.len(), 1);
        assert!(names[0].ends_with("/status.json"), "{names:?}");
    }

    #[test]
    fn tokens_come_from_a_file_or_provision_toml() {
        let dir = tempfile::tempdir().unwrap();
        assert!(token_on_stick(dir.path()).is_err());
        std::fs::write(
            dir.path().join("provision.toml"),
            "central = \"https://x\"\ntoken = \"bk1.abc\"\n",
        )
        .unwrap();
        assert_eq!(token_on_stick(dir.path()).unwrap(), "bk1.abc");
        std::fs::write(dir.path().join("token"), "bk1.def\n").unwrap();
        assert_eq!(token_on_stick(dir.path()).unwrap(), "bk1.def");
    }
}
