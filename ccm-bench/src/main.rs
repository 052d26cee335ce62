//! ccm-bench: benchmarks of ccm against perftest.
fn main() {}
