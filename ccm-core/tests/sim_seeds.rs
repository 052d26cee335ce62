//! The deterministic simulation over a fixed set of seeds (more with `ccm-sim --seeds N`).

#[test]
fn three_hundred_seeds_keep_every_invariant() {
    for seed in 0..300 {
        if let Err(f) = ccm_core::sim::run_seed(seed) {
            panic!("{f}");
        }
    }
}

#[test]
fn a_seed_replays_identically() {
    let a = ccm_core::sim::run_seed(4242).expect("passes");
    let b = ccm_core::sim::run_seed(4242).expect("passes");
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert!(a.events > 0);
}
