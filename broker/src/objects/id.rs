//! Object addresses.

use std::fmt;

use sha2::{Digest, Sha256};

/// The address of one durable object inside its namespace: 32 bytes, shown as 64 hex digits.
///
/// Ids made by [`ObjectId::from_name`] are deterministic (SHA-256 of the namespace and the
/// name), so every node and every restart finds the same object for the same name. Ids made by
/// [`ObjectId::new_unique`] are random.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId([u8; 32]);

impl ObjectId {
    /// The id of the object called `name` in `namespace`.
    pub fn from_name(namespace: &str, name: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"berth-object-v1\0");
        hasher.update(namespace.as_bytes());
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        hasher.update([0u8]);
        hasher.update(name.as_bytes());
        ObjectId(hasher.finalize().into())
    }

    /// A fresh random id.
    pub fn new_unique() -> Self {
        ObjectId(rand::random())
    }

    /// Parses 64 hex digits.
    pub fn parse(hex_id: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_id, &mut bytes).ok()?;
        Some(ObjectId(bytes))
    }

    /// The id's 32 bytes.
    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The id whose bytes are `bytes`.
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
        ObjectId(bytes)
    }

    /// The id as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight digits are plenty to tell objects apart in logs and test output.
        write!(f, "ObjectId({}…)", &self.to_hex()[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names map to stable ids, different per namespace; unique ids differ.
    #[test]
    fn ids_are_deterministic_by_name() {
        let a = ObjectId::from_name("tenant", "acme");
        assert_eq!(a, ObjectId::from_name("tenant", "acme"));
        assert_ne!(a, ObjectId::from_name("limiter", "acme"));
        assert_ne!(
            ObjectId::from_name("ab", "c"),
            ObjectId::from_name("a", "bc")
        );
        assert_ne!(ObjectId::new_unique(), ObjectId::new_unique());
        assert_eq!(ObjectId::parse(&a.to_hex()), Some(a));
        assert_eq!(ObjectId::parse("zz"), None);
    }
}
