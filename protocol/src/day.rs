//! UTC calendar days on unix seconds, without a date library: the quota code only needs
//! "which UTC day is this instant in" and "when does it end", and the wire uses `YYYY-MM-DD`.

pub const SECONDS_PER_DAY: i64 = 86_400;

/// Days since 1970-01-01 (UTC) of a unix timestamp in seconds.
pub fn day_index(unix_secs: i64) -> i64 {
    unix_secs.div_euclid(SECONDS_PER_DAY)
}

/// Unix seconds at which the UTC day containing `unix_secs` ends (the next 00:00 UTC).
pub fn next_midnight(unix_secs: i64) -> i64 {
    (day_index(unix_secs) + 1) * SECONDS_PER_DAY
}

/// `YYYY-MM-DD` of a day index (proleptic Gregorian, Howard Hinnant's civil_from_days).
pub fn format_day(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Parses `YYYY-MM-DD` into a day index; `None` for anything else (including impossible dates).
pub fn parse_day(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |s: &str| -> Option<i64> {
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    let y = num(text.get(0..4)?)?;
    let m = num(text.get(5..7)?)?;
    let d = num(text.get(8..10)?)?;
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

pub fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Adds calendar months to a unix timestamp, clamping the day of month (Jan 31 + 1 month = Feb 28/29).
pub fn add_months(unix_secs: i64, months: i64) -> i64 {
    let day = day_index(unix_secs);
    let secs_in_day = unix_secs - day * SECONDS_PER_DAY;
    let (y, m, d) = civil_from_days(day);
    let total = y * 12 + (m - 1) + months;
    let (ny, nm) = (total.div_euclid(12), total.rem_euclid(12) + 1);
    let nd = d.min(days_in_month(ny, nm));
    days_from_civil(ny, nm, nd) * SECONDS_PER_DAY + secs_in_day
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_days() {
        assert_eq!(format_day(0), "1970-01-01");
        assert_eq!(parse_day("2026-11-25"), Some(day_index(1_795_564_800)));
        assert_eq!(format_day(day_index(1_795_564_800 + 86_399)), "2026-11-25");
        assert_eq!(parse_day("2024-02-30"), None);
        assert_eq!(
            parse_day("2024-02-29").map(format_day).as_deref(),
            Some("2024-02-29")
        );
        assert_eq!(parse_day("2024-2-29"), None);
        assert_eq!(day_index(-1), -1);
    }

    #[test]
    fn months_clamp() {
        let jan31 = parse_day("2026-01-31").map(|d| d * SECONDS_PER_DAY);
        let feb = jan31.map(|t| format_day(day_index(add_months(t, 1))));
        assert_eq!(feb.as_deref(), Some("2026-02-28"));
        let dec = parse_day("2026-12-15")
            .map(|d| format_day(day_index(add_months(d * SECONDS_PER_DAY, 12))));
        assert_eq!(dec.as_deref(), Some("2027-12-15"));
    }

    proptest::proptest! {
        #[test]
        fn roundtrip(day in -100_000i64..200_000) {
            proptest::prop_assert_eq!(parse_day(&format_day(day)), Some(day));
        }
    }
}
