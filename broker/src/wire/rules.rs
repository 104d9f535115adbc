//! Rules about the values of a request, declared once and used twice: the server checks
//! requests with them ([`Validate`], called by the API's body and query extractors) and
//! `/openapi.json` publishes them ([`Rule::constrain`], applied to the generated schema by
//! `api::openapi`), so what the spec promises and what the server accepts cannot drift.
//!
//! A rule is what JSON Schema can say about one value: an integer range, a string's length,
//! pattern and format, an enumeration, a list's length and items, a map's size, keys and
//! values. Rules that depend on the tenant (a TTL within its `max_ttl_s`, a pool that exists)
//! or on several fields at once stay in the tenant object; the spec says them in prose.
//!
//! A request type lists its fields' rules with [`rules!`](crate::wire::rules!): one line per
//! field, which generates both its check ([`Validate::validate`]) and its list for the schema
//! ([`Validate::rules`]).
//!
//! Lengths count characters (Unicode scalar values), as JSON Schema's `minLength` and
//! `maxLength` do. Patterns are checked with the `regex` crate, compiled once per pattern
//! (never per request); every pattern here is written in the subset that Rust's regex and
//! ECMA 262 (JSON Schema's dialect) read alike, and anchored with `^…$`, since JSON Schema
//! patterns are not anchored otherwise.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use regex::Regex;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayItems, KnownFormat, Object, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{Array, RefOr};

/// One rule about one value.
#[derive(Debug)]
pub enum Rule {
    /// An integer in `min..=max`.
    Int { min: i64, max: i64 },
    /// A string.
    Text(Text),
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// A list of `min..=max` items (no upper bound when `max` is `None`), each following `item`.
    List {
        min: usize,
        max: Option<usize>,
        item: &'static Rule,
    },
    /// An object of at most `max` entries whose keys and values are strings following `key`
    /// and `value`.
    Map {
        max: usize,
        key: &'static Text,
        value: &'static Text,
    },
}

/// What a string must be: `min..=max` characters, matching `pattern` if any, of `format` if any
/// (a format only documents; the pattern and the length are what is checked).
#[derive(Debug)]
pub struct Text {
    pub min: usize,
    pub max: Option<usize>,
    pub pattern: Option<Pattern>,
    /// The pattern in words, for error messages (`of lowercase letters, digits and -`).
    pub says: &'static str,
    pub format: Option<Format>,
}

impl Text {
    /// Any string of `min..=max` characters.
    pub const fn length(min: usize, max: usize) -> Text {
        Text {
            min,
            max: Some(max),
            pattern: None,
            says: "",
            format: None,
        }
    }
}

/// A string format.
#[derive(Clone, Copy, Debug)]
pub enum Format {
    /// `uri` (RFC 3986): documents; the pattern and the length are what is checked.
    Uri,
    /// `date-time` (RFC 3339) or `date` (`YYYY-MM-DD`): checked by parsing.
    DateTimeOrDate,
}

/// A time given as RFC 3339 (`2026-11-27T12:00:00Z`) or as a date (`2026-11-27`, its
/// midnight UTC), in Unix milliseconds: what [`Format::DateTimeOrDate`] accepts.
pub fn parse_time(text: &str) -> Option<i64> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(time.timestamp_millis());
    }
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

/// A regular expression, compiled the first time it is used.
#[derive(Debug)]
pub struct Pattern {
    source: &'static str,
    compiled: OnceLock<Regex>,
}

impl Pattern {
    /// `source` must be anchored (`^…$`) and valid for both Rust's regex and ECMA 262.
    pub const fn new(source: &'static str) -> Pattern {
        Pattern {
            source,
            compiled: OnceLock::new(),
        }
    }

    /// The pattern as written in the schema.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// Whether `text` matches.
    pub fn is_match(&self, text: &str) -> bool {
        self.compiled
            .get_or_init(|| Regex::new(self.source).expect("BUG: the rules' patterns compile"))
            .is_match(text)
    }
}

impl Rule {
    /// Checks an integer (`i128` holds every integer type a request has).
    pub fn check_int(&self, field: &str, value: i128) -> Result<(), String> {
        match self {
            Rule::Int { min, max } if !(i128::from(*min)..=i128::from(*max)).contains(&value) => {
                Err(format!("`{field}` must be between {min} and {max}"))
            }
            Rule::Int { .. } => Ok(()),
            _ => Err(format!("`{field}` must not be a number")),
        }
    }

    /// Checks a string.
    pub fn check_str(&self, field: &str, value: &str) -> Result<(), String> {
        match self {
            Rule::Text(text) => text.check(field, value),
            Rule::OneOf(names) if names.contains(&value) => Ok(()),
            Rule::OneOf(names) => Err(format!("`{field}` takes {}", one_of(names))),
            _ => Err(format!("`{field}` must not be a string")),
        }
    }

    /// Checks a list of strings.
    pub fn check_list<'a>(
        &self,
        field: &str,
        items: impl ExactSizeIterator<Item = &'a str>,
    ) -> Result<(), String> {
        let Rule::List { min, max, item } = self else {
            return Err(format!("`{field}` must not be a list"));
        };
        let n = items.len();
        if n < *min || max.is_some_and(|max| n > max) {
            return Err(match max {
                Some(max) if max == min => format!("`{field}` takes {min} items"),
                Some(max) => format!("`{field}` takes {min} to {max} items"),
                None if *min == 1 => format!("`{field}` takes at least one item"),
                None => format!("`{field}` takes at least {min} items"),
            });
        }
        for value in items {
            item.check_str(field, value)
                .map_err(|why| format!("{why} (in `{field}`: `{}`)", shown(value)))?;
        }
        Ok(())
    }

    /// Checks a map of strings.
    pub fn check_map(&self, field: &str, map: &BTreeMap<String, String>) -> Result<(), String> {
        let Rule::Map { max, key, value } = self else {
            return Err(format!("`{field}` must not be an object"));
        };
        if map.len() > *max {
            return Err(format!("`{field}` takes at most {max} entries"));
        }
        for (k, v) in map {
            key.check(&format!("{field}` key `{}", shown(k)), k)?;
            value.check(&format!("{field}.{}", shown(k)), v)?;
        }
        Ok(())
    }

    /// Writes this rule into the schema of the value it is about.
    ///
    /// # Panics
    ///
    /// If the schema is not of the rule's kind (a rule about a string on an integer's schema):
    /// a bug in a declaration, which the tests of the spec meet first.
    pub fn constrain(&self, schema: &mut RefOr<Schema>, what: &str) {
        match (self, schema) {
            (Rule::Int { min, max }, RefOr::T(Schema::Object(object))) => {
                assert!(
                    has_type(&object.schema_type, Type::Integer),
                    "BUG: an integer rule on {what}, which is no integer"
                );
                object.minimum = Some(utoipa::Number::Int(to_isize(*min)));
                object.maximum = Some(utoipa::Number::Int(to_isize(*max)));
            }
            (Rule::Text(text), RefOr::T(Schema::Object(object))) => {
                assert!(
                    has_type(&object.schema_type, Type::String),
                    "BUG: a string rule on {what}, which is no string"
                );
                text.constrain(object);
            }
            (Rule::OneOf(names), schema) => {
                let nullable = matches!(schema, RefOr::T(Schema::Object(object)) if has_type(&object.schema_type, Type::Null));
                let mut values: Vec<serde_json::Value> =
                    names.iter().map(|name| (*name).into()).collect();
                if nullable {
                    values.push(serde_json::Value::Null);
                }
                let mut object = match schema {
                    RefOr::T(Schema::Object(object)) => std::mem::take(object),
                    // An enum type's reference (`Scope`) becomes the rule's own enumeration.
                    _ => Object::with_type(Type::String),
                };
                object.enum_values = Some(values);
                *schema = RefOr::T(Schema::Object(object));
            }
            (Rule::List { min, max, item }, RefOr::T(Schema::Array(array))) => {
                array.min_items = Some(*min);
                array.max_items = *max;
                constrain_items(array, item, what);
            }
            (Rule::Map { max, key, value }, RefOr::T(Schema::Object(object))) => {
                object.max_properties = Some(*max);
                let mut keys = Object::with_type(Type::String);
                key.constrain(&mut keys);
                object.property_names = Some(Box::new(Schema::Object(keys)));
                let mut values = Object::with_type(Type::String);
                value.constrain(&mut values);
                object.additional_properties = Some(Box::new(AdditionalProperties::RefOr(
                    RefOr::T(Schema::Object(values)),
                )));
            }
            (rule, _) => panic!("BUG: rule {rule:?} does not fit the schema of {what}"),
        }
    }
}

impl Text {
    /// Checks a string against this rule.
    pub fn check(&self, field: &str, value: &str) -> Result<(), String> {
        // Count at most one past the bound, so a huge string is not counted to its end.
        let bound = self.max.map_or(self.min, |max| max.max(self.min)) + 1;
        let n = value.chars().take(bound).count();
        let long_enough = n >= self.min;
        let short_enough = self.max.is_none_or(|max| n <= max);
        let matches = self
            .pattern
            .as_ref()
            .is_none_or(|pattern| pattern.is_match(value))
            && match self.format {
                Some(Format::DateTimeOrDate) => parse_time(value).is_some(),
                Some(Format::Uri) | None => true,
            };
        if long_enough && short_enough && matches {
            return Ok(());
        }
        let length = match (self.min, self.max) {
            (0, Some(max)) => Some(format!("at most {max} characters")),
            (min, Some(max)) => Some(format!("{min}–{max} characters")),
            (0 | 1, None) => None,
            (min, None) => Some(format!("at least {min} characters")),
        };
        let words: Vec<&str> = length
            .as_deref()
            .into_iter()
            .chain((!self.says.is_empty()).then_some(self.says))
            .collect();
        if words.is_empty() {
            return Err(format!("`{field}` must not be empty"));
        }
        Err(format!("`{field}` must be {}", words.join(" ")))
    }

    fn constrain(&self, object: &mut Object) {
        object.min_length = (self.min > 0).then_some(self.min);
        object.max_length = self.max;
        object.pattern = self.pattern.as_ref().map(|p| p.source().to_owned());
        match self.format {
            Some(Format::Uri) => {
                object.format = Some(SchemaFormat::Custom("uri".to_owned()));
            }
            // JSON Schema has no "either" format; `date-time` with a date-only pattern as the
            // alternative would need `anyOf`, so the date form is documented in words.
            Some(Format::DateTimeOrDate) => {
                object.format = Some(SchemaFormat::KnownFormat(KnownFormat::DateTime));
            }
            None => {}
        }
    }
}

fn constrain_items(array: &mut Array, item: &Rule, what: &str) {
    let what = format!("the items of {what}");
    match &mut array.items {
        ArrayItems::RefOrSchema(items) => item.constrain(items, &what),
        ArrayItems::False => panic!("BUG: {what} cannot hold items"),
    }
}

fn has_type(schema_type: &SchemaType, wanted: Type) -> bool {
    match schema_type {
        SchemaType::Type(t) => *t == wanted,
        SchemaType::Array(types) => types.contains(&wanted),
        SchemaType::AnyValue => false,
    }
}

fn to_isize(n: i64) -> isize {
    isize::try_from(n).expect("BUG: berth runs on 64-bit targets")
}

/// `` `a`, `b` or `c` ``.
fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => "nothing".to_owned(),
    }
}

/// Client text echoed in an error, cut short and without control characters.
fn shown(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// A request (a body, or the query of a route) whose values follow declared rules.
pub trait Validate {
    /// Each field's name (as in JSON or the query) and its rule, for the schema.
    fn rules() -> Vec<(&'static str, &'static Rule)>
    where
        Self: Sized;

    /// Checks every field against its rule, and nested requests against theirs.
    ///
    /// # Errors
    ///
    /// The first broken rule, in words for people.
    fn validate(&self) -> Result<(), String>;
}

/// A value a rule checks: integers, strings, lists and maps of strings, optional or not.
pub trait Checked {
    /// Checks this value against `rule`.
    ///
    /// # Errors
    ///
    /// The broken rule, in words for people.
    fn check(&self, rule: &Rule, field: &str) -> Result<(), String>;
}

macro_rules! checked_int {
    ($($t:ty),*) => {$(
        impl Checked for $t {
            fn check(&self, rule: &Rule, field: &str) -> Result<(), String> {
                rule.check_int(field, i128::from(*self))
            }
        }
    )*};
}
checked_int!(i64, u64, u32);

impl Checked for usize {
    fn check(&self, rule: &Rule, field: &str) -> Result<(), String> {
        rule.check_int(field, i128::try_from(*self).unwrap_or(i128::MAX))
    }
}

impl Checked for String {
    fn check(&self, rule: &Rule, field: &str) -> Result<(), String> {
        rule.check_str(field, self)
    }
}

impl Checked for Vec<String> {
    fn check(&self, rule: &Rule, field: &str) -> Result<(), String> {
        rule.check_list(field, self.iter().map(String::as_str))
    }
}

impl Checked for BTreeMap<String, String> {
    fn check(&self, rule: &Rule, field: &str) -> Result<(), String> {
        rule.check_map(field, self)
    }
}

impl<T: Checked> Checked for Option<T> {
    fn check(&self, rule: &Rule, field: &str) -> Result<(), String> {
        self.as_ref()
            .map_or(Ok(()), |value| value.check(rule, field))
    }
}

/// A nested request whose own rules apply (`limits` of a tenant).
pub trait Nested {
    /// Validates the nested request, if present.
    ///
    /// # Errors
    ///
    /// The first broken rule.
    fn validate_nested(&self) -> Result<(), String>;
}

impl<T: Validate> Nested for T {
    fn validate_nested(&self) -> Result<(), String> {
        self.validate()
    }
}

impl<T: Validate> Nested for Option<T> {
    fn validate_nested(&self) -> Result<(), String> {
        self.as_ref().map_or(Ok(()), Validate::validate)
    }
}

/// Declares the rules of a request type's fields: `rules!(Type { field: RULE, … })`, with an
/// optional `nested { field, … }` for fields that are requests with rules of their own.
/// Generates the type's [`Validate`].
macro_rules! rules {
    ($ty:ty { $($field:ident : $rule:expr),* $(,)? } $(nested { $($nested:ident),* $(,)? })?) => {
        impl $crate::wire::rules::Validate for $ty {
            fn rules() -> Vec<(&'static str, &'static $crate::wire::rules::Rule)> {
                vec![$((stringify!($field), &$rule)),*]
            }

            fn validate(&self) -> Result<(), String> {
                $($crate::wire::rules::Checked::check(&self.$field, &$rule, stringify!($field))?;)*
                $($($crate::wire::rules::Nested::validate_nested(&self.$nested)?;)*)?
                Ok(())
            }
        }
    };
}
pub(crate) use rules;
