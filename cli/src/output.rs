//! What the client commands print on stdout: aligned tables and field lists for people,
//! one JSON document for scripts, or bare identifiers.
//!
//! In tables, money is currency (`$1.25`, never micro-units) and times are absolute and
//! relative (`2026-11-27 12:00:05Z (3m ago)`). JSON is the wire type as the API returns it,
//! so it is as stable as the API.

use std::io::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// The `-o` formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned tables and field lists.
    Table,
    /// One JSON document: the API's own shape.
    Json,
    /// Only the identifiers (lease ids, names), one per line.
    Id,
}

/// Writes `text` to stdout. A closed pipe (`berth lease list | head -1`) is not an error.
///
/// # Errors
///
/// Writing to stdout fails for another reason.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("writing to stdout: {err}"))
        }
        _ => Ok(()),
    }
}

/// Writes `text` to stdout for a command that keeps writing (`berth watch`): `Ok(false)` once
/// the reader went away (`berth watch | head -3`), so the command can stop.
///
/// # Errors
///
/// Writing to stdout fails for another reason.
pub fn emit_live(text: &str) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(err) => Err(anyhow::anyhow!("writing to stdout: {err}")),
    }
}

/// Writes `value` as one pretty-printed JSON document.
///
/// # Errors
///
/// As [`emit`].
pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|err| anyhow::anyhow!("encoding JSON: {err}"))?;
    emit(&format!("{text}\n"))
}

/// Writes one identifier per line.
///
/// # Errors
///
/// As [`emit`].
pub fn ids<'a>(ids: impl IntoIterator<Item = &'a str>) -> anyhow::Result<()> {
    let text: String = ids.into_iter().map(|id| format!("{id}\n")).collect();
    emit(&text)
}

/// A table with a header row; columns are padded to their widest cell.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers (shown in capitals).
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            right: vec![false; headers.len()],
            rows: Vec::new(),
        }
    }

    /// Aligns column `index` to the right (amounts).
    pub fn right(mut self, index: usize) -> Table {
        if let Some(flag) = self.right.get_mut(index) {
            *flag = true;
        }
        self
    }

    /// Adds a row; missing cells are empty.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, ending in a newline.
    pub fn render(&self) -> String {
        let header: Vec<String> = self.headers.iter().map(|h| h.to_uppercase()).collect();
        let lines: Vec<&[String]> = std::iter::once(header.as_slice())
            .chain(self.rows.iter().map(Vec::as_slice))
            .collect();
        let mut widths = vec![0; self.headers.len()];
        for line in &lines {
            for (index, cell) in line.iter().enumerate().take(widths.len()) {
                widths[index] = widths[index].max(width(cell));
            }
        }
        let mut text = String::new();
        for line in lines {
            let mut out = String::new();
            for (index, column_width) in widths.iter().enumerate() {
                let cell = line.get(index).map_or("", String::as_str);
                let pad = column_width - width(cell);
                let last = index + 1 == widths.len();
                if index > 0 {
                    out.push_str("  ");
                }
                if self.right[index] {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    if !last {
                        out.push_str(&" ".repeat(pad));
                    }
                }
            }
            text.push_str(out.trim_end());
            text.push('\n');
        }
        text
    }
}

/// A list of `name  value` lines with the names aligned; empty values are left out.
#[derive(Debug, Default)]
pub struct Fields {
    pairs: Vec<(&'static str, String)>,
}

impl Fields {
    pub fn new() -> Fields {
        Fields::default()
    }

    /// Adds a field (skipped when `value` is empty).
    pub fn add(&mut self, name: &'static str, value: impl Into<String>) -> &mut Fields {
        let value = value.into();
        if !value.is_empty() {
            self.pairs.push((name, value));
        }
        self
    }

    /// The fields as text.
    pub fn render(&self) -> String {
        let name_width = self.pairs.iter().map(|(n, _)| width(n)).max().unwrap_or(0);
        self.pairs
            .iter()
            .map(|(name, value)| format!("{name:<name_width$}  {value}\n"))
            .collect()
    }
}

/// Display width of a cell: characters (berth prints no wide characters in tables).
fn width(text: &str) -> usize {
    text.chars().count()
}

/// Micro-units as currency: `$1.25`, `$0.10`, `$0.000033`, `-$0.50`. Two decimals at least,
/// more only when the amount has them (a few seconds of a cheap runner cost less than a cent).
pub fn money(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    let units = abs / 1_000_000;
    let fraction = format!("{:06}", abs % 1_000_000);
    let trimmed = fraction.trim_end_matches('0');
    let decimals = if trimmed.len() < 2 {
        &fraction[..2]
    } else {
        trimmed
    };
    format!("{sign}${units}.{decimals}")
}

/// An optional amount: `none` when absent (no cap).
pub fn money_or_none(micros: Option<i64>) -> String {
    micros.map_or_else(|| "none".to_owned(), money)
}

/// An RFC 3339 time as `2026-11-27 12:00:05Z (3m ago)` (or `(in 9m)`).
pub fn time(rfc3339: &str) -> String {
    time_at(rfc3339, Utc::now())
}

/// [`time`] relative to `now`.
pub fn time_at(rfc3339: &str, now: DateTime<Utc>) -> String {
    match DateTime::parse_from_rfc3339(rfc3339) {
        Ok(at) => {
            let at = at.with_timezone(&Utc);
            let absolute = at.format("%Y-%m-%d %H:%M:%SZ");
            let seconds = (now - at).num_seconds();
            let relative = if seconds.abs() < 1 {
                "now".to_owned()
            } else if seconds > 0 {
                format!("{} ago", span(seconds))
            } else {
                format!("in {}", span(-seconds))
            };
            format!("{absolute} ({relative})")
        }
        // Not a time we understand: show it as it came.
        Err(_) => rfc3339.to_owned(),
    }
}

/// An RFC 3339 time as `2026-11-27 12:00:05Z`, without the relative part (for lines that are
/// read later, like `berth watch`'s).
pub fn time_absolute(rfc3339: &str) -> String {
    match DateTime::parse_from_rfc3339(rfc3339) {
        Ok(at) => at
            .with_timezone(&Utc)
            .format("%Y-%m-%d %H:%M:%SZ")
            .to_string(),
        Err(_) => rfc3339.to_owned(),
    }
}

/// An optional time; empty when absent.
pub fn time_opt(rfc3339: Option<&String>) -> String {
    rfc3339.map(|t| time(t)).unwrap_or_default()
}

/// A coarse span for relative times: `45s`, `3m`, `2h`, `4d`.
fn span(seconds: i64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3_600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

/// Seconds as a duration people write: `90` → `1m30s`, `3600` → `1h`, `0` → `0s`.
pub fn duration(seconds: i64) -> String {
    if seconds <= 0 {
        return "0s".to_owned();
    }
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (hours, rest) = (rest / 3_600, rest % 3_600);
    let (minutes, secs) = (rest / 60, rest % 60);
    let mut text = String::new();
    for (value, unit) in [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")] {
        if value > 0 {
            text.push_str(&format!("{value}{unit}"));
        }
    }
    text
}

/// Key=value pairs joined for a cell: `repo=web, run=42`.
pub fn labels<'a>(pairs: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An argv as a shell would read it back: words with spaces or quotes are single-quoted.
pub fn argv(argv: &[String]) -> String {
    argv.iter()
        .map(|word| {
            let plain = !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c));
            if plain {
                word.clone()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Says on stderr how to get the next page, if there is one (tables only).
pub fn more(next_cursor: Option<&String>) {
    if let Some(cursor) = next_cursor {
        eprintln!("(more: add --cursor {cursor})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Money reads as currency with at least two decimals, more only when needed.
    #[test]
    fn money_as_currency() {
        assert_eq!(money(1_250_000), "$1.25");
        assert_eq!(money(100_000), "$0.10");
        assert_eq!(money(0), "$0.00");
        assert_eq!(money(33), "$0.000033");
        assert_eq!(money(12_000_000), "$12.00");
        assert_eq!(money(-500_000), "-$0.50");
        assert_eq!(money(1_234_567), "$1.234567");
    }

    /// Times show the absolute UTC time and how long ago or ahead it is.
    #[test]
    fn times_absolute_and_relative() {
        let now = DateTime::parse_from_rfc3339("2026-11-27T12:03:05Z")
            .expect("valid")
            .with_timezone(&Utc);
        assert_eq!(
            time_at("2026-11-27T12:00:05.000Z", now),
            "2026-11-27 12:00:05Z (3m ago)"
        );
        assert_eq!(
            time_at("2026-11-27T12:13:05Z", now),
            "2026-11-27 12:13:05Z (in 10m)"
        );
        assert_eq!(time_at("soon", now), "soon");
    }

    /// Durations print the way people write them.
    #[test]
    fn durations() {
        assert_eq!(duration(90), "1m30s");
        assert_eq!(duration(3_600), "1h");
        assert_eq!(duration(86_400 + 60), "1d1m");
        assert_eq!(duration(0), "0s");
    }

    /// Columns are padded to their widest cell; right-aligned columns pad on the left.
    #[test]
    fn table_aligns() {
        let mut table = Table::new(&["name", "price"]).right(1);
        table.row(vec!["a".into(), "$1.00".into()]);
        table.row(vec!["longer".into(), "$12.50".into()]);
        assert_eq!(
            table.render(),
            "NAME     PRICE\na        $1.00\nlonger  $12.50\n"
        );
    }
}
