//! Kubernetes-style durations (`"250ms"`, `"30s"`, `"5m"`, `"1h30m"`, `"1.5s"`), the format
//! of Go's `time.ParseDuration` restricted to the units a streaming job needs.

use std::time::Duration;

/// JSON-schema pattern of a duration (kept in step with [`parse_duration`]).
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// Longest duration accepted: 100 years, far beyond any window, and well inside `i64` ms.
pub const MAX_DURATION_MS: u64 = 100 * 365 * 24 * 3_600_000;

/// Parses a duration into milliseconds. The error says what is expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let expected = "expected a duration such as 250ms, 30s, 5m, 1h or 1h30m";
    if s.is_empty() {
        return Err(format!("empty duration: {expected}"));
    }
    let mut total_us: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("'{s}' has a number without a unit: {expected}"))?;
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let unit_us: u128 = match unit {
            "ms" => 1_000,
            "s" => 1_000_000,
            "m" => 60_000_000,
            "h" => 3_600_000_000,
            _ => return Err(format!("'{s}' has unknown unit '{unit}': {expected}")),
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() || (number.contains('.') && frac.is_empty()) || frac.contains('.') {
            return Err(format!(
                "'{s}' has a malformed number '{number}': {expected}"
            ));
        }
        let whole: u128 = whole
            .parse()
            .map_err(|_| format!("'{s}' is too long: at most {MAX_DURATION_MS} ms"))?;
        let mut part = whole.saturating_mul(unit_us);
        // Fractions below a microsecond are cut, as Go does below a nanosecond.
        let mut scale = unit_us;
        for d in frac.bytes().take(18) {
            scale /= 10;
            part = part.saturating_add(u128::from(d - b'0') * scale);
        }
        total_us = total_us.saturating_add(part);
        rest = next;
    }
    if total_us > u128::from(MAX_DURATION_MS) * 1000 {
        return Err(format!(
            "'{s}' is too long: at most {MAX_DURATION_MS} ms (100 years)"
        ));
    }
    if !total_us.is_multiple_of(1000) {
        return Err(format!(
            "'{s}' is not a whole number of milliseconds (event time has millisecond resolution)"
        ));
    }
    Ok(Duration::from_millis((total_us / 1000) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> Result<u128, String> {
        parse_duration(s).map(|d| d.as_millis())
    }

    #[test]
    fn parses_kubernetes_durations() {
        assert_eq!(ms("250ms"), Ok(250));
        assert_eq!(ms("30s"), Ok(30_000));
        assert_eq!(ms("5m"), Ok(300_000));
        assert_eq!(ms("1h30m"), Ok(5_400_000));
        assert_eq!(ms("1.5s"), Ok(1_500));
        assert_eq!(ms("0s"), Ok(0));
        assert_eq!(ms("1m30s500ms"), Ok(90_500));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in [
            "", "30", "5 m", "5d", "-1s", "1.s", ".5s", "1..5s", "0.5ms", "s", "1x",
        ] {
            assert!(ms(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(
            ms("999999999999999999999999h")
                .unwrap_err()
                .contains("too long")
        );
        assert!(ms("1000000h").unwrap_err().contains("too long"));
    }
}
