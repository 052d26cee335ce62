//! Latency statistics with HdrHistogram: summaries (p50, p90, p99, p99.9, max) and `.hgrm`
//! percentile-distribution files (the text format of HdrHistogram's
//! `outputPercentileDistribution`, values in microseconds).

use hdrhistogram::Histogram;
use std::io::Write;
use std::path::Path;

/// Highest recordable latency: 60 s, in nanoseconds.
const MAX_NS: u64 = 60_000_000_000;

/// A histogram of one-way latencies in nanoseconds (3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("static histogram bounds are valid")
}

/// Builds the one-way latency histogram from the initiator's post timestamps (ticks), as
/// perftest does: sample i = `(ts[i+1] - ts[i]) / 2`, one round trip per pair of posts.
pub fn one_way_from_post_ticks(ts: &[u64], ticks_per_ns: f64) -> Histogram<u64> {
    let mut h = new_histogram();
    for w in ts.windows(2) {
        let rtt_ns = w[1].wrapping_sub(w[0]) as f64 / ticks_per_ns;
        let one_way = (rtt_ns / 2.0).round().clamp(1.0, MAX_NS as f64) as u64;
        h.record(one_way).expect("value clamped into range");
    }
    h
}

/// Builds a histogram from one-way latencies already in microseconds (perftest's `-H` samples).
pub fn from_us_samples(samples: &[f64]) -> Histogram<u64> {
    let mut h = new_histogram();
    for &us in samples {
        if us.is_finite() {
            let ns = (us * 1000.0).round().clamp(1.0, MAX_NS as f64) as u64;
            h.record(ns).expect("value clamped into range");
        }
    }
    h
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
    /// Smallest sample.
    pub min_us: f64,
    /// Mean.
    pub avg_us: f64,
    /// Number of samples.
    pub samples: u64,
}

/// A [`Summary`] as JSON (microseconds).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SummaryJson {
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
    /// Number of samples.
    pub samples: u64,
}

impl From<&Summary> for SummaryJson {
    fn from(s: &Summary) -> Self {
        SummaryJson {
            p50_us: s.p50_us,
            p90_us: s.p90_us,
            p99_us: s.p99_us,
            p999_us: s.p999_us,
            max_us: s.max_us,
            samples: s.samples,
        }
    }
}

/// Summarises a nanosecond histogram.
pub fn summarize(h: &Histogram<u64>) -> Summary {
    let us = |ns: u64| ns as f64 / 1000.0;
    Summary {
        p50_us: us(h.value_at_quantile(0.50)),
        p90_us: us(h.value_at_quantile(0.90)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
        min_us: us(h.min()),
        avg_us: h.mean() / 1000.0,
        samples: h.len(),
    }
}

/// Writes `h` (nanoseconds) as an HdrHistogram percentile distribution in microseconds.
pub fn write_hgrm(h: &Histogram<u64>, mut out: impl Write) -> std::io::Result<()> {
    const SCALE: f64 = 1000.0; // ns -> us
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value = h.highest_equivalent(v.value_iterated_to()) as f64 / SCALE;
        if q < 1.0 {
            writeln!(
                out,
                "{value:12.3} {q:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - q)
            )?;
        } else {
            writeln!(out, "{value:12.3} {q:2.12} {total:10}")?;
        }
    }
    writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / SCALE,
        h.stdev() / SCALE
    )?;
    writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / SCALE,
        h.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_bucket_count(h.sigfig())
    )?;
    Ok(())
}

/// HdrHistogram's sub-bucket count for a precision of `sigfig` significant digits.
fn sub_bucket_count(sigfig: u8) -> u64 {
    (2 * 10u64.pow(sigfig as u32)).next_power_of_two()
}

/// Writes `h` to `dir/name.hgrm`, creating `dir` if needed.
pub fn write_hgrm_file(h: &Histogram<u64>, dir: &Path, name: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let f = std::fs::File::create(dir.join(format!("{name}.hgrm")))?;
    let mut w = std::io::BufWriter::new(f);
    write_hgrm(h, &mut w)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_timestamps_give_half_round_trips() {
        // 1 tick per ns; posts 10 us apart: round trip 10 us, one-way 5 us.
        let ts: Vec<u64> = (0..101).map(|i| 1_000 + i * 10_000).collect();
        let h = one_way_from_post_ticks(&ts, 1.0);
        let s = summarize(&h);
        assert_eq!(s.samples, 100);
        assert!((s.p50_us - 5.0).abs() < 0.01, "{s:?}");
        assert!((s.max_us - 5.0).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn hgrm_has_header_and_footer() {
        let h = from_us_samples(&[1.0, 2.0, 3.0, 4.0, f64::INFINITY]);
        let mut out = Vec::new();
        write_hgrm(&h, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("       Value     Percentile TotalCount"));
        assert!(text.contains("Total count    =            4]"), "{text}");
    }
}
