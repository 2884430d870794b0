//! An SVG picture of a run: throughput and p50/p99 latency per interval,
//! sharing the time axis, with a dashed marker per event (e.g. "migration
//! starts").
//! Written by hand: two line charts do not need a plotting library and its
//! font handling.

use std::fmt::Write;

use crate::BenchReport;

const WIDTH: f64 = 900.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const PANEL_HEIGHT: f64 = 220.0;
const TOP: f64 = 60.0;
const GAP: f64 = 70.0;

/// A round upper bound for an axis: 1, 2 or 5 times a power of ten.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|step| step * magnitude)
        .find(|bound| *bound >= value)
        .unwrap_or(10.0 * magnitude)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One line of a panel: its points and colour.
type Line<'a> = (&'a [(f64, f64)], &'a str);

fn panel(
    out: &mut String,
    top: f64,
    title: &str,
    lines: &[Line<'_>],
    x_max: f64,
    events: &[(f64, &str)],
) {
    let plot_width = WIDTH - LEFT - RIGHT;
    let highest = lines
        .iter()
        .flat_map(|(points, _)| points.iter().map(|(_, y)| *y))
        .fold(0.0, f64::max);
    let y_max = nice_ceiling(highest * 1.05);
    let x = |value: f64| LEFT + value / x_max * plot_width;
    let y = |value: f64| top + PANEL_HEIGHT - value / y_max * PANEL_HEIGHT;
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        top - 10.0,
        escape(title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{plot_width}" height="{PANEL_HEIGHT}" fill="none" stroke="#999"/>"##
    );
    for tick in 0..=4 {
        let value = y_max * f64::from(tick) / 4.0;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{py}" x2="{}" y2="{py}" stroke="#eee"/><text x="{}" y="{}" font-size="11" text-anchor="end">{value:.0}</text>"##,
            LEFT + plot_width,
            LEFT - 6.0,
            y(value) + 4.0,
            py = y(value)
        );
    }
    let step = (x_max / 10.0).ceil().max(1.0);
    let mut second = 0.0;
    while second <= x_max {
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">{second:.0}</text>"#,
            x(second),
            top + PANEL_HEIGHT + 16.0
        );
        second += step;
    }
    for (at, label) in events {
        let _ = writeln!(
            out,
            r##"<line x1="{px}" y1="{top}" x2="{px}" y2="{}" stroke="#c00" stroke-dasharray="4 3"/><text x="{}" y="{}" font-size="11" fill="#c00">{}</text>"##,
            top + PANEL_HEIGHT,
            x(*at) + 3.0,
            top + 12.0,
            escape(label),
            px = x(*at)
        );
    }
    for (points, color) in lines {
        let line: Vec<String> = points
            .iter()
            .map(|(px, py)| format!("{:.1},{:.1}", x(*px), y(*py)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            line.join(" ")
        );
    }
}

/// The SVG document for `report`, its events as dashed markers.
pub fn svg(report: &BenchReport) -> String {
    let events: Vec<(f64, &str)> = report
        .events
        .iter()
        .map(|e| (e.second, e.label.as_str()))
        .collect();
    let events = &events[..];
    // Each point sits at the middle of its interval.
    let half = report.interval_s / 2.0;
    let points = |value: fn(&crate::IntervalReport) -> f64| -> Vec<(f64, f64)> {
        report
            .series
            .iter()
            .map(|s| (s.start_s + half, value(s)))
            .collect()
    };
    let throughput = points(|s| s.ops_per_s);
    let p50 = points(|s| s.p50_us as f64);
    let p99 = points(|s| s.p99_us as f64);
    let x_max = (report.series.len() as f64 * report.interval_s).max(1.0);
    let height = TOP + 2.0 * PANEL_HEIGHT + GAP + 40.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let config = &report.config;
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="24" font-size="15">{}</text>"#,
        escape(&format!(
            "workload {:?}, {} clients, {:?} driver: {:.0} ops/s, p99 {} us, {} errors",
            config.workload,
            config.clients,
            config.driver,
            report.throughput,
            report.all.p99_us,
            report.failures()
        ))
    );
    panel(
        &mut out,
        TOP,
        "throughput (operations per second)",
        &[(&throughput, "#1f5fbf")],
        x_max,
        events,
    );
    panel(
        &mut out,
        TOP + PANEL_HEIGHT + GAP,
        "latency (microseconds): p99 orange, p50 green",
        &[(&p99, "#d9730d"), (&p50, "#2a9d4b")],
        x_max,
        events,
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">seconds since the start of the run</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        height - 8.0
    );
    out.push_str("</svg>\n");
    out
}

/// A curve of [`curves`]: its name (in the legend), colour and points.
#[derive(Debug)]
pub struct Curve<'a> {
    pub name: String,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// An SVG of panels of curves over one x axis (e.g. latency against the
/// number of replicas), one legend line per curve under each title.
pub fn curves(title: &str, x_label: &str, panels: &[(String, Vec<Curve<'_>>)]) -> String {
    let x_max = panels
        .iter()
        .flat_map(|(_, curves)| curves.iter().flat_map(|c| c.points.iter().map(|p| p.0)))
        .fold(1.0, f64::max);
    let count = panels.len().max(1) as f64;
    let height = TOP + count * PANEL_HEIGHT + (count - 1.0) * GAP + 60.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="24" font-size="15">{}</text>"#,
        escape(title)
    );
    for (index, (panel_title, curves)) in panels.iter().enumerate() {
        let top = TOP + index as f64 * (PANEL_HEIGHT + GAP);
        let legend: Vec<String> = curves
            .iter()
            .map(|c| format!("{} {}", c.name, c.color_name()))
            .collect();
        let lines: Vec<Line<'_>> = curves.iter().map(|c| (&c.points[..], c.color)).collect();
        panel(
            &mut out,
            top,
            &format!("{panel_title}: {}", legend.join(", ")),
            &lines,
            x_max,
            &[],
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        height - 8.0,
        escape(x_label)
    );
    out.push_str("</svg>\n");
    out
}

impl Curve<'_> {
    /// How the legend names the colour.
    fn color_name(&self) -> &'static str {
        match self.color {
            "#1f5fbf" => "(blue)",
            "#d9730d" => "(orange)",
            "#2a9d4b" => "(green)",
            "#8e44ad" => "(purple)",
            "#c0392b" => "(red)",
            _ => "",
        }
    }
}

/// Colours for [`Curve`]s, in order.
pub const COLORS: [&str; 5] = ["#1f5fbf", "#d9730d", "#2a9d4b", "#8e44ad", "#c0392b"];

#[cfg(test)]
mod tests {
    use super::nice_ceiling;
    use crate::report::{Event, IntervalReport};

    /// A report of a run with default options that measured nothing.
    fn empty_report() -> crate::BenchReport {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            args: crate::BenchArgs,
        }
        let args = <Command as clap::Parser>::parse_from(["bench"]).args;
        let mix = crate::Mix::of(args.workload, args.read_fraction, args.distribution).unwrap();
        let recorder = crate::report::Recorder::new(
            std::time::Instant::now(),
            std::time::Duration::from_secs(1),
        );
        crate::BenchReport::build(&args, mix, std::time::Duration::from_secs(5), recorder)
    }

    #[test]
    fn the_plot_has_both_series_and_every_event() {
        let mut report = empty_report();
        report.series = (0..5)
            .map(|second| IntervalReport {
                start_s: second as f64,
                ops: 1000 + second * 10,
                ops_per_s: (1000 + second * 10) as f64,
                p50_us: 100,
                p99_us: 200,
                latency: crate::report::histogram(),
            })
            .collect();
        report.events.push(Event {
            second: 2.5,
            label: "migration starts".into(),
        });
        let svg = super::svg(&report);
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert_eq!(
            svg.matches("migration starts").count(),
            2,
            "marked on both panels"
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn axis_bounds_are_round() {
        assert_eq!(nice_ceiling(87_000.0), 100_000.0);
        assert_eq!(nice_ceiling(130.0), 200.0);
        assert_eq!(nice_ceiling(4.2), 5.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
    }
}
