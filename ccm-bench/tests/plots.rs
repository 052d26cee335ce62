//! Host tests: the SVG plots are complete documents with one curve per series, placed by their data.

use ccm_bench::plot::{
    nice_step, percentile_chart, percentile_points, timeline_chart, Series, TimelinePanel,
};
use ccm_bench::stats::from_us_samples;

#[test]
fn percentile_points_follow_the_histogram() {
    let samples: Vec<f64> = (1..=1000).map(|i| i as f64).collect();
    let pts = percentile_points(&from_us_samples(&samples));
    assert_eq!(pts[0].0, 1.0, "starts at the 0th percentile");
    let p90 = pts
        .iter()
        .find(|p| (p.0 - 10.0).abs() < 1e-6)
        .expect("90 %");
    assert!((p90.1 - 900.0).abs() < 1.0, "{p90:?}");
    // 1000 samples carry no 99.99th percentile.
    assert!(pts.iter().all(|p| p.0 <= 1000.0 + 1e-6));
    assert!(pts.windows(2).all(|w| w[0].1 <= w[1].1), "monotonic");
}

#[test]
fn a_percentile_chart_has_every_series() {
    let h = from_us_samples(&[10.0, 20.0, 30.0, 400.0]);
    let series = vec![
        Series {
            label: "ours <64 B>".into(),
            color: "#1f77b4".into(),
            dashed: false,
            points: percentile_points(&h),
        },
        Series {
            label: "peer".into(),
            color: "#d62728".into(),
            dashed: true,
            points: percentile_points(&h),
        },
    ];
    let svg = percentile_chart("title & more", &series);
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 2);
    assert_eq!(
        svg.matches("stroke-dasharray").count(),
        2,
        "curve and legend"
    );
    assert!(svg.contains("ours &lt;64 B&gt;") && svg.contains("title &amp; more"));
    assert!(svg.contains(">99.9%<"));
}

#[test]
fn a_timeline_puts_the_cut_at_zero() {
    let points: Vec<(f64, f64)> = [2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 3.0, 2.0]
        .iter()
        .enumerate()
        .map(|(i, v)| (i as f64 - 3.0, *v))
        .collect();
    let panel = TimelinePanel {
        label: "cut 1 down ic1".into(),
        points,
        marks: vec![(1.5, "d".into()), (3.0, "r".into())],
    };
    let svg = timeline_chart("t", &[panel.clone(), panel]);
    assert_eq!(svg.matches("<polygon").count(), 2, "one panel per cut");
    assert_eq!(
        svg.matches("stroke-dasharray").count(),
        4,
        "two marks per panel"
    );
    assert!(svg.contains(">0<"), "a tick at the cut");
    assert!(!svg.contains(">-0<"));
    assert!(svg.contains("cut 1 down ic1"));
}

#[test]
fn steps_are_one_two_or_five() {
    assert_eq!(nice_step(0.7), 1.0);
    assert_eq!(nice_step(1.5), 2.0);
    assert_eq!(nice_step(37.0), 50.0);
    assert_eq!(nice_step(120.0), 200.0);
    assert_eq!(nice_step(0.0), 1.0);
}
