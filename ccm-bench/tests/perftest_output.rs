//! Host tests: the perftest output parser on output captured from perftest 4.5+0.17 in the rxe
//! lab guest (rxe0 <-> rxe1), and the stable JSON field names of a run record.
//! Nothing here asserts a speed: the figures checked are the ones printed in the captures.

use ccm_bench::perftest::{parse_bw, parse_lat};
use ccm_bench::report::{BandwidthFigures, BandwidthRun, LatencyFigures, LatencyRun};
use ccm_bench::stats::{from_us_samples, summarize};

fn data(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn send_lat_server_report() {
    let r = parse_lat(&data("ib_send_lat_server.txt")).expect("parsed");
    assert_eq!((r.bytes, r.iters), (2, 1000));
    assert_eq!(r.t_min_us, 21.27);
    assert_eq!(r.t_max_us, 12165.34);
    assert_eq!(r.t_typical_us, 22.58);
    assert_eq!(r.t_avg_us, 321.92);
    assert_eq!(r.t_stdev_us, 1245.52);
    assert_eq!(r.p99_us, 6098.45);
    assert_eq!(r.p999_us, 12165.34);
    assert!(r.samples.is_empty());
    assert!(r.is_valid());
}

#[test]
fn failed_cpu_frequency_estimate_is_parsed_but_invalid() {
    // The client printed "Correlation coefficient r^2: ... < 0.9" and then inf/-nan figures.
    for f in ["ib_send_lat_client_inf.txt", "ib_write_lat_server_inf.txt"] {
        let r = parse_lat(&data(f)).expect("parsed");
        assert_eq!((r.bytes, r.iters), (2, 1000), "{f}");
        assert!(r.t_typical_us.is_infinite(), "{f}");
        assert!(r.t_stdev_us.is_nan(), "{f}");
        assert!(!r.is_valid(), "{f}");
    }
}

#[test]
fn write_lat_client_report() {
    let r = parse_lat(&data("ib_write_lat_client.txt")).expect("parsed");
    assert_eq!(r.t_typical_us, 18.81);
    assert_eq!(r.p99_us, 5879.87);
    assert_eq!(r.p999_us, 15443.12);
    assert!(r.is_valid());
}

#[test]
fn histogram_samples_of_dash_h() {
    let r = parse_lat(&data("ib_send_lat_H_client.txt")).expect("parsed");
    // 1000 iterations: 999 round trips, perftest drops its 2 largest.
    assert_eq!(r.samples.len(), 997);
    assert!(r.samples.windows(2).all(|w| w[0] <= w[1]), "sorted");
    // Samples are printed with %g, the report with %.2f; t_max is the sample after the last
    // one printed.
    assert!((r.samples[0] - r.t_min_us).abs() < 0.01);
    assert!(*r.samples.last().unwrap() <= r.t_max_us);
    assert_eq!(r.t_typical_us, 18.24);
    assert_eq!(r.p99_us, 4028.91);
    // Our HdrHistogram of its samples agrees with its own median within HDR precision.
    let s = summarize(&from_us_samples(&r.samples));
    assert!(
        (s.p50_us - r.t_typical_us).abs() / r.t_typical_us < 0.01,
        "{s:?}"
    );
}

#[test]
fn write_bw_report() {
    let r = parse_bw(&data("ib_write_bw_client.txt")).expect("parsed");
    assert_eq!((r.bytes, r.iters), (65536, 500));
    assert_eq!(r.bw_peak_mb_s, 33.66);
    assert_eq!(r.bw_avg_mb_s, 30.27);
    assert_eq!(r.msg_rate_mpps, 0.000484);
    assert!(r.is_valid());
    assert!(parse_lat(&data("ib_write_bw_client.txt")).is_none());
    assert!(parse_bw(&data("ib_send_lat_server.txt")).is_none());
}

fn lat(tool: &str, p50: f64, p99: f64) -> LatencyFigures {
    LatencyFigures {
        tool: tool.into(),
        p50_us: p50,
        p90_us: Some(p50),
        p99_us: p99,
        p999_us: p99,
        max_us: p99,
        min_us: p50,
        avg_us: p50,
        samples: 10,
        source: None,
    }
}

#[test]
fn latency_json_field_names() {
    let run = LatencyRun {
        bench: "latency",
        op: "send".into(),
        size: 2,
        iters: 11,
        rep: 1,
        device: "rxe0".into(),
        peer_device: "rxe1".into(),
        ours: lat("ccm-verbs", 10.0, 20.0),
        peer: None,
        ratio_p50: None,
        ratio_p99: None,
    }
    .with_peer(lat("ib_send_lat", 8.0, 40.0));
    let v: serde_json::Value = serde_json::to_value(&run).unwrap();
    for side in ["ours", "peer"] {
        for k in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
            assert!(v[side][k].is_number(), "{side}.{k} in {v}");
        }
    }
    assert_eq!(v["ratio_p50"], 1.25);
    assert_eq!(v["ratio_p99"], 0.5);
    assert!(v.get("ratio_bw").is_none());
}

#[test]
fn bandwidth_json_field_names() {
    let fig = |tool: &str, mb: f64| BandwidthFigures {
        tool: tool.into(),
        mb_per_s: mb,
        msg_rate_mpps: 0.0,
        messages: 1,
    };
    let run = BandwidthRun {
        bench: "bandwidth",
        op: "write".into(),
        size: 65536,
        iters: 1,
        tx_depth: 128,
        rep: 1,
        device: "rxe0".into(),
        peer_device: "rxe1".into(),
        ours: fig("ccm-verbs", 30.0),
        peer: None,
        ratio_bw: None,
    }
    .with_peer(fig("ib_write_bw", 40.0));
    let v: serde_json::Value = serde_json::to_value(&run).unwrap();
    assert_eq!(v["ours"]["mb_per_s"], 30.0);
    assert_eq!(v["peer"]["mb_per_s"], 40.0);
    assert_eq!(v["ratio_bw"], 0.75);
}
