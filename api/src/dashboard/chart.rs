//! The overview's throughput chart: completed and failed tasks per minute
//! as an inline SVG of stacked bars, drawn here so the page needs no
//! charting script. Only numbers and fixed words go into the markup.

use std::fmt::Write as _;

use keel_shared::db::task_stats::Minute;

const WIDTH: usize = 720;
const HEIGHT: usize = 160;
/// Room on the left for the scale, and below for the time labels.
const LEFT: usize = 40;
const BOTTOM: usize = 20;

/// The chart of `minutes` (oldest first).
pub fn throughput_svg(minutes: &[Minute]) -> String {
    let peak = minutes
        .iter()
        .map(|m| m.completed + m.failed)
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_height = HEIGHT - BOTTOM;
    let slot = (WIDTH - LEFT) as f64 / minutes.len().max(1) as f64;
    let bar = (slot - 1.0).max(1.0);
    let scale = |n: i64| n as f64 * plot_height as f64 / peak as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="tasks finished per minute, last hour" xmlns="http://www.w3.org/2000/svg">"#
    );
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{LEFT}" y1="{plot_height}" x2="{WIDTH}" y2="{plot_height}"/><text class="scale" x="{}" y="12" text-anchor="end">{peak}/min</text><text class="scale" x="{}" y="{plot_height}" text-anchor="end">0</text>"#,
        LEFT - 4,
        LEFT - 4,
    );
    for (i, m) in minutes.iter().enumerate() {
        let x = LEFT as f64 + i as f64 * slot;
        let completed = scale(m.completed);
        let failed = scale(m.failed);
        let top = plot_height as f64 - completed - failed;
        let _ = write!(
            svg,
            r#"<g><title>{}: {} completed, {} failed</title><rect class="completed" x="{x:.1}" y="{:.1}" width="{bar:.1}" height="{completed:.1}"/><rect class="failed" x="{x:.1}" y="{top:.1}" width="{bar:.1}" height="{failed:.1}"/></g>"#,
            m.minute.format("%H:%M"),
            m.completed,
            m.failed,
            top + failed,
        );
    }
    if let (Some(first), Some(last)) = (minutes.first(), minutes.last()) {
        let _ = write!(
            svg,
            r#"<text class="scale" x="{LEFT}" y="{HEIGHT}">{}</text><text class="scale" x="{WIDTH}" y="{HEIGHT}" text-anchor="end">{} UTC</text>"#,
            first.minute.format("%H:%M"),
            last.minute.format("%H:%M"),
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone as _, Utc};

    use super::*;

    #[test]
    fn bars_are_scaled_to_the_busiest_minute_and_titled() {
        let start = Utc.with_ymd_and_hms(2026, 11, 22, 5, 0, 0).unwrap();
        let minutes: Vec<Minute> = (0..3)
            .map(|i| Minute {
                minute: start + Duration::minutes(i),
                completed: i * 10,
                failed: i64::from(i == 2) * 10,
            })
            .collect();
        let svg = throughput_svg(&minutes);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(
            svg.contains("30/min"),
            "the peak is completed + failed: {svg}"
        );
        assert!(svg.contains("<title>05:02: 20 completed, 10 failed</title>"));
        // The busiest minute fills the plot: 140 px, 2/3 of it completed.
        assert!(svg.contains(r#"height="93.3""#), "{svg}");
        assert_eq!(svg.matches("<rect").count(), 6);
        assert!(svg.contains("05:00") && svg.contains("05:02 UTC"));
    }

    #[test]
    fn an_idle_hour_draws_empty_bars() {
        let svg = throughput_svg(&[]);
        assert!(svg.contains("1/min") && !svg.contains("<rect"));
    }
}
