//! Admission against the node's real hardware, for profiles that give no `node.capacity`
//! (validation already checks the profiles that do).

use std::fmt;

use backroom_profiles::{Cpus, Profile, Size};

/// What this machine has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    pub cpus_millis: u64,
    pub memory_bytes: u64,
}

/// The facts of the machine nodeagent runs on.
pub fn facts() -> NodeFacts {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024);
    NodeFacts { cpus_millis: cpus * 1000, memory_bytes: memory }
}

/// What a profile asks for beyond what the node has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shortfall {
    Cpus { asked_millis: u64, room_millis: u64, reserved: Cpus },
    Memory { asked: u64, room: u64, reserved: Size },
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shortfall::Cpus { asked_millis, room_millis, reserved } => write!(
                f,
                "the workloads ask for {} cpus but this node has {} after the {reserved} reserved ({} too many)",
                millis(*asked_millis),
                millis(*room_millis),
                millis(asked_millis - room_millis)
            ),
            Shortfall::Memory { asked, room, reserved } => write!(
                f,
                "the workloads ask for {} of memory but this node has {} after the {reserved} reserved ({} too much)",
                Size::from_bytes(*asked),
                Size::from_bytes(*room),
                Size::from_bytes(asked - room)
            ),
        }
    }
}

/// Why a profile does not fit this node: every shortfall.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct Refusal(pub Vec<Shortfall>);

/// Refuses a profile whose workloads do not fit the node minus what it reserves.
pub fn admit(profile: &Profile, facts: &NodeFacts) -> Result<(), Refusal> {
    if profile.node.capacity.is_some() {
        return Ok(());
    }
    let reserved = profile.node.reserved;
    let cpus: u64 = profile.workloads.iter().map(|w| u64::from(w.cpus().millis())).sum();
    let memory: u64 = profile.workloads.iter().map(|w| w.memory().bytes()).sum();
    let cpu_room = facts.cpus_millis.saturating_sub(u64::from(reserved.cpus.millis()));
    let mem_room = facts.memory_bytes.saturating_sub(reserved.memory.bytes());
    let mut short = Vec::new();
    if cpus > cpu_room {
        short.push(Shortfall::Cpus {
            asked_millis: cpus,
            room_millis: cpu_room,
            reserved: reserved.cpus,
        });
    }
    if memory > mem_room {
        short.push(Shortfall::Memory { asked: memory, room: mem_room, reserved: reserved.memory });
    }
    if short.is_empty() { Ok(()) } else { Err(Refusal(short)) }
}

fn millis(m: u64) -> String {
    format!("{}", m as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(cap: &str, mem: &str) -> Profile {
        let text = format!(
            "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {{name: t}}\n{cap}workloads:\n  - {{name: a, kind: container, image: r/a:1, resources: {{cpus: 1.5, memory: {mem}}}}}\n"
        );
        backroom_profiles::render_str("t.yaml", &text).unwrap().profile
    }

    #[test]
    fn the_real_hardware_decides_without_capacity() {
        let facts = NodeFacts { cpus_millis: 4000, memory_bytes: 8 << 30 };
        assert!(admit(&profile("", "1Gi"), &facts).is_ok());
        let e = admit(&profile("", "7Gi"), &facts).unwrap_err().to_string();
        assert!(e.contains("1Gi too much"), "{e}");
        let small = NodeFacts { cpus_millis: 2000, memory_bytes: 8 << 30 };
        let e = admit(&profile("node: {reserved: {cpus: 1, memory: 1Gi}}\n", "1Gi"), &small)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1.5 cpus") && e.contains("0.5 too many"), "{e}");
        let real = facts_is_sane();
        assert!(real);
    }

    fn facts_is_sane() -> bool {
        let f = facts();
        f.cpus_millis >= 1000 && f.memory_bytes > 0
    }
}
