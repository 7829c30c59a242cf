//! Formats of single JSON-object events (Agent-SPM, AgentShield): the one small interface each
//! implements ([`ObjectFormat`]), and the view of its fields it maps from ([`Fields`]).
//!
//! A format names the JSON pointers it reads; the decoder compiles them into its key tree
//! (each format gets slots of its own) and, for each object, asks the formats in their order
//! whether the object is theirs. A new format is one file with its `FORMAT` and one line in the
//! decoder's registry.

use std::borrow::Cow;

use super::error::DecodeError;
use super::keys::{Scalar, Slots, MAX_SLOTS};
use super::model::AuditEvent;

/// Longest accepted agent id, event id, tool name, environment or group, in bytes: every output
/// derived from an event (incidents, commands, SIEM records) stays far below a broker's 1 MB
/// message limit.
pub const MAX_AGENT_ID_BYTES: usize = 512;

/// One format of single JSON-object events.
pub(super) struct ObjectFormat {
    /// JSON pointers of the fields it reads; `Fields` index them in this order. Formats that
    /// read the same pointer share its slot (only one of them maps an object).
    pub fields: &'static [&'static str],
    /// Whether an object is of this format, from its fields (the first format in the
    /// decoder's registry that claims an object decodes it).
    pub claims: fn(&Fields<'_, '_>) -> bool,
    /// Sets the event's fields from its own, in place (environment, group and volume are the
    /// decoder's: it sets them after).
    pub map: for<'s, 'a> fn(&mut Fields<'s, 'a>, &mut AuditEvent<'a>) -> Result<(), DecodeError>,
}

/// Where each field of a format is: field index → slot.
pub(super) type SlotTable = [u8; MAX_SLOTS];

/// One format's view of an object's slots.
pub(super) struct Fields<'s, 'a> {
    slots: &'s mut Slots<'a>,
    table: &'s SlotTable,
    pointers: &'static [&'static str],
}

impl<'s, 'a> Fields<'s, 'a> {
    /// The view of `format`'s fields, which `table` places in the slots.
    pub(super) fn new(
        slots: &'s mut Slots<'a>,
        table: &'s SlotTable,
        format: &ObjectFormat,
    ) -> Self {
        Fields {
            slots,
            table,
            pointers: format.fields,
        }
    }

    /// The pointer of field `i`.
    #[inline]
    pub(super) fn pointer(&self, i: usize) -> &'static str {
        self.pointers[i]
    }

    /// Whether field `i` is given (not absent, not null).
    #[inline]
    pub(super) fn present(&self, i: usize) -> bool {
        !matches!(
            self.slots[usize::from(self.table[i])],
            Scalar::Absent | Scalar::Null
        )
    }

    /// Takes the value of field `i`.
    #[inline]
    pub(super) fn take(&mut self, i: usize) -> Scalar<'a> {
        std::mem::take(&mut self.slots[usize::from(self.table[i])])
    }

    /// Field `i` as a string, if given (a value read, not kept: an outcome, a type).
    #[inline]
    pub(super) fn text(&mut self, i: usize) -> Result<Option<Cow<'a, str>>, DecodeError> {
        let field = self.pointer(i);
        optional_str(self.take(i), field)
    }

    /// Field `i` as a string of at most [`MAX_AGENT_ID_BYTES`] (an id the outputs carry), if
    /// given.
    #[inline]
    pub(super) fn optional_str(&mut self, i: usize) -> Result<Option<Cow<'a, str>>, DecodeError> {
        let field = self.pointer(i);
        optional_id(self.take(i), field)
    }

    /// Field `i` as a non-empty string of at most [`MAX_AGENT_ID_BYTES`].
    #[inline]
    pub(super) fn required_str(&mut self, i: usize) -> Result<Cow<'a, str>, DecodeError> {
        let field = self.pointer(i);
        match self.optional_str(i)? {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(DecodeError::MissingField { field }),
        }
    }
}

/// A value as a string, if given; `field` names it in errors.
#[inline]
pub(super) fn optional_str<'a>(
    s: Scalar<'a>,
    field: &str,
) -> Result<Option<Cow<'a, str>>, DecodeError> {
    match s {
        Scalar::Absent | Scalar::Null => Ok(None),
        Scalar::Str(v) => Ok(Some(v)),
        _ => Err(wrong(field, "a string")),
    }
}

/// A value as a string of at most [`MAX_AGENT_ID_BYTES`] (an id the outputs carry), if given;
/// `field` names it in errors.
#[inline]
pub(super) fn optional_id<'a>(
    s: Scalar<'a>,
    field: &str,
) -> Result<Option<Cow<'a, str>>, DecodeError> {
    let v = optional_str(s, field)?;
    if let Some(v) = v.as_deref().filter(|v| v.len() > MAX_AGENT_ID_BYTES) {
        return Err(DecodeError::InvalidValue {
            field: field.into(),
            reason: format!("{} bytes, more than {MAX_AGENT_ID_BYTES}", v.len()),
        });
    }
    Ok(v)
}

/// The error of a value of the wrong JSON type.
pub(super) fn wrong(field: &str, expected: &'static str) -> DecodeError {
    DecodeError::WrongType {
        field: field.to_string(),
        expected,
    }
}

/// `s` quoted for an error message, cut to its first 64 bytes (with its size) when longer.
pub(super) fn quoted(s: &str) -> String {
    const SHOWN: usize = 64;
    if s.len() <= SHOWN {
        return format!("{s:?}");
    }
    let mut end = SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &s[..end], s.len())
}
