//! The key tree: the JSON pointers a decoder reads, compiled into one tree of object keys, each
//! key found with one hash and one comparison; and the slots their values fill.
//!
//! Shared by both parsers of JSON objects ([`super::scan`], the fast one, and [`super::walk`],
//! serde_json's) and by the formats that read the slots ([`super::object`]).
//!
//! Layer: uses nothing outside `event`.

use std::borrow::Cow;

/// Most slots a decoder fills: the fields of every JSON-object format and the shared ones (a
/// compile-time check in the decoder says when a new format needs more). Kept tight: the slots
/// are initialised and moved once per event.
pub(super) const MAX_SLOTS: usize = 16;

/// The values of one object's wanted fields, by slot.
pub(super) type Slots<'a> = [Scalar<'a>; MAX_SLOTS];

/// A JSON value reduced to what the decoder needs to know about it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) enum Scalar<'a> {
    #[default]
    Absent,
    Null,
    Str(Cow<'a, str>),
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool,
    Object,
    Array,
}

/// One key of an object in the tree: the slots its value fills and the keys below it.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) key: String,
    /// `key` packed for comparison (see [`pack`]).
    packed: Option<u128>,
    /// The slots its value fills, one bit per slot.
    slots: u32,
    /// Keys that matter inside this key's value when it is an object.
    pub(super) child: Option<Node>,
}

impl Entry {
    /// Whether a pointer ends at this key (its value itself is wanted).
    pub(super) fn is_wanted(&self) -> bool {
        self.slots != 0
    }

    /// Stores the key's value in every slot it fills; `false` (and nothing stored) when a slot
    /// is filled already: the key appeared twice in its object.
    #[must_use]
    pub(super) fn fill<'a>(&self, slots: &mut Slots<'a>, value: Scalar<'a>) -> bool {
        let mut bits = self.slots;
        let mut check = bits;
        while check != 0 {
            let s = check.trailing_zeros() as usize;
            check &= check - 1;
            if slots[s] != Scalar::Absent {
                return false;
            }
        }
        while bits != 0 {
            let s = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if bits == 0 {
                slots[s] = value;
                return true;
            }
            slots[s] = value.clone();
        }
        true
    }

    /// The key.
    pub(super) fn key(&self) -> &str {
        &self.key
    }
}

/// The keys of one object that matter.
#[derive(Debug, Clone, Default)]
pub(super) struct Node {
    /// The keys, in the order they were configured.
    pub(super) entries: Vec<Entry>,
    /// A perfect hash of the [`pack`]ed keys: slot → (packed key, entry index + 1), 0 when
    /// empty; a power-of-two length, or empty when no key packs.
    pub(super) table: Vec<(u128, usize)>,
    /// Multiplier of the hash (see [`Node::slot`]).
    pub(super) mul: u64,
}

impl Node {
    /// Adds the key path `path` (an object key per level) whose value fills `slot`.
    pub(super) fn insert(&mut self, path: &[String], slot: usize) {
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        let idx = match self.entries.iter().position(|e| &e.key == first) {
            Some(i) => i,
            None => {
                self.entries.push(Entry {
                    key: first.clone(),
                    packed: pack(first.as_bytes(), 0, first.len()),
                    slots: 0,
                    child: None,
                });
                self.entries.len() - 1
            }
        };
        self.index_keys();
        let entry = &mut self.entries[idx];
        if rest.is_empty() {
            entry.slots |= 1 << slot;
        } else {
            entry
                .child
                .get_or_insert_with(Node::default)
                .insert(rest, slot);
        }
    }

    /// Rebuilds [`Node::table`]: the smallest table (at least four slots per key) and the
    /// first multiplier of a fixed sequence under which no two packed keys share a slot. Should
    /// none be found up to [`MAX_KEY_TABLE`] slots, the table stays empty and keys are compared
    /// one by one.
    fn index_keys(&mut self) {
        let keys: Vec<(u128, usize)> = self
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.packed.map(|p| (p, i + 1)))
            .collect();
        self.table.clear();
        if keys.is_empty() {
            return;
        }
        let mut len = (keys.len() * 4).next_power_of_two();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        while len <= MAX_KEY_TABLE {
            for _ in 0..64 {
                // splitmix64: a fixed sequence of odd multipliers, so the table is reproducible.
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                let mul = (z ^ (z >> 31)) | 1;
                let mut table = vec![(0u128, 0usize); len];
                let free = keys.iter().all(|&(p, i)| {
                    let slot = &mut table[Node::slot(p, mul, len)];
                    let free = slot.1 == 0;
                    *slot = (p, i);
                    free
                });
                if free {
                    self.table = table;
                    self.mul = mul;
                    return;
                }
            }
            len *= 2;
        }
    }

    /// Slot of a packed key in a table of `len` (a power of two) under multiplier `mul`.
    #[inline]
    fn slot(packed: u128, mul: u64, len: usize) -> usize {
        // The low half is multiplied before the halves meet, so two keys whose halves merely
        // xor to the same word do not share a slot under every multiplier.
        let x = (packed as u64).wrapping_mul(mul) ^ ((packed >> 64) as u64);
        (x.wrapping_mul(mul) >> (64 - len.trailing_zeros())) as usize
    }

    /// Index of `key` among the entries, if it matters.
    pub(super) fn find(&self, key: &str) -> Option<usize> {
        self.find_packed(pack(key.as_bytes(), 0, key.len()), key)
    }

    /// Index of `key` among the entries, given its [`pack`]ed form.
    pub(super) fn find_packed(&self, packed: Option<u128>, key: &str) -> Option<usize> {
        match packed {
            Some(p) => {
                let len = self.table.len();
                if len == 0 {
                    return self.entries.iter().position(|e| e.packed == Some(p));
                }
                match self.table.get(Node::slot(p, self.mul, len)) {
                    Some(&(k, i)) if k == p && i != 0 => Some(i - 1),
                    _ => None,
                }
            }
            None => self.entries.iter().position(|e| e.key == key),
        }
    }
}

/// Largest key table of a node (slots); beyond it keys are compared one by one.
const MAX_KEY_TABLE: usize = 1 << 12;

/// The key of `len` bytes at `start` of `bytes`, if at most 15 bytes long, as one number (its
/// bytes, then its length), so that a node finds it with one hash and one comparison (see
/// [`Node::find_packed`]). When 16 bytes are there to read it is one load and a mask.
pub(super) fn pack(bytes: &[u8], start: usize, len: usize) -> Option<u128> {
    if len > 15 {
        return None;
    }
    let word = match bytes.get(start..start + 16) {
        Some(chunk) => u128::from_le_bytes(chunk.try_into().ok()?),
        None => {
            let mut buf = [0u8; 16];
            buf[..len].copy_from_slice(bytes.get(start..start + len)?);
            u128::from_le_bytes(buf)
        }
    };
    Some(word & ((1u128 << (8 * len)) - 1) | (len as u128) << 120)
}

/// Splits an RFC 6901 JSON pointer into its unescaped keys; `None` if it is not a pointer to a key.
pub(crate) fn parse_pointer(pointer: &str) -> Option<Vec<String>> {
    let rest = pointer.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}
