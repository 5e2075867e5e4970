//! The handoff latency distribution of every contender as an SVG chart of CDFs.

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use crate::stats::Latencies;

/// Matplotlib's "tab10", which stays apart on white and in print.
const COLORS: [RGBColor; 8] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
];

/// Draws one CDF per `(name, latencies)` on a log-scale time axis, with a mark at `two_rtt`.
pub(crate) fn handoff_cdf(
    path: &Path,
    series: &mut [(String, Latencies)],
    two_rtt: Duration,
    subtitle: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let micros = |nanos: u64| nanos as f64 / 1_000.0;
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for (_, latencies) in series.iter_mut() {
        let sorted = latencies.sorted_nanos();
        if let (Some(&first), Some(&last)) = (sorted.first(), sorted.last()) {
            lo = lo.min(micros(first));
            hi = hi.max(micros(last));
        }
    }
    if lo > hi {
        return Err("no handoff latencies to plot".into());
    }
    let lo = (lo / 1.5).max(1.0).min(two_rtt.as_secs_f64() * 1e6 / 1.5);
    let hi = hi * 1.5;

    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Forced handoff latency, release() call → next holder's lock ({subtitle})"),
            ("sans-serif", 18),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("handoff latency, µs (log scale)")
        .y_desc("fraction of handoffs ≤ x")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .draw()?;

    let mark = two_rtt.as_secs_f64() * 1e6;
    let grey = RGBColor(0x55, 0x55, 0x55);
    chart
        .draw_series(DashedLineSeries::new(
            [(mark, 0.0), (mark, 1.0)],
            6,
            4,
            grey.stroke_width(1),
        ))?
        .label(format!("2·RTT (PING) = {mark:.0} µs"))
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], grey));

    for (index, (name, latencies)) in series.iter_mut().enumerate() {
        let sorted = latencies.sorted_nanos();
        if sorted.is_empty() {
            continue;
        }
        let count = sorted.len();
        let step = (count / 400).max(1);
        let mut points: Vec<(f64, f64)> = (0..count)
            .step_by(step)
            .map(|i| (micros(sorted[i]), (i + 1) as f64 / count as f64))
            .collect();
        points.push((micros(sorted[count - 1]), 1.0));
        let color = COLORS[index % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(format!("{name} (n = {count})"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}
