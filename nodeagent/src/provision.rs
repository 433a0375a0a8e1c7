//! nodeagent provisioned from `provision.toml` (spec/store-os.md): which of the candidate files
//! is used, what it gives, how that meets the command line, and what is remembered.
//!
//! The store OS image starts nodeagent with `--provision` twice (the USB stick, then the ESP);
//! the first candidate that exists is used and the others are not read. What it gives (central's
//! URLs, the token, registries) counts as if given as flags, and an explicit flag wins.
//!
//! What a file gave is kept in `<state>/provision.json` (the token excepted: it is used up at
//! enrollment), with where it came from and when, so that the recovery console can show it and
//! an enrolled box still finds central once the stick is pulled. A wrong file stops a box that
//! has not enrolled (nothing else would get it to central); an enrolled box says so and runs on
//! with what it had.
//!
//! [`find`] reads the files; [`decide`] and [`merge`] are pure, and `main` carries them out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use backroom_session::provision::{self, Provision, ProvisionError};
use serde::{Deserialize, Serialize};

/// The record's name in the state folder.
pub const RECORD_FILE: &str = "provision.json";

/// `<state>/provision.json`. Unknown fields are accepted on purpose: a node rolled back to an
/// older nodeagent reads what a newer one wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The file used (or the one that was wrong); `None` when no candidate existed.
    pub source: Option<PathBuf>,
    /// When it was read, RFC 3339.
    pub used_at: String,
    /// Why the file could not be used (with its line and column), or that none was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What a good file gave, kept while a later file is wrong or missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub central: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure_registries: Vec<String>,
    /// registry → PEM text.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registry_ca: BTreeMap<String, String>,
}

impl Record {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(RECORD_FILE)
    }

    /// The record in `state_dir`; `None` when there is none or it does not read (it is
    /// rewritten at once, and nothing in it is needed to start).
    pub fn load(state_dir: &Path) -> Option<Record> {
        let bytes = std::fs::read(Self::path(state_dir)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn save(&self, state_dir: &Path) -> Result<(), backroom_daemon::Error> {
        let mut json = serde_json::to_vec_pretty(self).unwrap_or_default();
        json.push(b'\n');
        // Registry CAs are public; the token is never in it. 0644 so that the console reads it.
        backroom_daemon::fs::save(&Self::path(state_dir), &json, 0o644)
    }

    fn provided(&self) -> Option<Provided> {
        (!self.central.is_empty()).then(|| Provided {
            central: self.central.clone(),
            token: None,
            insecure_registries: self.insecure_registries.clone(),
            registry_ca: self.registry_ca.clone(),
        })
    }
}

/// What reading the candidates found.
#[derive(Debug)]
pub enum Found {
    /// None of the candidates exists.
    Nothing { tried: Vec<PathBuf> },
    /// The first that exists, and what reading it gave.
    File { path: PathBuf, read: Result<Provision, ProvisionError> },
}

/// Reads the first candidate that exists (the later ones are not looked at).
pub fn find(candidates: &[PathBuf]) -> Found {
    for path in candidates {
        // One that cannot even be checked (no permission on its folder) is used, so that the
        // error says why it cannot be read rather than passing over it silently.
        if path.try_exists().unwrap_or(true) {
            return Found::File { path: path.clone(), read: provision::load(path) };
        }
    }
    Found::Nothing { tried: candidates.to_vec() }
}

/// What provisioning gives nodeagent, before the flags are laid over it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provided {
    pub central: Vec<String>,
    /// Only from a file read at this start, never from the record.
    pub token: Option<String>,
    pub insecure_registries: Vec<String>,
    pub registry_ca: BTreeMap<String, String>,
}

/// What to do about provisioning at this start.
#[derive(Debug, Default)]
pub struct Decision {
    /// What to use, if anything.
    pub provided: Option<Provided>,
    /// The record to write; `None`: leave it as it is.
    pub record: Option<Record>,
    /// Said once in the log, as warnings.
    pub warnings: Vec<String>,
    /// Said once in the log, as information.
    pub notes: Vec<String>,
    /// The file is wrong and the node has not enrolled: stop (after writing the record).
    pub fatal: Option<ProvisionError>,
}

/// What `found` means for a node that has (or has not) `enrolled`, given the record of an
/// earlier start. `now` is an RFC 3339 time.
pub fn decide(found: Found, enrolled: bool, previous: Option<Record>, now: &str) -> Decision {
    let previous = previous.unwrap_or_default();
    match found {
        Found::File { path, read: Ok(p) } => {
            let record = Record {
                source: Some(path.clone()),
                used_at: now.to_string(),
                error: None,
                central: p.central.clone(),
                insecure_registries: p.insecure_registries.clone(),
                registry_ca: p.registry_ca.clone(),
            };
            Decision {
                notes: vec![format!("provisioned from {}", path.display())],
                provided: Some(Provided {
                    central: p.central,
                    token: Some(p.token.to_string()),
                    insecure_registries: p.insecure_registries,
                    registry_ca: p.registry_ca,
                }),
                record: Some(record),
                ..Decision::default()
            }
        }
        Found::File { path, read: Err(e) } => {
            let record = Record {
                source: Some(path),
                used_at: now.to_string(),
                error: Some(backroom_daemon::chain(&e)),
                ..previous.clone()
            };
            if !enrolled {
                return Decision { record: Some(record), fatal: Some(e), ..Decision::default() };
            }
            let mut warnings = vec![format!(
                "{}; this node has enrolled already, so it carries on without the file",
                backroom_daemon::chain(&e)
            )];
            if previous.provided().is_some() {
                warnings.push(format!(
                    "using what {} gave at {}",
                    shown(&previous),
                    previous.used_at
                ));
            }
            Decision {
                provided: previous.provided(),
                record: Some(record),
                warnings,
                ..Decision::default()
            }
        }
        Found::Nothing { tried } => {
            if let Some(p) = previous.provided() {
                return Decision {
                    provided: Some(p),
                    notes: vec![format!(
                        "no provision.toml now ({}); using what {} gave at {}",
                        list(&tried),
                        shown(&previous),
                        previous.used_at
                    )],
                    ..Decision::default()
                };
            }
            let why = format!("no provision.toml found (tried {})", list(&tried));
            let mut d = Decision {
                record: Some(Record {
                    source: None,
                    used_at: now.to_string(),
                    error: Some(why.clone()),
                    ..Record::default()
                }),
                ..Decision::default()
            };
            if enrolled {
                d.notes.push(why);
            } else {
                d.warnings.push(format!(
                    "{why}: this node is not provisioned; plug in a provisioning stick (label {}) and restart nodeagent, or use the recovery console",
                    provision::STICK_LABEL
                ));
            }
            d
        }
    }
}

fn shown(r: &Record) -> String {
    r.source.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "provisioning".into())
}

fn list(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// What the command line gave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub central: Option<String>,
    pub token: Option<String>,
    pub insecure_registries: Vec<String>,
    /// registry → PEM certificates, from `--registry-ca`.
    pub registry_cas: BTreeMap<String, Vec<String>>,
}

/// The flags laid over what provisioning gave: a flag wins; lists are joined; a registry given
/// a CA with `--registry-ca` keeps only that one. Also says what was left unused.
pub fn merge(flags: Flags, provided: Option<Provided>) -> (Flags, Vec<String>) {
    let Some(p) = provided else { return (flags, Vec::new()) };
    let mut said = Vec::new();
    let mut out = flags;
    match (&out.central, p.central.split_first()) {
        (Some(flag), Some(_)) => {
            said.push(format!("--central {flag} wins over the URLs in provision.toml"));
        }
        (None, Some((first, rest))) => {
            out.central = Some(first.clone());
            if !rest.is_empty() {
                said.push(format!(
                    "provision.toml gives {} central URLs: this nodeagent uses only the first ({first}); {} not used yet",
                    p.central.len(),
                    rest.join(", ")
                ));
            }
        }
        (_, None) => {}
    }
    if out.token.is_none() {
        out.token = p.token;
    }
    for r in p.insecure_registries {
        if !out.insecure_registries.contains(&r) {
            out.insecure_registries.push(r);
        }
    }
    for (registry, pem) in p.registry_ca {
        out.registry_cas.entry(registry).or_insert_with(|| crate::runtime::pem_certificates(&pem));
    }
    (out, said)
}

#[cfg(test)]
mod tests {
    use super::*;
    use backroom_session::token::EnrollToken;

    const NOW: &str = "2026-12-04T14:00:00Z";

    fn good(central: &[&str]) -> Provision {
        Provision {
            central: central.iter().map(|s| s.to_string()).collect(),
            token: EnrollToken::generate("store-0042", &"ab".repeat(32)),
            insecure_registries: vec!["10.0.2.2:5055".into()],
            registry_ca: BTreeMap::new(),
        }
    }

    fn bad(path: &str) -> Found {
        let path = PathBuf::from(path);
        let read = provision::parse(&path, "centrl = 1\n");
        Found::File { path, read }
    }

    #[test]
    fn a_good_file_is_used_and_recorded_without_its_token() {
        let p = good(&["https://a:7443"]);
        let token = p.token.to_string();
        let d = decide(
            Found::File { path: "/stick/provision.toml".into(), read: Ok(p) },
            false,
            None,
            NOW,
        );
        assert!(d.fatal.is_none());
        let given = d.provided.unwrap();
        assert_eq!(given.token.as_deref(), Some(token.as_str()));
        let r = d.record.unwrap();
        assert_eq!(r.source.as_deref(), Some(Path::new("/stick/provision.toml")));
        assert_eq!(r.used_at, NOW);
        assert_eq!(r.central, ["https://a:7443"]);
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains(&token) && !json.contains("error"), "{json}");
        let back: Record = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn a_wrong_file_stops_a_node_that_has_not_enrolled() {
        let d = decide(bad("/stick/provision.toml"), false, None, NOW);
        let e = d.fatal.unwrap().to_string();
        assert!(e.starts_with("/stick/provision.toml:1:1: unknown field `centrl`"), "{e}");
        let r = d.record.unwrap();
        assert_eq!(r.error.as_deref(), Some(e.as_str()), "the record says why");
        assert!(d.provided.is_none());
    }

    #[test]
    fn a_wrong_file_on_an_enrolled_node_is_a_warning_and_what_it_had_stays() {
        let previous = Record {
            source: Some("/esp/provision.toml".into()),
            used_at: "2026-11-01T00:00:00Z".into(),
            central: vec!["https://a:7443".into()],
            ..Record::default()
        };
        let d = decide(bad("/stick/provision.toml"), true, Some(previous), NOW);
        assert!(d.fatal.is_none());
        assert!(d.warnings[0].contains("provision.toml:1:1"), "{:?}", d.warnings);
        let given = d.provided.unwrap();
        assert_eq!(given.central, ["https://a:7443"]);
        assert_eq!(given.token, None);
        let r = d.record.unwrap();
        assert!(r.error.is_some());
        assert_eq!(r.central, ["https://a:7443"], "kept for the next start");
    }

    #[test]
    fn a_pulled_stick_after_enrollment_uses_what_it_gave() {
        let previous = Record {
            source: Some("/stick/provision.toml".into()),
            used_at: "2026-11-01T00:00:00Z".into(),
            central: vec!["https://a:7443".into()],
            ..Record::default()
        };
        let tried = vec![PathBuf::from("/stick/provision.toml")];
        let d = decide(Found::Nothing { tried }, true, Some(previous), NOW);
        assert_eq!(d.provided.unwrap().central, ["https://a:7443"]);
        assert!(d.record.is_none(), "the record still says where it came from");
        assert!(d.warnings.is_empty());
    }

    #[test]
    fn nothing_found_on_a_new_node_is_said_and_recorded() {
        let tried = vec![PathBuf::from("/a/provision.toml"), PathBuf::from("/b/provision.toml")];
        let d = decide(Found::Nothing { tried }, false, None, NOW);
        assert!(d.provided.is_none() && d.fatal.is_none());
        assert!(d.warnings[0].contains("tried /a/provision.toml, /b/provision.toml"));
        assert_eq!(d.record.unwrap().source, None);
    }

    #[test]
    fn the_first_existing_candidate_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) =
            (dir.path().join("a.toml"), dir.path().join("b.toml"), dir.path().join("c.toml"));
        std::fs::write(&b, good(&["https://b:7443"]).to_toml()).unwrap();
        std::fs::write(&c, "garbage").unwrap();
        match find(&[a.clone(), b.clone(), c]) {
            Found::File { path, read } => {
                assert_eq!(path, b);
                assert_eq!(read.unwrap().central, ["https://b:7443"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(find(&[a]), Found::Nothing { .. }));
    }

    #[test]
    fn flags_win_and_lists_join() {
        let p = good(&["https://a:7443", "https://b:7443"]);
        let provided = Provided {
            central: p.central.clone(),
            token: Some(p.token.to_string()),
            insecure_registries: vec!["r:1".into(), "r:2".into()],
            registry_ca: BTreeMap::from([("r:1".into(), "x".into()), ("r:3".into(), "y".into())]),
        };
        let (m, said) = merge(Flags::default(), Some(provided.clone()));
        assert_eq!(m.central.as_deref(), Some("https://a:7443"));
        assert!(
            said[0].contains("uses only the first (https://a:7443); https://b:7443 not used yet")
        );
        assert_eq!(m.token, provided.token);
        assert_eq!(m.insecure_registries, ["r:1", "r:2"]);

        let flags = Flags {
            central: Some("https://flag:7443".into()),
            token: Some("flag-token".into()),
            insecure_registries: vec!["r:2".into(), "f:1".into()],
            registry_cas: BTreeMap::from([("r:1".into(), vec!["flag-pem".into()])]),
        };
        let (m, said) = merge(flags, Some(provided));
        assert_eq!(m.central.as_deref(), Some("https://flag:7443"));
        assert!(said[0].contains("--central https://flag:7443 wins"), "{said:?}");
        assert_eq!(m.token.as_deref(), Some("flag-token"));
        assert_eq!(m.insecure_registries, ["r:2", "f:1", "r:1"]);
        assert_eq!(m.registry_cas["r:1"], ["flag-pem"], "the flag's CA for r:1");
        assert!(m.registry_cas.contains_key("r:3"));
    }
}
