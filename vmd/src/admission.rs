//! Whether the VMs of a profile fit the node: their cpus, and their memory plus QEMU's own
//! overhead per VM, against the node's capacity (the profile's `node.capacity`, or this
//! machine's real cpus and memory) minus `node.reserved` minus what the profile's containers
//! ask for. Pure, so the refusal is tested without a node.

use backroom_profiles::Profile;

use crate::error::{Error, Result};

/// QEMU's own memory next to a guest's (device emulation, page tables, the process itself).
pub const DEFAULT_OVERHEAD: u64 = 256 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    /// Thousandths of a core.
    pub cpu_millis: u64,
    pub memory: u64,
}

impl NodeFacts {
    /// This machine: online cpus and MemTotal.
    pub fn of_this_machine() -> NodeFacts {
        let cpus = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kib| kib.parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024;
        NodeFacts { cpu_millis: cpus * 1000, memory: mem }
    }
}

/// Whole cpus a VM gets (a VM's cpus are whole cores; a fraction rounds up).
pub fn vm_vcpus(cpu_millis: u32) -> u32 {
    cpu_millis.div_ceil(1000).max(1)
}

fn gib(b: u64) -> String {
    let g = b as f64 / (1u64 << 30) as f64;
    format!("{g:.2} GiB")
}

/// `Err` says what does not fit and by how much.
pub fn admit(profile: &Profile, facts: NodeFacts, overhead: u64) -> Result<()> {
    let (cap_cpu, cap_mem, whence) = match profile.node.capacity {
        Some(c) => (u64::from(c.cpus.millis()), c.memory.bytes(), "the profile's node.capacity"),
        None => (facts.cpu_millis, facts.memory, "this node"),
    };
    let reserved = profile.node.reserved;
    let (mut cont_cpu, mut cont_mem) = (0u64, 0u64);
    for c in profile.containers() {
        if let Some(l) = c.resources {
            cont_cpu += l.cpus.map_or(0, |x| u64::from(x.millis()));
            cont_mem += l.memory.map_or(0, |x| x.bytes());
        }
    }
    let (mut vm_cpu, mut vm_mem, mut n) = (0u64, 0u64, 0u64);
    for v in profile.vms() {
        vm_cpu += u64::from(vm_vcpus(v.cpus.millis())) * 1000;
        vm_mem += v.memory.bytes() + overhead;
        n += 1;
    }
    if n == 0 {
        return Ok(());
    }
    let free_cpu = cap_cpu.saturating_sub(u64::from(reserved.cpus.millis()) + cont_cpu);
    let free_mem = cap_mem.saturating_sub(reserved.memory.bytes() + cont_mem);
    let mut problems = Vec::new();
    if vm_cpu > free_cpu {
        problems.push(format!(
            "{n} VM(s) need {} cpus but {whence} leaves {} for VMs (capacity {}, reserved {}, containers {}): {} too many",
            vm_cpu as f64 / 1000.0,
            free_cpu as f64 / 1000.0,
            cap_cpu as f64 / 1000.0,
            f64::from(reserved.cpus.millis()) / 1000.0,
            cont_cpu as f64 / 1000.0,
            (vm_cpu - free_cpu) as f64 / 1000.0
        ));
    }
    if vm_mem > free_mem {
        problems.push(format!(
            "{n} VM(s) need {} of memory (with {} of QEMU overhead each) but {whence} leaves {} \
             (capacity {}, reserved {}, containers {}): {} short",
            gib(vm_mem),
            gib(overhead),
            gib(free_mem),
            gib(cap_mem),
            gib(reserved.memory.bytes()),
            gib(cont_mem),
            gib(vm_mem - free_mem)
        ));
    }
    if problems.is_empty() { Ok(()) } else { Err(Error::Admission(problems.join("; "))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(capacity: &str, vms: &[(&str, u32, &str)]) -> Profile {
        let mut t = format!(
            "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {{name: t}}\n\
             node: {{reserved: {{cpus: 1, memory: 2Gi}}{capacity}}}\nworkloads:\n"
        );
        for (name, cpus, mem) in vms {
            t.push_str(&format!(
                "  - {{name: {name}, kind: vm, cpus: {cpus}, memory: {mem}, boot: {{kernel: {{kernel: /k}}}}}}\n"
            ));
        }
        t.push_str("  - {name: web, kind: container, image: r/w:1, resources: {cpus: 0.5, memory: 512Mi}}\n");
        backroom_profiles::render_str("t.yaml", &t).unwrap().profile
    }

    const NODE: NodeFacts = NodeFacts { cpu_millis: 4000, memory: 8 << 30 };

    #[test]
    fn fits() {
        admit(&profile("", &[("a", 2, "4Gi")]), NODE, DEFAULT_OVERHEAD).unwrap();
    }

    #[test]
    fn refuses_memory_with_overhead_and_says_by_how_much() {
        // 8 - 2 reserved - 0.5 container = 5.5 GiB; 2 VMs of 2.5 GiB + 0.25 each = 5.5: fits.
        let p = profile("", &[("a", 1, "2560Mi"), ("b", 1, "2560Mi")]);
        admit(&p, NODE, DEFAULT_OVERHEAD).unwrap();
        let e = admit(&p, NODE, DEFAULT_OVERHEAD + (1 << 20)).unwrap_err().to_string();
        assert!(e.contains("memory") && e.contains("short"), "{e}");
        assert!(e.contains("this node"), "{e}");
    }

    #[test]
    fn refuses_cpus_and_uses_the_profile_capacity_when_given() {
        let p = profile("", &[("a", 1, "1Gi")]);
        let small = NodeFacts { cpu_millis: 2000, memory: 8 << 30 };
        let e = admit(&p, small, DEFAULT_OVERHEAD).unwrap_err().to_string();
        assert!(e.contains("1 cpus") && e.contains("0.5 too many"), "{e}");
        let p = profile(", capacity: {cpus: 4, memory: 64Gi}", &[("a", 1, "1Gi")]);
        admit(&p, small, DEFAULT_OVERHEAD).unwrap();
    }
}
