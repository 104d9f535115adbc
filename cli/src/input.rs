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

/// A duration like `90s`, `10m`, `2h` or `1h30m` (a bare number is seconds).
pub fn duration(text: &str) -> Result<Duration, String> {
    broker::config::parse_duration(text)
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
