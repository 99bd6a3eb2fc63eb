//! The usage chart: calls per UTC day over the last 30 days as an inline SVG bar chart (no
//! script, no external file, so the strict CSP holds). Every bar carries its day and count as
//! data attributes and a `<title>` tooltip, so people and tests read the same numbers.

use super::html::{count, esc};
use crate::store::DayCount;
use tollgate_protocol::day::{format_day, parse_day};

pub const DAYS: i64 = 30;
const LEFT: u64 = 44;
const TOP: u64 = 12;
const PLOT_H: u64 = 128;
const BAR_W: u64 = 15;
const STEP: u64 = 19;

/// The last [`DAYS`] days ending `today` (a day index), oldest first, with zero-filled gaps.
pub fn series(history: &[DayCount], today: i64) -> Vec<(String, u64)> {
    (today - DAYS + 1..=today)
        .map(|d| {
            let day = format_day(d);
            let n = history
                .iter()
                .filter(|h| parse_day(&h.day) == Some(d))
                .map(|h| h.count)
                .sum();
            (day, n)
        })
        .collect()
}

/// A round upper bound for the axis: 1, 2, 5, 10, 20, 50, ...
fn axis_max(max: u64) -> u64 {
    let mut step = 1u64;
    loop {
        for m in [1u64, 2, 5] {
            let v = step.saturating_mul(m);
            if v >= max || v == u64::MAX {
                return v;
            }
        }
        step = step.saturating_mul(10);
    }
}

/// The chart for one key. `label` names the key for screen readers.
pub fn svg(key_id: &str, label: &str, series: &[(String, u64)]) -> String {
    let total: u64 = series.iter().map(|(_, n)| *n).sum();
    let top = axis_max(series.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1));
    let width = LEFT + STEP * u64::try_from(series.len()).unwrap_or(0) + 8;
    let base = TOP + PLOT_H;
    let mut bars = String::new();
    let mut x = LEFT + 2;
    for (day, n) in series {
        let h = n.saturating_mul(PLOT_H) / top;
        // A visible sliver for any day with calls, however small next to the busiest day.
        let h = if *n > 0 { h.max(2) } else { 0 };
        bars.push_str(&format!(
            r#"<rect class="bar" x="{x}" y="{y}" width="{BAR_W}" height="{h}" data-day="{day}" data-count="{n}"><title>{day}: {calls} call{s}</title></rect>"#,
            y = base - h,
            day = esc(day),
            calls = count(*n),
            s = if *n == 1 { "" } else { "s" },
        ));
        x += STEP;
    }
    let first = series.first().map(|(d, _)| d.as_str()).unwrap_or("");
    let last = series.last().map(|(d, _)| d.as_str()).unwrap_or("");
    format!(
        r#"<svg class="chart" id="chart-{key}" data-key="{key}" data-total="{total}" viewBox="0 0 {width} 170" width="100%" role="img" aria-label="Calls per day with {label}, last 30 days: {total_text} in all">
<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}"/><line class="axis" x1="{LEFT}" y1="{base}" x2="{right}" y2="{base}"/>
<line class="grid" x1="{LEFT}" y1="{TOP}" x2="{right}" y2="{TOP}"/>
<text class="tick" x="{tick_x}" y="{top_y}" text-anchor="end">{top_text}</text><text class="tick" x="{tick_x}" y="{base}" text-anchor="end">0</text>
{bars}
<text class="tick" x="{LEFT}" y="162">{first}</text><text class="tick" x="{right}" y="162" text-anchor="end">{last} (today)</text>
</svg>"#,
        key = esc(key_id),
        label = esc(label),
        total_text = count(total),
        right = width - 8,
        tick_x = LEFT - 6,
        top_y = TOP + 4,
        top_text = count(top),
        first = esc(first),
        last = esc(last),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_protocol::day::day_index;

    #[test]
    fn thirty_days_zero_filled() {
        let today = day_index(1_790_000_000);
        let history = vec![
            DayCount {
                day: format_day(today),
                count: 3,
            },
            DayCount {
                day: format_day(today - 2),
                count: 7,
            },
            DayCount {
                day: format_day(today - 40),
                count: 100,
            },
        ];
        let s = series(&history, today);
        assert_eq!(s.len(), 30);
        assert_eq!(s[29], (format_day(today), 3));
        assert_eq!(s[27].1, 7);
        assert_eq!(
            s.iter().map(|(_, n)| n).sum::<u64>(),
            10,
            "days older than 30 are left out"
        );
    }

    #[test]
    fn bars_scale_to_a_round_axis() {
        assert_eq!(axis_max(1), 1);
        assert_eq!(axis_max(3), 5);
        assert_eq!(axis_max(7), 10);
        assert_eq!(axis_max(5001), 10_000);
        let s = vec![
            ("2026-11-01".to_string(), 0),
            ("2026-11-02".to_string(), 1),
            ("2026-11-03".to_string(), 10),
        ];
        let out = svg("key_0123456789abcdef", "<b>x</b>", &s);
        assert!(out.contains(r#"data-day="2026-11-03" data-count="10""#));
        assert!(
            out.contains(r#"height="128" data-day="2026-11-03""#),
            "the busiest day fills the plot"
        );
        assert!(out.contains(r#"height="12" data-day="2026-11-02""#));
        assert!(out.contains(r#"height="0" data-day="2026-11-01""#));
        assert!(out.contains(r#"data-total="11""#));
        assert!(out.contains("&lt;b&gt;x&lt;/b&gt;"));
        assert!(out.contains("<title>2026-11-02: 1 call</title>"));
    }
}
