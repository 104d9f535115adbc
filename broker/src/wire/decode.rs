//! How request bodies are read, where serde's derives read more than the schema allows:
//!
//! - [`object`] — a request object only from a JSON object (the derives also take an array of
//!   its fields in order);
//! - [`integer`] — an integer as JSON Schema reads one (`60` or `60.0`; serde's `i64` takes
//!   only the first).

/// Deserializes a request object from a JSON object only: serde's derived structs also take
/// a JSON array of their fields in order, which would let `[null, 5]` set fields by position.
/// Used for every request body (by the API's body extractor) and every nested request
/// (`#[serde(deserialize_with = …)]`).
pub mod object {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::value::MapAccessDeserializer;
    use serde::de::{Deserialize, Deserializer, Error, MapAccess, Visitor};

    struct ObjectVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(MapAccessDeserializer::new(map))
        }
    }

    /// A `T` from a JSON object, never from an array.
    ///
    /// # Errors
    ///
    /// Anything but an object, or an object `T` refuses.
    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<T, D::Error> {
        d.deserialize_map(ObjectVisitor(PhantomData))
    }

    struct OptionalVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for OptionalVisitor<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object or null")
        }

        fn visit_none<E: Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_unit<E: Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
            deserialize(d).map(Some)
        }
    }

    /// An optional `T` from a JSON object or `null`, never from an array.
    ///
    /// # Errors
    ///
    /// Anything but an object or `null`, or an object `T` refuses.
    pub fn optional<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        d.deserialize_option(OptionalVisitor(PhantomData))
    }
}

/// Integers of a request as JSON Schema reads them: a number with no fractional part, written
/// `60` or `60.0` (serde's `i64` takes only the first). The schema says `integer`, and a client
/// that sends `60.0` sent a schema-valid integer.
pub mod integer {
    use std::fmt;

    use serde::de::{Deserialize, Deserializer, Error, Visitor};

    /// An integer of a request.
    pub struct Integer(pub i64);

    struct IntegerVisitor;

    impl Visitor<'_> for IntegerVisitor {
        type Value = Integer;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer")
        }

        fn visit_i64<E: Error>(self, value: i64) -> Result<Integer, E> {
            Ok(Integer(value))
        }

        fn visit_u64<E: Error>(self, value: u64) -> Result<Integer, E> {
            i64::try_from(value)
                .map(Integer)
                .map_err(|_| E::custom(format!("{value} is out of range")))
        }

        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        fn visit_f64<E: Error>(self, value: f64) -> Result<Integer, E> {
            // -2^63 and 2^63 as floats; every integral float in between converts exactly.
            const LOW: f64 = -9_223_372_036_854_775_808.0;
            if value.fract() == 0.0 && (LOW..-LOW).contains(&value) {
                Ok(Integer(value as i64))
            } else {
                Err(E::custom(format!(
                    "invalid type: {value}, expected an integer"
                )))
            }
        }
    }

    impl<'de> Deserialize<'de> for Integer {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Integer, D::Error> {
            d.deserialize_any(IntegerVisitor)
        }
    }

    /// A required integer field.
    ///
    /// # Errors
    ///
    /// Anything but an integer.
    pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        Integer::deserialize(d).map(|Integer(n)| n)
    }

    /// An optional integer field (`null` or absent: `None`).
    ///
    /// # Errors
    ///
    /// Anything but an integer or `null`.
    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Option::<Integer>::deserialize(d).map(|value| value.map(|Integer(n)| n))
    }

    /// A field of a patch: absent (`None`, by `#[serde(default)]`), `null` (`Some(None)`) or
    /// an integer.
    ///
    /// # Errors
    ///
    /// Anything but an integer or `null`.
    pub fn nullable<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
        optional(d).map(Some)
    }
}
