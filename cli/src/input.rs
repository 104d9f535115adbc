//! Parsers of command-line values (clap `value_parser`s return `Result<_, String>`, so a bad
//! value is a usage error, exit 2) and readers of JSON arguments and secrets.

use std::io::Read as _;
use std::time::Duration;

use anyhow::Context as _;

use crate::failure;

/// A value, or `none` to clear a setting (`tenant set --daily-cap none`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clearable<T> {
    Set(T),
    Clear,
}

impl<T> Clearable<T> {
    /// `Some(value)` or `None` for a clear: what a JSON patch field holds.
    pub fn into_option(self) -> Option<T> {
        match self {
            Clearable::Set(value) => Some(value),
            Clearable::Clear => None,
        }
    }
}

/// The units a client command's duration may use, with their length in seconds.
///
/// Only these: the server speaks whole seconds, so smaller units would be rounded away, and
/// larger ones (weeks, years) are past every limit berth has.
const UNITS: [(char, u64); 4] = [('s', 1), ('m', 60), ('h', 3_600), ('d', 86_400)];

/// A duration of a client command: one or more `<number><unit>` parts with the units `s`,
/// `m`, `h` and `d`, like `90s`, `10m`, `2h`, `1d` or `1h30m`.
///
/// A bare number is refused: `--ttl 10` could mean ten seconds or ten minutes, and a lease
/// that silently expired after ten seconds is worse than a usage error. (`berth serve`'s
/// flags read bare seconds; they have their own parser, `broker::config::parse_duration`.)
///
/// # Errors
///
/// A message for people naming the accepted units, and for a bare number the two readings.
pub fn duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{trimmed}` needs a unit: write `{trimmed}s` for seconds or `{trimmed}m` for minutes \
             (units: s, m, h, d, combined like 1h30m)"
        ));
    }
    let bad = || {
        format!("`{trimmed}` is not a duration like 90s, 10m, 2h, 1d or 1h30m (units: s, m, h, d)")
    };
    let mut total: u64 = 0;
    let mut number = String::new();
    let mut parts = 0;
    for c in trimmed.chars() {
        if c.is_ascii_digit() {
            number.push(c);
        } else if let Some(&(_, seconds)) = UNITS.iter().find(|(unit, _)| *unit == c) {
            let value: u64 = number.parse().map_err(|_| bad())?;
            total = value
                .checked_mul(seconds)
                .and_then(|part| total.checked_add(part))
                .ok_or_else(bad)?;
            number.clear();
            parts += 1;
        } else {
            return Err(bad());
        }
    }
    if parts == 0 || !number.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// A duration, or `none`.
pub fn clearable_duration(text: &str) -> Result<Clearable<Duration>, String> {
    if is_none(text) {
        Ok(Clearable::Clear)
    } else {
        duration(text).map(Clearable::Set)
    }
}

/// Whole seconds of a duration, for the API's `*_s` fields.
pub fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// An amount of currency (`12.50`, `$12.50`, `0.12`) as micro-units; at most six decimals.
pub fn money(text: &str) -> Result<i64, String> {
    let bad = || format!("`{text}` is not an amount like 12.50 or $0.12 (up to 6 decimals)");
    let digits = text.trim().trim_start_matches('$');
    let (units, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if units.is_empty() && fraction.is_empty()
        || !all_digits(units)
        || !all_digits(fraction)
        || fraction.len() > 6
    {
        return Err(bad());
    }
    let units: i64 = if units.is_empty() {
        0
    } else {
        units.parse().map_err(|_| bad())?
    };
    let fraction: i64 = format!("{fraction:0<6}").parse().map_err(|_| bad())?;
    units
        .checked_mul(1_000_000)
        .and_then(|micros| micros.checked_add(fraction))
        .ok_or_else(bad)
}

/// An amount, or `none`.
pub fn clearable_money(text: &str) -> Result<Clearable<i64>, String> {
    if is_none(text) {
        Ok(Clearable::Clear)
    } else {
        money(text).map(Clearable::Set)
    }
}

/// A label `key=value`.
pub fn label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not a label like key=value")),
    }
}

fn is_none(text: &str) -> bool {
    matches!(text, "none" | "off")
}

/// Reads a JSON argument: `@path` reads a file, `-` or `@-` reads stdin, anything else is
/// JSON text. Files and stdin keep secrets out of shell history.
///
/// # Errors
///
/// The file or stdin cannot be read (error), or the text is not JSON (usage error).
pub fn json_argument(flag: &str, value: &str) -> anyhow::Result<serde_json::Value> {
    let (text, origin) = match value {
        "-" | "@-" => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .with_context(|| format!("reading {flag} from stdin"))?;
            (text, "stdin".to_owned())
        }
        _ => match value.strip_prefix('@') {
            Some(path) => (
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {flag} from {path}"))?,
                path.to_owned(),
            ),
            None => (value.to_owned(), "the command line".to_owned()),
        },
    };
    serde_json::from_str(&text)
        .map_err(|err| failure::usage(format!("{flag} from {origin} is not JSON: {err}")))
}

/// Reads a secret from a file: one line, surrounding whitespace (the final newline) ignored.
///
/// # Errors
///
/// The file cannot be read (error) or holds nothing (usage error).
pub fn secret_file(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the secret from {}", path.display()))?;
    secret(&text, &path.display().to_string())
}

/// The secret in `text` (read from `origin`), trimmed.
///
/// # Errors
///
/// Nothing is left once trimmed (usage error).
pub fn secret(text: &str, origin: &str) -> anyhow::Result<String> {
    let secret = text.trim();
    if secret.is_empty() {
        return Err(failure::usage(format!("{origin} holds no secret")));
    }
    Ok(secret.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Amounts are exact decimal currency, turned into micro-units without floats.
    #[test]
    fn amounts_to_micros() {
        assert_eq!(money("12.50"), Ok(12_500_000));
        assert_eq!(money("$0.12"), Ok(120_000));
        assert_eq!(money("3"), Ok(3_000_000));
        assert_eq!(money(".5"), Ok(500_000));
        assert_eq!(money("0.000001"), Ok(1));
        assert!(money("0.0000001").is_err());
        assert!(money("-1").is_err());
        assert!(money("1,5").is_err());
        assert!(money("$").is_err());
        assert!(money("99999999999999999").is_err());
    }

    /// Durations take the units s, m, h and d, alone or combined; a bare number or another
    /// unit is refused with a message naming the accepted units.
    #[test]
    fn durations_need_units() {
        assert_eq!(duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(duration(" 0s "), Ok(Duration::ZERO));
        let bare = duration("10").expect_err("a bare number");
        assert!(bare.contains("10s") && bare.contains("10m"), "{bare}");
        for text in [
            "",
            "s",
            "10x",
            "5ns",
            "1y",
            "1h30",
            "-5s",
            "1.5h",
            "99999999999999999999s",
        ] {
            let err = duration(text).expect_err(text);
            assert!(err.contains("(units: s, m, h, d)"), "{text}: {err}");
            assert!(
                !err.contains("years") && !err.contains("nsec"),
                "{text}: {err}"
            );
        }
    }

    /// Labels need a key and an `=`; `none` clears a setting.
    #[test]
    fn labels_and_clearables() {
        assert_eq!(label("repo=web"), Ok(("repo".into(), "web".into())));
        assert_eq!(label("k="), Ok(("k".into(), String::new())));
        assert!(label("=v").is_err());
        assert!(label("repo").is_err());
        assert_eq!(clearable_money("none"), Ok(Clearable::Clear));
        assert_eq!(
            clearable_duration("10m"),
            Ok(Clearable::Set(Duration::from_secs(600)))
        );
    }
}
