//! Durations in the configuration: a whole number followed by a unit, e.g. `"300ms"`, `"30s"`,
//! `"5m"`, `"1h"`, `"1d"`. A bare number is refused so that nobody has to guess the unit.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A configuration duration; derefs to [`std::time::Duration`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// The wrapped standard duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Why a configuration duration was refused; the text names the value as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Only digits, or nothing at all: the unit must be written.
    #[error("duration {text:?} has no unit; write e.g. \"30s\", \"5m\" or \"300ms\"")]
    NoUnit {
        /// The value as written, trimmed.
        text: String,
    },
    /// Starts with something other than a digit (a sign, a unit, a space).
    #[error("duration {text:?} must start with a whole number, e.g. \"30s\"")]
    NoNumber {
        /// The value as written, trimmed.
        text: String,
    },
    /// More milliseconds than a `u64` holds.
    #[error("duration {text:?} is too large")]
    TooLarge {
        /// The value as written, trimmed.
        text: String,
    },
    /// A unit other than `ms`, `s`, `m`, `h`, `d` (or a fraction: `1.5s`).
    #[error("duration {text:?} has unknown unit {unit:?}; use ms, s, m, h or d")]
    UnknownUnit {
        /// The value as written, trimmed.
        text: String,
        /// What follows the number (`"sec"`, `".5s"`, `" s"`).
        unit: String,
    },
}

/// Parses `"<digits><unit>"` where unit is one of `ms`, `s`, `m`, `h`, `d`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, DurationError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| DurationError::NoUnit { text: text.into() })?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(DurationError::NoNumber { text: text.into() });
    }
    let too_large = || DurationError::TooLarge { text: text.into() };
    let n: u64 = digits.parse().map_err(|_| too_large())?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(DurationError::UnknownUnit {
                text: text.into(),
                unit: unit.into(),
            })
        }
    };
    n.checked_mul(millis_per_unit)
        .map(std::time::Duration::from_millis)
        .ok_or_else(too_large)
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map(Duration)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as D;

    #[test]
    fn durations_with_units_parse() {
        let table = [
            ("300ms", D::from_millis(300)),
            ("30s", D::from_secs(30)),
            ("5m", D::from_secs(300)),
            ("1h", D::from_secs(3600)),
            ("2d", D::from_secs(172_800)),
            ("0s", D::ZERO),
        ];
        for (text, want) in table {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn durations_without_unit_or_with_unknown_unit_are_refused() {
        type Want = fn(&DurationError) -> bool;
        let no_unit: Want = |e| matches!(e, DurationError::NoUnit { .. });
        let no_number: Want = |e| matches!(e, DurationError::NoNumber { .. });
        let unknown_unit: Want = |e| matches!(e, DurationError::UnknownUnit { .. });
        let too_large: Want = |e| matches!(e, DurationError::TooLarge { .. });
        let table = [
            ("30", no_unit),
            ("", no_unit),
            ("s", no_number),
            ("-1s", no_number),
            ("5 minutes", unknown_unit),
            ("1.5s", unknown_unit),
            ("99999999999999999999s", too_large),
            ("18446744073709551615d", too_large),
        ];
        for (text, want) in table {
            match parse_duration(text) {
                Ok(d) => panic!("{text}: {d:?}"),
                Err(e) => assert!(want(&e), "{text}: {e:?}"),
            }
        }
    }
}
