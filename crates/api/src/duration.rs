//! Durations as the binaries' flags and environment variables spell them: `500ms`, `10s`,
//! `2m`, `1h`, or combinations such as `1m30s`.

use std::time::Duration;

/// Parses a flag's duration; the error says what was expected.
pub fn parse(text: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: expected a number, e.g. 500ms or 1s"))?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        total += match &rest[..unit] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            other => return Err(format!("{text:?}: unknown unit {other:?} (ms, s, m or h)")),
        };
        rest = &rest[unit..];
    }
    Ok(total)
}

/// A duration as [`parse`] reads it back, in the largest unit it is a whole number of
/// (`2h`, `10m`, `90s`, `1500ms`); below a millisecond is dropped, no flag is finer.
pub fn format(value: Duration) -> String {
    let millis = value.as_millis();
    match millis {
        0 => "0s".into(),
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m % 1000 == 0 => format!("{}s", m / 1000),
        m => format!("{m}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_in_every_unit_and_combined() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse("").is_err());
        assert!(parse("10").unwrap_err().contains("unknown unit"));
        assert!(parse("s").unwrap_err().contains("expected a number"));
        assert!(parse("3d").is_err());
    }

    #[test]
    fn formatted_durations_parse_back() {
        assert_eq!(format(Duration::from_secs(600)), "10m");
        assert_eq!(format(Duration::from_secs(90)), "90s");
        for millis in [0, 1, 500, 1000, 1500, 90_000, 600_000, 7_200_000, 7_260_000] {
            let value = Duration::from_millis(millis);
            assert_eq!(parse(&format(value)), Ok(value), "{}", format(value));
        }
    }
}
