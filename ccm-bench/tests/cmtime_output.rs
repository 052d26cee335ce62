//! Host tests: the `cmtime` (rdmacm-utils 44.0) client report parser, on output captured in the rxe lab guest
//! (`cmtime -s 10.0.0.2 -b 10.0.0.1 -c N`, rxe0 <-> rxe1). No speed is asserted: the figures checked are the
//! ones printed in the captures.

use ccm_bench::bringup::{parse_cmtime, SETUP_STEPS};

fn data(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn sixteen_connections_report_every_step() {
    let r = parse_cmtime(&data("cmtime_client_16.txt")).expect("a step table");
    let names: Vec<&str> = r.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "create id",
            "bind addr",
            "resolve addr",
            "resolve route",
            "create qp",
            "connect",
            "disconnect",
            "destroy"
        ]
    );
    let connect = &r.steps[5];
    assert_eq!(connect.total_ms, 103.83);
    assert_eq!(connect.max_ms, 94.69);
    assert_eq!(connect.min_us, 59483.00);
    assert_eq!(connect.us_per_conn, 6489.38);
    assert_eq!(r.total_ms("resolve addr"), Some(10.25));
}

#[test]
fn setup_time_is_the_sum_of_the_steps_before_disconnect() {
    let r = parse_cmtime(&data("cmtime_client_1.txt")).expect("a step table");
    let want = 0.13 + 2.77 + 0.96 + 0.85 + 9.07 + 9.82;
    let got = r.setup_ms().expect("every setup step printed");
    assert!((got - want).abs() < 1e-9, "{got} != {want}");
    assert_eq!(SETUP_STEPS.len(), 6);
}

#[test]
fn progress_lines_alone_are_no_report() {
    assert_eq!(parse_cmtime("creating id\nbinding source address\n"), None);
    assert_eq!(parse_cmtime(""), None);
}

#[test]
fn a_report_missing_a_setup_step_has_no_setup_time() {
    let text = "step              total ms     max ms     min us  us / conn\n\
                create id    :        0.13       0.09      93.00     129.00\n\
                connect      :        9.82       9.74    9742.00    9825.00\n";
    let r = parse_cmtime(text).expect("a step table");
    assert_eq!(r.steps.len(), 2);
    assert_eq!(r.total_ms("connect"), Some(9.82));
    assert_eq!(r.setup_ms(), None);
}

#[test]
fn malformed_rows_are_skipped() {
    let text = "step              total ms     max ms     min us  us / conn\n\
                create id    :        0.13       0.09\n\
                bogus line without a colon\n\
                connect      :        9.82       9.74    9742.00    9825.00\n";
    let r = parse_cmtime(text).expect("a step table");
    assert_eq!(r.steps.len(), 1);
    assert_eq!(r.steps[0].name, "connect");
}
