//! The reference parser of JSON objects: serde_json, filling the key tree's slots. The scanner
//! ([`super::scan`]) hands it whatever it is not sure of, and the property tests check the two
//! agree.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserializer as _;

use super::error::{bounded, DecodeError};
use super::keys::{Entry, Node, Scalar, Slots};

/// Fills `slots` from the JSON object in `text` with serde_json: a key the tree holds given
/// twice in its object is a [`DecodeError::DuplicateKey`], anything else wrong is
/// [`DecodeError::NotJson`] in serde_json's words.
pub(super) fn walk<'a>(
    text: &'a str,
    root: &Node,
    slots: &mut Slots<'a>,
) -> Result<(), DecodeError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let dup = std::cell::Cell::new(None);
    de.deserialize_map(ObjectVisitor {
        node: root,
        slots,
        dup: &dup,
    })
    .and_then(|()| de.end())
    .map_err(|e| match dup.take() {
        Some(key) => DecodeError::DuplicateKey { key },
        None => DecodeError::NotJson {
            reason: bounded(e.to_string()),
        },
    })
}

struct ObjectVisitor<'n, 's, 'a> {
    node: &'n Node,
    slots: &'s mut Slots<'a>,
    /// Set to the key that appeared twice, when one did.
    dup: &'s std::cell::Cell<Option<String>>,
}

impl<'de, 'n, 's> Visitor<'de> for ObjectVisitor<'n, 's, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(found) = map.next_key_seed(KeySeed { node: self.node })? {
            match found {
                Some(i) => {
                    let entry = &self.node.entries[i];
                    map.next_value_seed(ValueSeed {
                        entry,
                        slots: &mut *self.slots,
                        dup: self.dup,
                    })?;
                }
                None => {
                    map.next_value_seed(Skip)?;
                }
            }
        }
        Ok(())
    }
}

struct KeySeed<'n> {
    node: &'n Node,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.node.find(v))
    }
}

struct ValueSeed<'n, 's, 'a> {
    entry: &'n Entry,
    slots: &'s mut Slots<'a>,
    dup: &'s std::cell::Cell<Option<String>>,
}

impl<'n, 's, 'a> ValueSeed<'n, 's, 'a> {
    fn set<E: de::Error>(self, value: Scalar<'a>) -> Result<(), E> {
        if self.entry.fill(self.slots, value) {
            return Ok(());
        }
        self.dup.set(Some(self.entry.key().to_string()));
        Err(E::custom(format_args!(
            "duplicate key {:?}",
            self.entry.key()
        )))
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        self.set(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.set(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.set(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.set(Scalar::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.set(Scalar::UInt(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.set(Scalar::Float(v))
    }
    fn visit_bool<E: de::Error>(self, _v: bool) -> Result<(), E> {
        self.set(Scalar::Bool)
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.set(Scalar::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.set(Scalar::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        self.set(Scalar::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        match &self.entry.child {
            Some(node) => {
                let slots = &mut *self.slots;
                ObjectVisitor {
                    node,
                    slots,
                    dup: self.dup,
                }
                .visit_map(map)?;
                // The object itself also fills the entry's own slots (a pointer to an object).
                if self.entry.is_wanted() {
                    return self.set(Scalar::Object);
                }
                Ok(())
            }
            None => {
                Skip.visit_map(map)?;
                self.set(Scalar::Object)
            }
        }
    }
}

/// Skips a value without allocating for nesting (serde's `IgnoredAny` on serde_json keeps a
/// nesting stack in a buffer that a fresh deserializer must allocate).
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }
}
