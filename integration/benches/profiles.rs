//! Profile engine: validate a generated fleet of 1,000 stores and print stores per second,
//! against a baseline measured in the same run: only parsing the same files' YAML (every
//! store with its layers), with no merging, validation or rendering.
//!
//! The verdict is a ratio against that baseline, so it means the same on a fast or a slow
//! machine: validating must run at least at [`GOAL_RATIO`] of the parse-only rate. (Issue 2
//! asked for 5,000 stores/s on a 2-core machine where parsing alone ran at about 5,600 stores/s:
//! 0.9 of the baseline.)

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backroom_integration::genfleet;

const STORES: usize = 1000;
const ROUNDS: usize = 5;
/// Validated stores per second over parse-only stores per second, at least.
const GOAL_RATIO: f64 = 0.9;

fn best_of<F: FnMut() -> usize>(mut f: F) -> (Duration, usize) {
    let mut best = Duration::MAX;
    let mut n = 0;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        n = f();
        best = best.min(t.elapsed());
    }
    (best, n)
}

fn main() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/fleet");
    let dir = tempfile::tempdir().expect("temporary folder");
    genfleet::generate(&sample, dir.path(), STORES).expect("generating the fleet");

    // Baseline: read and parse each store file and the layers it names, as plain YAML.
    let (parse_time, parsed) = best_of(|| {
        let mut n = 0;
        for f in backroom_profiles::store_files(dir.path()).expect("stores") {
            let store = std::fs::read_to_string(&f).expect("read");
            let base = if store.contains("grocery") { "grocery" } else { "coffee-shop" };
            for (name, text) in [
                ("store", store.clone()),
                (
                    "base",
                    std::fs::read_to_string(dir.path().join(format!("base/{base}.yaml")))
                        .expect("read"),
                ),
                (
                    "region",
                    std::fs::read_to_string(dir.path().join("regions/us-west.yaml")).expect("read"),
                ),
            ] {
                backroom_profiles::yaml::parse(&Arc::from(name), &text).expect("parses");
            }
            n += 1;
        }
        n
    });

    let (full_time, valid) = best_of(|| {
        let stores = backroom_profiles::render_fleet(dir.path()).expect("fleet");
        let bad: Vec<_> = stores.iter().filter(|s| s.result.is_err()).collect();
        assert!(
            bad.is_empty(),
            "generated stores must be valid: {:?}",
            bad.first().map(|s| &s.result)
        );
        stores.len()
    });

    let per_sec = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    println!("profile engine, {STORES} generated stores, best of {ROUNDS} rounds:");
    println!(
        "  baseline: parse YAML of each store + its layers   {:>9.0} stores/s  ({:?})",
        per_sec(parsed, parse_time),
        parse_time
    );
    println!(
        "  validate fleet (layer, check, render, revision)   {:>9.0} stores/s  ({:?})",
        per_sec(valid, full_time),
        full_time
    );
    let ratio = per_sec(valid, full_time) / per_sec(parsed, parse_time);
    println!(
        "  verdict: validation runs at {ratio:.2}x the parse-only baseline's stores/s \
         (goal: at least {GOAL_RATIO}x): {}",
        if ratio >= GOAL_RATIO { "met" } else { "NOT met" }
    );
}
