//! The NVRAM mirror simulation over a fixed set of seeds (more with `ccm-sim-mirror --seeds N`).

/// Seeds that once failed, kept as regressions.
const FOUND: &[u64] = &[
    2652, // the writer killed in its very first append (magic written, LSN not yet), no checkpoint yet
];

#[test]
fn three_hundred_mirror_seeds_keep_every_invariant() {
    for &seed in (0..300).collect::<Vec<u64>>().iter().chain(FOUND) {
        if let Err(f) = ccm_core::sim_mirror::run_seed(seed) {
            panic!("{f}");
        }
    }
}
