//! Writes a synthetic fleet folder: the sample fleet's bases and region, and N stores that
//! each set their own values and exceptions, like a real chain's repository.

use std::io;
use std::path::Path;

/// Copies `sample` (a fleet folder) into `dir`, then writes `n` store files under `stores/`,
/// alternating coffee shops and grocery stores, every tenth one with an exception.
pub fn generate(sample: &Path, dir: &Path, n: usize) -> io::Result<()> {
    for sub in ["base", "regions"] {
        std::fs::create_dir_all(dir.join(sub))?;
        for e in std::fs::read_dir(sample.join(sub))? {
            let p = e?.path();
            if let Some(name) = p.file_name() {
                std::fs::copy(&p, dir.join(sub).join(name))?;
            }
        }
    }
    let stores = dir.join("stores");
    std::fs::create_dir_all(&stores)?;
    for i in 0..n {
        let octet = 1 + i % 250;
        let grocery = i % 2 == 1;
        let base = if grocery { "grocery" } else { "coffee-shop" };
        let mut text = format!(
            "# generated store {i}\nextends: [../base/{base}.yaml, ../regions/us-west.yaml]\n\
             metadata:\n  labels: {{ store: \"{i:05}\" }}\nvalues:\n  store_octet: \"{octet}\"\n"
        );
        if i % 10 == 0 {
            text.push_str(
                "network:\n  segments:\n    - { name: cctv, remove: true }\n  firewall:\n    allow:\n      \
                 - { name: cctv-to-nvr, remove: true }\nworkloads:\n  - { name: nvr, remove: true }\n",
            );
        }
        std::fs::write(stores.join(format!("store-{i:05}.yaml")), text)?;
    }
    Ok(())
}
