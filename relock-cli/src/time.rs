//! Instants and durations as operators read and type them: RFC 3339 timestamps in UTC, short
//! durations such as `1.5s` or `2m 3s`.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `time` as RFC 3339 in UTC with milliseconds, e.g. `2026-12-01T22:06:18.123Z`.
///
/// Instants before 1970 (which no Redis clock reports) are shown as the epoch.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, secs_of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60,
        since_epoch.subsec_millis()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01, by Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// A duration for people: `850ms`, `29.9s`, `2m 3s`, `1h 5m`, `3d 4h`.
pub(crate) fn human(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    if millis < 60_000 {
        return format!("{}.{}s", millis / 1000, millis % 1000 / 100);
    }
    let secs = duration.as_secs();
    let units = [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)];
    let first = units
        .iter()
        .position(|&(_, size)| secs >= size)
        .unwrap_or(units.len() - 1);
    let (big, big_size) = units[first];
    let mut text = format!("{}{big}", secs / big_size);
    if let Some(&(small, small_size)) = units.get(first + 1) {
        let rest = secs % big_size / small_size;
        if rest > 0 {
            let _ = write!(text, " {rest}{small}");
        }
    }
    text
}

/// Parses a positive duration such as `250ms`, `2s`, `1.5s`, `5m`, `1h` or `1h30m`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("`{text}` is not a duration such as 500ms, 2s, 1.5s, 5m or 1h");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c.is_whitespace())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            _ => return Err(invalid()),
        };
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let part = Duration::try_from_secs_f64(value * scale).map_err(|_| invalid())?;
        total = total.checked_add(part).ok_or_else(invalid)?;
        rest = after.trim_start();
    }
    if total.is_zero() {
        return Err(format!("`{text}` must be longer than zero"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn rfc3339_of_the_epoch() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn rfc3339_of_known_instants() {
        // `date -u -d @1764627978`
        assert_eq!(rfc3339(at(1_764_627_978, 123)), "2025-12-01T22:26:18.123Z");
        assert_eq!(rfc3339(at(951_782_400, 0)), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(at(4_107_542_399, 999)), "2100-02-28T23:59:59.999Z");
        assert_eq!(rfc3339(at(4_107_542_400, 0)), "2100-03-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(1_609_459_199, 5)), "2020-12-31T23:59:59.005Z");
    }

    #[test]
    fn rfc3339_of_instants_before_1970_is_the_epoch() {
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(850)), "850ms");
        assert_eq!(human(Duration::from_millis(29_960)), "29.9s");
        assert_eq!(human(Duration::from_secs(123)), "2m 3s");
        assert_eq!(human(Duration::from_secs(120)), "2m");
        assert_eq!(human(Duration::from_secs(3900)), "1h 5m");
        assert_eq!(
            human(Duration::from_secs(3 * 86_400 + 4 * 3600 + 7)),
            "3d 4h"
        );
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2m 3s"), Ok(Duration::from_secs(123)));
    }

    #[test]
    fn rejects_bad_durations() {
        for text in ["", "5", "s", "5 parsecs", "-1s", "1..2s", "0s", "1e99999h"] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
    }
}
