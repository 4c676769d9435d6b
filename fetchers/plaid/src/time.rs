//! Plaid's dates and date-times, as day counts and Unix seconds.
//!
//! Plaid writes dates as `YYYY-MM-DD` and date-times as ISO 8601 (`2025-03-04T10:11:12Z`, with
//! optional fractional seconds and a numeric offset). Windowed features only need whole days and
//! seconds, so this is a small exact parser rather than a calendar crate. A malformed value is
//! `None`; callers turn that into a cell error naming the field.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds in a day.
pub const DAY: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn number(text: &str) -> Option<i64> {
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// `YYYY-MM-DD` as days since 1970-01-01.
pub fn parse_date(text: &str) -> Option<i64> {
    let mut parts = text.splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d) = (number(y)?, number(m)?, number(d)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// An ISO 8601 date-time (`T` or space between date and time; `Z` or `±HH:MM`; fractional
/// seconds ignored) as Unix seconds.
pub fn parse_datetime(text: &str) -> Option<i64> {
    // ASCII only, so the fixed-width splits below land on character boundaries.
    if text.len() < 19 || !text.is_ascii() {
        return None;
    }
    let (date, rest) = text.split_at(10);
    let day = parse_date(date)?;
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let (clock, zone) = rest.split_at(8);
    let mut hms = clock.split(':');
    let (h, mi, s) = (
        number(hms.next()?)?,
        number(hms.next()?)?,
        number(hms.next()?)?,
    );
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Skip fractional seconds.
    let zone = match zone.strip_prefix('.') {
        Some(frac) => frac.trim_start_matches(|c: char| c.is_ascii_digit()),
        None => zone,
    };
    let offset = match zone {
        "Z" | "z" => 0,
        _ => {
            let sign = match zone.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = zone[1..].split_once(':')?;
            if oh.len() != 2 || om.len() != 2 {
                return None;
            }
            sign * (number(oh)? * 3600 + number(om)? * 60)
        }
    };
    Some(day * DAY + h * 3600 + mi * 60 + s - offset)
}

/// A [`SystemTime`] as Unix seconds (negative before 1970).
pub fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    }
}

/// Unix seconds as a [`SystemTime`].
pub fn system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_datetimes_parse_exactly() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2025-01-01"), Some(1_735_689_600 / DAY));
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        assert_eq!(parse_date("2025-13-01"), None);
        assert_eq!(parse_date("25-01-01"), None);
        assert_eq!(parse_date("2025-1-01"), None);
        assert_eq!(parse_date("2025-01-0x"), None);
        assert_eq!(parse_datetime("2025-01-01T00:00:00Z"), Some(1_735_689_600));
        assert_eq!(
            parse_datetime("2025-01-01T01:30:00.123456+01:30"),
            Some(1_735_689_600)
        );
        assert_eq!(
            parse_datetime("2024-12-31 23:00:00-01:00"),
            Some(1_735_689_600)
        );
        assert_eq!(parse_datetime("2025-01-01T00:00:00"), None, "no zone");
        assert_eq!(parse_datetime("2025-01-01"), None);
        assert_eq!(parse_datetime("2025-01-01T24:00:00Z"), None);
    }

    #[test]
    fn unix_seconds_round_trip() {
        for t in [-86_401, 0, 1_735_689_600] {
            assert_eq!(unix_seconds(system_time(t)), t);
        }
    }
}
