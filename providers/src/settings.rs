//! Parsing of an account's config and credentials, shared by every kind.
//!
//! Config is not secret: serde's own messages (which may quote a value) are fine there.
//! Credentials are secret: their messages are written here by hand and name only the fields
//! the kind expects, never a value nor an unexpected key (which could be a pasted secret).

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::ConfigError;

/// Parses an account's config into `T` (which should `#[serde(deny_unknown_fields)]`).
/// `null` counts as `{}`.
pub(crate) fn config<T: DeserializeOwned>(kind: &str, value: &Value) -> Result<T, ConfigError> {
    let value = match value {
        Value::Null => Value::Object(serde_json::Map::new()),
        Value::Object(_) => value.clone(),
        _ => {
            return Err(ConfigError(format!(
                "`{kind}` config must be a JSON object"
            )));
        }
    };
    serde_json::from_value(value).map_err(|e| ConfigError(format!("invalid `{kind}` config: {e}")))
}

/// Checks that a kind without credentials got none: `null` or `{}`.
pub(crate) fn no_credentials(kind: &str, value: &Value) -> Result<(), ConfigError> {
    match value {
        Value::Null => Ok(()),
        Value::Object(map) if map.is_empty() => Ok(()),
        _ => Err(ConfigError(format!(
            "`{kind}` takes no credentials: send `{{}}` or `null`"
        ))),
    }
}

/// Reads credentials of the shape `{"<field>": "<non-empty string>"}` and nothing else.
///
/// # Errors
///
/// Any other shape, with a message that never contains a credential value.
pub(crate) fn one_secret(kind: &str, value: &Value, field: &str) -> Result<String, ConfigError> {
    let shape = format!("`{kind}` credentials must be {{\"{field}\": \"…\"}}");
    let Value::Object(map) = value else {
        return Err(ConfigError(shape));
    };
    // The unknown key itself is not echoed: a secret pasted as a key must not leak.
    if map.keys().any(|key| key.as_str() != field) {
        return Err(ConfigError(format!(
            "{shape}; it has another field besides `{field}`"
        )));
    }
    match map.get(field) {
        Some(Value::String(secret)) if !secret.trim().is_empty() => Ok(secret.clone()),
        Some(Value::String(_)) => Err(ConfigError(format!("{shape}; `{field}` is empty"))),
        Some(_) => Err(ConfigError(format!("{shape}; `{field}` must be a string"))),
        None => Err(ConfigError(format!("{shape}; `{field}` is missing"))),
    }
}

/// A user-supplied name (an unknown kind, say), shortened and quoted for an error message.
pub(crate) fn printable(text: &str) -> String {
    let short: String = text.chars().take(40).collect();
    let quoted = format!("{short:?}");
    // Strip the quotes `{:?}` adds; the escaping of control characters is what we want.
    quoted.trim_matches('"').to_string()
}

/// Shortens `text` to at most `max` bytes on a character boundary, marking the cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A credential value never appears in any credentials error.
    #[test]
    fn credential_errors_never_echo_values() {
        let secret = "s3cr3t-VALUE-0123456789";
        let cases = [
            json!({"token": secret, "extra": secret}),
            json!({"tok": secret}),
            json!({ secret: "x" }),
            json!({"token": 42}),
            json!(secret),
            json!([secret]),
        ];
        for case in cases {
            let error = one_secret("hetzner", &case, "token").unwrap_err();
            assert!(!error.0.contains(secret), "{error}");
        }
    }

    /// Good credentials pass; an extra field is refused.
    #[test]
    fn one_secret_accepts_exact_shape() {
        assert_eq!(
            one_secret("http", &json!({"secret": "whsec_x"}), "secret").unwrap(),
            "whsec_x"
        );
        let error = one_secret("http", &json!({"secret": "a", "url": "b"}), "secret").unwrap_err();
        assert!(
            error.0.contains("another field besides `secret`"),
            "{error}"
        );
        assert!(one_secret("http", &json!({"secret": " "}), "secret").is_err());
        assert!(one_secret("http", &json!({}), "secret").is_err());
    }

    /// `null` and `{}` are "no credentials"; anything else is refused.
    #[test]
    fn no_credentials_accepts_null_and_empty() {
        assert!(no_credentials("fake", &Value::Null).is_ok());
        assert!(no_credentials("fake", &json!({})).is_ok());
        assert!(no_credentials("fake", &json!({"token": "x"})).is_err());
        assert!(no_credentials("fake", &json!("x")).is_err());
    }

    /// Truncation respects character boundaries.
    #[test]
    fn truncate_on_char_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("aéé", 2), "a…");
        assert_eq!(truncate("abcdef", 3), "abc…");
    }
}
