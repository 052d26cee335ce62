//! Plots as plain SVG (written here, no plotting crate): latency percentile curves of ours next to the
//! peer tool, and the failover timeline (entries completed per millisecond around each cut).

use hdrhistogram::Histogram;
use std::fmt::Write;

/// One curve.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Stroke colour (any SVG colour).
    pub color: String,
    /// Dashed stroke (the peer tool's curves).
    pub dashed: bool,
    /// Points in data coordinates.
    pub points: Vec<(f64, f64)>,
}

/// How an axis maps data to the plot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    /// Linear.
    Linear,
    /// Base-10 logarithm (values must be positive).
    Log,
}

impl Scale {
    fn f(self, v: f64) -> f64 {
        match self {
            Scale::Linear => v,
            Scale::Log => v.max(1e-12).log10(),
        }
    }
}

/// An axis: its label, scale, range and tick marks `(value, text)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    /// Label.
    pub label: String,
    /// Scale.
    pub scale: Scale,
    /// Smallest value shown.
    pub min: f64,
    /// Largest value shown.
    pub max: f64,
    /// Tick marks.
    pub ticks: Vec<(f64, String)>,
}

/// Colours for curves, in turn.
pub const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart of `series` as an SVG document.
pub fn line_chart(title: &str, x: &Axis, y: &Axis, series: &[Series]) -> String {
    const W: f64 = 820.0;
    const H: f64 = 480.0;
    const L: f64 = 80.0;
    const R: f64 = 220.0;
    const T: f64 = 40.0;
    const B: f64 = 60.0;
    let (pw, ph) = (W - L - R, H - T - B);
    let sx = |v: f64| {
        let (a, b) = (x.scale.f(x.min), x.scale.f(x.max));
        L + (x.scale.f(v.clamp(x.min, x.max)) - a) / (b - a) * pw
    };
    let sy = |v: f64| {
        let (a, b) = (y.scale.f(y.min), y.scale.f(y.max));
        T + ph - (y.scale.f(v.clamp(y.min, y.max)) - a) / (b - a) * ph
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        L + pw / 2.0,
        esc(title)
    );
    for (v, t) in &x.ticks {
        let px = sx(*v);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{T}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            T + ph,
            T + ph + 16.0,
            esc(t)
        );
    }
    for (v, t) in &y.ticks {
        let py = sy(*v);
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            L + pw,
            L - 6.0,
            py + 4.0,
            esc(t)
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        L + pw / 2.0,
        H - 18.0,
        esc(&x.label)
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        T + ph / 2.0,
        T + ph / 2.0,
        esc(&y.label)
    );
    for (i, c) in series.iter().enumerate() {
        let pts: Vec<String> = c
            .points
            .iter()
            .filter(|(a, b)| a.is_finite() && b.is_finite())
            .map(|&(a, b)| format!("{:.1},{:.1}", sx(a), sy(b)))
            .collect();
        let dash = if c.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.6"{dash} points="{}"/>"#,
            c.color,
            pts.join(" ")
        );
        let ly = T + 10.0 + i as f64 * 18.0;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            W - R + 12.0,
            W - R + 40.0,
            c.color,
            W - R + 46.0,
            ly + 4.0,
            esc(&c.label)
        );
    }
    s += "</svg>\n";
    s
}

/// Percentile curve points of a nanosecond histogram: `(1 / (1 - q), microseconds)` for q from 0 to
/// 99.99 % (fewer when there are too few samples for the tail).
pub fn percentile_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let n = h.len() as f64;
    (0..=40)
        .map(|k| 1.0 - 10f64.powf(-(k as f64) / 10.0))
        .filter(|q| *q <= 1.0 - 1.0 / n.max(1.0))
        .map(|q| (1.0 / (1.0 - q), h.value_at_quantile(q) as f64 / 1000.0))
        .collect()
}

/// Decade ticks `10^k` between `min` and `max` (values), labelled by `label`.
pub fn decade_ticks(min: f64, max: f64, label: impl Fn(f64) -> String) -> Vec<(f64, String)> {
    let mut v = Vec::new();
    let mut k = min.max(1e-12).log10().floor() as i32;
    while 10f64.powi(k) <= max * 1.0001 {
        let t = 10f64.powi(k);
        if t >= min * 0.9999 {
            v.push((t, label(t)));
        }
        k += 1;
    }
    v
}

/// Latency percentile curves (ours solid, peer dashed): x = percentile, log scale; y = microseconds, log.
pub fn percentile_chart(title: &str, series: &[Series]) -> String {
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (lo, hi) = ys.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo <= hi && lo > 0.0 {
        (
            10f64.powf(lo.log10().floor()),
            10f64.powf(hi.log10().ceil()),
        )
    } else {
        (1.0, 10.0)
    };
    let x = Axis {
        label: "percentile".into(),
        scale: Scale::Log,
        min: 1.0,
        max: 10_000.0,
        ticks: [
            (1.0, "0%"),
            (10.0, "90%"),
            (100.0, "99%"),
            (1000.0, "99.9%"),
            (10_000.0, "99.99%"),
        ]
        .iter()
        .map(|(v, t)| (*v, t.to_string()))
        .collect(),
    };
    let y = Axis {
        label: "latency, microseconds".into(),
        scale: Scale::Log,
        min: lo,
        max: hi,
        ticks: decade_ticks(lo, hi, |t| format!("{t}")),
    };
    line_chart(title, &x, &y, series)
}

/// One cut of the failover timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct TimelinePanel {
    /// The panel's label (cut number, kind, link).
    pub label: String,
    /// `(ms from the cut, entries durable per ms)`.
    pub points: Vec<(f64, f64)>,
    /// Vertical marks `(ms from the cut, text)`: detection, first entry on the new link.
    pub marks: Vec<(f64, String)>,
}

/// The failover timeline: one panel per cut, stacked on a shared time axis (ms from the cut), each the
/// entries durable per ms as a filled curve, with the cut at 0 and the panel's marks.
pub fn timeline_chart(title: &str, panels: &[TimelinePanel]) -> String {
    const W: f64 = 820.0;
    const L: f64 = 150.0;
    const R: f64 = 30.0;
    const T: f64 = 40.0;
    const PH: f64 = 56.0;
    const GAP: f64 = 8.0;
    const B: f64 = 60.0;
    let n = panels.len().max(1) as f64;
    let h = T + n * (PH + GAP) + B;
    let pts = || panels.iter().flat_map(|p| p.points.iter().copied());
    let x0 = pts().map(|p| p.0).fold(0.0f64, f64::min);
    let x1 = pts().map(|p| p.0).fold(1.0f64, f64::max);
    let top = pts().map(|p| p.1).fold(0.5f64, f64::max);
    let pw = W - L - R;
    let sx = |v: f64| L + (v.clamp(x0, x1) - x0) / (x1 - x0) * pw;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        L + pw / 2.0,
        esc(title)
    );
    let step = nice_step((x1 - x0) / 8.0);
    let bottom = T + n * (PH + GAP);
    let mut t = (x0 / step).ceil() * step;
    while t <= x1 {
        let px = sx(t);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{T}" x2="{px:.1}" y2="{:.1}" stroke="{}"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            bottom - GAP,
            if t == 0.0 { "black" } else { "#ddd" },
            bottom + 8.0,
            t + 0.0
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">ms from the cut (0); entries durable per ms, full panel height = {top:.1}</text>"#,
        L + pw / 2.0,
        bottom + 28.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">d: first link-failure decision (either node); r: first entry durable on the new link</text>"#,
        L + pw / 2.0,
        bottom + 44.0
    );
    for (i, p) in panels.iter().enumerate() {
        let y0 = T + i as f64 * (PH + GAP);
        let base = y0 + PH;
        let sy = |v: f64| base - (v / top).clamp(0.0, 1.0) * PH;
        let color = PALETTE[i % PALETTE.len()];
        let mut poly = format!("{:.1},{base:.1}", sx(x0));
        for &(x, y) in &p.points {
            let _ = write!(poly, " {:.1},{:.1}", sx(x), sy(y));
        }
        let _ = write!(poly, " {:.1},{base:.1}", sx(x1));
        let _ = writeln!(
            s,
            r##"<rect x="{L}" y="{y0:.1}" width="{pw}" height="{PH}" fill="none" stroke="#999"/><polygon points="{poly}" fill="{color}" fill-opacity="0.55" stroke="{color}" stroke-width="0.8"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            L - 8.0,
            y0 + PH / 2.0 + 4.0,
            esc(&p.label)
        );
        for (x, text) in &p.marks {
            let px = sx(*x);
            let _ = writeln!(
                s,
                r#"<line x1="{px:.1}" y1="{y0:.1}" x2="{px:.1}" y2="{base:.1}" stroke="black" stroke-dasharray="3 2"/><text x="{:.1}" y="{:.1}" font-size="10">{}</text>"#,
                px + 2.0,
                y0 + 10.0,
                esc(text)
            );
        }
    }
    s += "</svg>\n";
    s
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
pub fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|v| *v >= raw)
        .unwrap_or(10.0 * p)
}
