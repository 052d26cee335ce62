//! The NVRAM mirror simulation over a fixed set of seeds (more with `ccm-sim-mirror --seeds N`).

#[test]
fn three_hundred_mirror_seeds_keep_every_invariant() {
    for seed in 0..300 {
        if let Err(f) = ccm_core::sim_mirror::run_seed(seed) {
            panic!("{f}");
        }
    }
}
