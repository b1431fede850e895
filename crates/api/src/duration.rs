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
}
