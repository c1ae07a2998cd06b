//! Durations as people write them in flags and environment variables.

use std::time::Duration;

/// Why a duration could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration like 500ms, 1s, 2m, 1h or 30d")]
    NotANumber(String),
    #[error("unknown unit {0:?}; use ms, s, m, h or d")]
    UnknownUnit(String),
    #[error("{value:?}: {reason}")]
    OutOfRange { value: String, reason: String },
}

/// Parses `250ms`, `1.5s`, `2m`, `1h`, `365d`, or a bare number of seconds.
pub fn parse(v: &str) -> Result<Duration, DurationError> {
    let v = v.trim();
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| DurationError::NotANumber(v.to_string()))?;
    let secs = match unit {
        "ms" => num / 1000.0,
        "" | "s" => num,
        "m" => num * 60.0,
        "h" => num * 3600.0,
        "d" => num * 86_400.0,
        _ => return Err(DurationError::UnknownUnit(unit.to_string())),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| DurationError::OutOfRange {
        value: v.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("365d"), Ok(Duration::from_secs(365 * 86_400)));
        assert_eq!(parse("7"), Ok(Duration::from_secs(7)));
        assert!(parse("").is_err());
        assert!(parse("1w").is_err());
        assert!(parse("abc").is_err());
    }
}
