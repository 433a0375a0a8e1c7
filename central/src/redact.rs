//! What a viewer must not see: the values of every workload's `env` (database passwords, API
//! keys live there). Names stay, so a viewer still sees what a workload is given.

use backroom_profiles::Workload;

/// What stands in for a hidden value.
pub const REDACTED: &str = "<redacted>";

/// The profile with every `env` value replaced by [`REDACTED`], as canonical YAML. A document
/// that does not render (it should not happen: central rendered it before storing it) is
/// withheld whole rather than shown unredacted.
pub fn profile_yaml(source: &str, yaml: &str) -> String {
    match backroom_profiles::render_str(source, yaml) {
        Ok(mut r) => {
            redact_profile(&mut r.profile);
            r.to_yaml()
        }
        Err(_) => {
            format!("# withheld: this profile did not render, and may hold {REDACTED} values\n")
        }
    }
}

/// Replaces every workload's env values in place.
pub fn redact_profile(p: &mut backroom_profiles::Profile) {
    for w in &mut p.workloads {
        if let Workload::Container(c) = w {
            for v in c.env.values_mut() {
                *v = REDACTED.to_string();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn env_values_are_hidden_and_names_kept() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../profiles/fleet/stores/store-0042.yaml");
        let r = backroom_profiles::render_file(&dir).unwrap();
        let yaml = r.to_yaml();
        let secret = r
            .profile
            .workloads
            .iter()
            .find_map(|w| match w {
                Workload::Container(c) => c.env.values().next().cloned(),
                Workload::Vm(_) => None,
            })
            .expect("the sample store has a workload with env");
        assert!(yaml.contains(&secret));
        let hidden = profile_yaml("central:store-0042", &yaml);
        assert!(!hidden.contains(&secret), "{hidden}");
        assert!(hidden.contains(REDACTED));
    }
}
