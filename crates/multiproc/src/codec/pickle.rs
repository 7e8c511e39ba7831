//! The pickle codec, for CPython peers: [`Pickle`] encodes values the way CPython's
//! `pickle.dumps` would for plain data, and decodes what CPython's `pickle.dumps` (any
//! protocol, 0 to 5; CPython's `multiprocessing` uses its default, 4 in 3.11 to 3.13) makes of
//! plain data. [`PyValue`] holds any such value when the Rust side does not know its shape.
//!
//! # Type mapping
//!
//! | Rust (serde data model) | Python | back to Rust from |
//! |---|---|---|
//! | `bool` | `bool` | `bool` |
//! | `i8` ... `i128`, `u8` ... `u128` | `int` | `int` in the target's range, else an error |
//! | `f32`, `f64` (NaN, infinities included) | `float` | `float` (or `int`) |
//! | `char`, `&str`, `String` | `str` | `str` (a one-character `str` for `char`) |
//! | bytes: `serde_bytes::ByteBuf`, `#[serde(with = "serde_bytes")]` | `bytes` | `bytes`, `bytearray` |
//! | `Vec<u8>` (a sequence, *not* bytes) | `list` of `int` | `list`, `tuple`, `bytes`, `bytearray` |
//! | `()`, unit structs, `None` | `None` | `None` (also `()` for `()`) |
//! | `Some(x)` | `x` | anything but `None` |
//! | `Vec<T>`, `VecDeque<T>`, `HashSet<T>`, `BTreeSet<T>`, slices | `list` | `list`, `tuple`, `set`, `frozenset` |
//! | tuples `(A, B, ...)`, tuple structs, arrays `[T; N]` | `tuple` | `tuple`, `list` of that length (`bytes` for `[u8; N]`) |
//! | `HashMap<K, V>`, `BTreeMap<K, V>` | `dict` (in iteration order) | `dict` |
//! | structs | `dict` of field name to value | `dict` with those `str` keys (others ignored) |
//! | enum unit variant `E::A` | `'A'` | `'A'` |
//! | newtype variant `E::B(x)` | `{'B': x}` | `{'B': x}`, `('B', x)` |
//! | tuple variant `E::C(x, y)` | `{'C': (x, y)}` | `{'C': (x, y)}` or `{'C': [x, y]}` |
//! | struct variant `E::D { x }` | `{'D': {'x': x}}` | the same |
//! | [`PyValue`] | its own variant (`Set` is a `set`, `Tuple` a `tuple`, ...) | anything plain |
//!
//! Enums use serde's usual "externally tagged" form (as in JSON), so a Python peer sees
//! strings and one-entry dicts. On decoding, the tuple form `('B', x)` that `serde-pickle`
//! writes with its `compat_enum_repr` option is accepted too.
//!
//! Python's integers have no size: one that does not fit the Rust target type is an error that
//! names the value, never a silent wrap. Integers up to 2048 bytes (about 4900 decimal
//! digits) are read; [`PyValue`] holds those beyond 128 bits as decimal text.
//!
//! # What is refused
//!
//! Only plain data crosses. Decoding fails with a `cannot decode pickle: ...` error, naming
//! what it met, for:
//! - an instance of any class other than the built-in ones above (a dataclass, a
//!   `datetime`, a `Decimal`, an `OrderedDict`, a `complex`, ...): the pickle refers to a
//!   global such as `__main__.Point`, and the only globals accepted are those CPython uses
//!   for plain data (`set`, `frozenset`, `bytearray`, `bytes` and `_codecs.encode`, which old
//!   protocols use to spell sets and bytes; `copyreg._reconstructor`, with which protocols 0
//!   and 1 build any instance, is only read so that the error names the class after it);
//! - a structure that contains itself (`l = []; l.append(l)`), nesting deeper than
//!   512 levels, or shared references (pickle's memo) that would expand the value past 64
//!   MiB plus 64 bytes for every byte of the message;
//! - out-of-band buffers (protocol 5's `buffer_callback`), Python 2 `str` (protocols 0 to 2
//!   `STRING` opcodes), persistent ids and the copyreg extension registry;
//! - a `str` that is not valid UTF-8 (Python lets a `str` hold a lone surrogate);
//! - a Python value the Rust type cannot hold (serde's message says which).
//!
//! Encoding fails for what Python could not load: a `list`, `dict` or `set` as a dict key or
//! set element (Python's are unhashable; use a tuple), and for a
//! [`Descriptor`](super::Descriptor), which only the default codec carries.
//!
//! # Safety
//!
//! Unpickling in CPython can call any function the pickle names; this codec never runs,
//! imports or looks up anything the peer names. It reads the opcode stream into an arena of
//! plain values and refuses the first opcode that is not plain data, so a hostile pickle gets
//! an error, not code execution. Every length is checked against the message before
//! anything is allocated for it, and the value the message expands to is bounded, as is
//! its depth (the decoder itself does not recurse; building the Rust value does, up to that
//! depth).
//!
//! # Wire format written
//!
//! Protocol 4, CPython's default, without framing or memo (both optional): every CPython 3.4
//! or later reads it. Sets and frozensets use protocol 4's `EMPTY_SET`/`ADDITEMS` and
//! `FROZENSET`; strings and bytes of 4 GiB or more use the 8-byte-length opcodes.
//!
//! # Why not `serde-pickle` alone
//!
//! The `serde-pickle` crate (1.2) decodes a custom class instance silently as its attribute
//! dict, cannot decode an integer above `i64::MAX` into a `u64`, has no `i128`, loses dict
//! order in its `Value`, expands shared references without bound, and its `Value` does not
//! implement `Serialize`; so this module reads and writes the opcodes itself.

use std::collections::HashMap;
use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeOwned, IntoDeserializer, Unexpected, Visitor};
use serde::ser::{self, Serialize};
use serde::{Deserialize, Deserializer, Serializer};

use super::{Codec, CodecError};

/// Python's pickle format, so that `send` / `recv` interoperate with CPython's
/// `Connection.send()` / `recv()` for plain data.
///
/// A value encodes as protocol 4; any protocol (0 to 5) decodes. What maps to what:
///
/// | Rust | Python |
/// |---|---|
/// | `bool`, integers up to 128 bits, `f32`/`f64` | `bool`, `int`, `float` |
/// | `char`, `String`, `&str` | `str` |
/// | `serde_bytes::ByteBuf`, `#[serde(with = "serde_bytes")]` | `bytes` (also `bytearray` when decoding) |
/// | `()`, `None`, unit structs | `None` |
/// | `Vec`, slices, sets | `list` (also `tuple`, `set`, `frozenset` when decoding) |
/// | tuples, tuple structs, arrays `[T; N]` | `tuple` |
/// | maps, structs | `dict` |
/// | enums | `'Unit'`, `{'Variant': data}` |
/// | [`PyValue`] | anything plain, `set`, `frozenset` and big `int` included |
///
/// A class instance (anything that is not plain data) is refused with an error, and nothing
/// the peer names is ever imported or run. The source of this module has the full table, the
/// list of what is refused and why.
///
/// # Examples
///
/// ```
/// use multiproc::codec::{Codec, Pickle};
///
/// let mut bytes = Vec::new();
/// Pickle::encode(&(1i64, "two"), &mut bytes).unwrap();
/// let back: (i64, String) = Pickle::decode(&bytes).unwrap();
/// assert_eq!(back, (1, "two".to_string()));
/// ```
///
/// What CPython's `pickle.dumps((1, 'two', {'k': [2**64 - 1]}))` writes, decoded:
///
/// ```
/// use std::collections::HashMap;
/// use multiproc::codec::{Codec, Pickle};
///
/// let from_python = b"\x80\x04\x95\x20\x00\x00\x00\x00\x00\x00\x00K\x01\x8c\x03two\x94}\x94\
///     \x8c\x01k\x94]\x94\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\x00as\x87\x94.";
/// let (one, two, map): (u8, String, HashMap<String, Vec<u64>>) =
///     Pickle::decode(from_python).unwrap();
/// assert_eq!((one, two.as_str()), (1, "two"));
/// assert_eq!(map["k"], [u64::MAX]);
/// ```
///
/// A class instance is refused:
///
/// ```
/// use multiproc::codec::{Codec, Pickle, PyValue};
///
/// // CPython's pickle.dumps(Point(1, 2)) for a class Point in __main__:
/// let from_python = b"\x80\x04\x95\x2a\x00\x00\x00\x00\x00\x00\x00\x8c\x08__main__\x94\
///     \x8c\x05Point\x94\x93\x94)\x81\x94}\x94(\x8c\x01x\x94K\x01\x8c\x01y\x94K\x02ub.";
/// let err = Pickle::decode::<PyValue>(from_python).unwrap_err();
/// assert!(err.to_string().contains("__main__.Point"), "{err}");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pickle;

impl Codec for Pickle {
    const CARRIES_DESCRIPTORS: bool = false;

    fn encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let start = out.len();
        let result = encode_into(value, out);
        if result.is_err() {
            out.truncate(start);
        }
        result.map_err(|e| CodecError::new("cannot encode value as a pickle", e))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        decode_from(bytes).map_err(|e| CodecError::new("cannot decode pickle", e))
    }
}

/// The deepest nesting of containers a decoded value may have.
const MAX_DEPTH: u32 = 512;

/// The most bytes a pickled integer may take (`LONG4` can announce 2 GiB).
const MAX_INT_BYTES: usize = 2048;

/// Protocol 4 batches list and dict items by this many, as CPython does.
const BATCH: usize = 1000;

// --------------------------------------------------------------------------------------------
// PyValue
// --------------------------------------------------------------------------------------------

/// Any plain Python value, for when the Rust side does not know the shape of what a CPython
/// peer sends (or wants to send a `set`, a `frozenset` or an `int` beyond 128 bits).
///
/// Decoded with [`Pickle`], it keeps what serde's data model would lose: tuples stay
/// [`Tuple`](PyValue::Tuple), sets [`Set`](PyValue::Set), dicts keep their order and any
/// hashable keys. Encoded with [`Pickle`], each variant becomes the Python type it names.
/// `bytearray` decodes as [`Bytes`](PyValue::Bytes), so it comes back as `bytes`.
///
/// Its [`Display`](fmt::Display) is a Python expression for the value (what Python's `repr`
/// gives, up to spelling), handy in logs.
///
/// With formats other than pickle, a `PyValue` goes through serde's data model: in
/// self-describing ones (JSON, say) sets and tuples come back as lists; non-self-describing
/// ones such as [`Postcard`](super::Postcard) cannot decode it.
///
/// # Examples
///
/// ```
/// use multiproc::codec::{Codec, Pickle, PyValue};
///
/// let value = PyValue::Dict(vec![
///     (PyValue::Str("point".into()), PyValue::Tuple(vec![PyValue::Int(1), PyValue::Int(2)])),
///     (PyValue::Int(7), PyValue::Set(vec![PyValue::Bytes(b"x".to_vec())])),
///     (PyValue::None, PyValue::BigInt("-1361129467683753853853498429727072845824".into())),
/// ]);
/// assert_eq!(
///     value.to_string(),
///     "{'point': (1, 2), 7: {b'x'}, None: -1361129467683753853853498429727072845824}"
/// );
///
/// let mut bytes = Vec::new();
/// Pickle::encode(&value, &mut bytes).unwrap();
/// assert_eq!(Pickle::decode::<PyValue>(&bytes).unwrap(), value);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    /// `None`.
    None,
    /// `True` or `False`.
    Bool(bool),
    /// An `int` that fits in an `i128`.
    Int(i128),
    /// An `int` outside the `i128` range, as its decimal digits with an optional leading `-`
    /// (parse it with the big-integer crate of your choice). Decoding produces it only for
    /// values outside `i128`; one inside encodes fine and comes back as [`Int`](PyValue::Int).
    BigInt(String),
    /// A `float`.
    Float(f64),
    /// A `str`.
    Str(String),
    /// A `bytes` (or, decoded, a `bytearray`).
    Bytes(Vec<u8>),
    /// A `list`.
    List(Vec<PyValue>),
    /// A `tuple`.
    Tuple(Vec<PyValue>),
    /// A `dict`, in its order. Keys must be hashable in Python: not a `List`, `Dict` or `Set`.
    Dict(Vec<(PyValue, PyValue)>),
    /// A `set`. Elements must be hashable, as for dict keys.
    Set(Vec<PyValue>),
    /// A `frozenset`.
    FrozenSet(Vec<PyValue>),
}

/// Newtype names that carry [`PyValue`]'s Python-only types through serde's data model to
/// the encoder, and the request for them from the decoder. Private to this module: the NUL
/// keeps them from meeting a real type's name.
const SET_NAME: &str = "\0multiproc.pickle.set";
const FROZENSET_NAME: &str = "\0multiproc.pickle.frozenset";
const BIGINT_NAME: &str = "\0multiproc.pickle.bigint";
const PYVALUE_NAME: &str = "\0multiproc.pickle.PyValue";

/// In the tagged form the decoder gives a [`PyValue`], containers other than `list` arrive
/// as a one-entry map from one of these tags to their content.
const TAG_TUPLE: &str = "\0tuple";
const TAG_DICT: &str = "\0dict";
const TAG_SET: &str = "\0set";
const TAG_FROZENSET: &str = "\0frozenset";
const TAG_BIGINT: &str = "\0bigint";

impl Serialize for PyValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use ser::{SerializeMap, SerializeTuple};
        match self {
            PyValue::None => s.serialize_none(),
            PyValue::Bool(b) => s.serialize_bool(*b),
            PyValue::Int(i) => match i64::try_from(*i) {
                Ok(i) => s.serialize_i64(i),
                Err(_) => s.serialize_i128(*i),
            },
            PyValue::BigInt(digits) => s.serialize_newtype_struct(BIGINT_NAME, digits),
            PyValue::Float(f) => s.serialize_f64(*f),
            PyValue::Str(v) => s.serialize_str(v),
            PyValue::Bytes(b) => s.serialize_bytes(b),
            PyValue::List(items) => s.collect_seq(items),
            PyValue::Tuple(items) => {
                let mut t = s.serialize_tuple(items.len())?;
                for item in items {
                    t.serialize_element(item)?;
                }
                t.end()
            }
            PyValue::Dict(entries) => {
                let mut m = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
            PyValue::Set(items) => s.serialize_newtype_struct(SET_NAME, items),
            PyValue::FrozenSet(items) => s.serialize_newtype_struct(FROZENSET_NAME, items),
        }
    }
}

impl<'de> Deserialize<'de> for PyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_newtype_struct(PYVALUE_NAME, PyValueVisitor)
    }
}

struct PyValueVisitor;

impl<'de> Visitor<'de> for PyValueVisitor {
    type Value = PyValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a plain Python value")
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<PyValue, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_unit<E>(self) -> Result<PyValue, E> {
        Ok(PyValue::None)
    }
    fn visit_none<E>(self) -> Result<PyValue, E> {
        Ok(PyValue::None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<PyValue, D::Error> {
        PyValue::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<PyValue, E> {
        Ok(PyValue::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<PyValue, E> {
        Ok(PyValue::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<PyValue, E> {
        Ok(PyValue::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<PyValue, E> {
        Ok(PyValue::Int(v))
    }
    fn visit_u128<E>(self, v: u128) -> Result<PyValue, E> {
        Ok(i128::try_from(v).map_or_else(|_| PyValue::BigInt(v.to_string()), PyValue::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<PyValue, E> {
        Ok(PyValue::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<PyValue, E> {
        Ok(PyValue::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<PyValue, E> {
        Ok(PyValue::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<PyValue, E> {
        Ok(PyValue::Bytes(v.to_vec()))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<PyValue, E> {
        Ok(PyValue::Bytes(v))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<PyValue, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(PyValue::List(items))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<PyValue, A::Error> {
        // This decoder sends tagged one-entry maps; a self-describing format sends a plain
        // map, whose keys are then strings.
        let Some(first) = map.next_key::<String>()? else {
            return Ok(PyValue::Dict(Vec::new()));
        };
        match first.as_str() {
            TAG_TUPLE => Ok(PyValue::Tuple(map.next_value()?)),
            TAG_SET => Ok(PyValue::Set(map.next_value()?)),
            TAG_FROZENSET => Ok(PyValue::FrozenSet(map.next_value()?)),
            TAG_BIGINT => Ok(PyValue::BigInt(map.next_value()?)),
            TAG_DICT => Ok(PyValue::Dict(map.next_value::<DictEntries>()?.0)),
            _ => {
                let mut entries = vec![(PyValue::Str(first), map.next_value()?)];
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(PyValue::Dict(entries))
            }
        }
    }
}

/// A dict's entries in order, with any keys.
struct DictEntries(Vec<(PyValue, PyValue)>);

impl<'de> Deserialize<'de> for DictEntries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = DictEntries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a dict")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<DictEntries, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(4096));
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(DictEntries(entries))
            }
        }
        d.deserialize_map(EntriesVisitor)
    }
}

impl fmt::Display for PyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PyValue::None => f.write_str("None"),
            PyValue::Bool(true) => f.write_str("True"),
            PyValue::Bool(false) => f.write_str("False"),
            PyValue::Int(i) => write!(f, "{i}"),
            PyValue::BigInt(digits) => f.write_str(digits),
            PyValue::Float(x) if x.is_nan() => f.write_str("float('nan')"),
            PyValue::Float(x) if x.is_infinite() && *x > 0.0 => f.write_str("float('inf')"),
            PyValue::Float(x) if x.is_infinite() => f.write_str("-float('inf')"),
            // Debug prints the shortest round-trip form with a `.0` or an exponent, which
            // Python reads back as the same float.
            PyValue::Float(x) => write!(f, "{x:?}"),
            PyValue::Str(s) => write_str_literal(f, s),
            PyValue::Bytes(b) => write_bytes_literal(f, b),
            PyValue::List(items) => write_items(f, "[", items, "]"),
            PyValue::Tuple(items) if items.len() == 1 => write!(f, "({},)", items[0]),
            PyValue::Tuple(items) => write_items(f, "(", items, ")"),
            PyValue::Set(items) if items.is_empty() => f.write_str("set()"),
            PyValue::Set(items) => write_items(f, "{", items, "}"),
            PyValue::FrozenSet(items) if items.is_empty() => f.write_str("frozenset()"),
            PyValue::FrozenSet(items) => write_items(f, "frozenset({", items, "})"),
            PyValue::Dict(entries) => {
                f.write_char('{')?;
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_char('}')
            }
        }
    }
}

fn write_items(
    f: &mut fmt::Formatter<'_>,
    open: &str,
    items: &[PyValue],
    close: &str,
) -> fmt::Result {
    f.write_str(open)?;
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{item}")?;
    }
    f.write_str(close)
}

fn write_str_literal(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_char('\'')?;
    for c in s.chars() {
        match c {
            '\\' => f.write_str("\\\\")?,
            '\'' => f.write_str("\\'")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            ' '..='~' => f.write_char(c)?,
            c if !c.is_control() && !c.is_whitespace() && c > '\u{a0}' => f.write_char(c)?,
            c if (c as u32) < 0x100 => write!(f, "\\x{:02x}", c as u32)?,
            c if (c as u32) < 0x10000 => write!(f, "\\u{:04x}", c as u32)?,
            c => write!(f, "\\U{:08x}", c as u32)?,
        }
    }
    f.write_char('\'')
}

fn write_bytes_literal(f: &mut fmt::Formatter<'_>, b: &[u8]) -> fmt::Result {
    f.write_str("b'")?;
    for &byte in b {
        match byte {
            b'\\' => f.write_str("\\\\")?,
            b'\'' => f.write_str("\\'")?,
            b'\n' => f.write_str("\\n")?,
            b'\r' => f.write_str("\\r")?,
            b'\t' => f.write_str("\\t")?,
            b' '..=b'~' => f.write_char(byte as char)?,
            _ => write!(f, "\\x{byte:02x}")?,
        }
    }
    f.write_char('\'')
}

// --------------------------------------------------------------------------------------------
// Errors
// --------------------------------------------------------------------------------------------

/// What went wrong, as text; [`Pickle`] wraps it in a [`CodecError`].
#[derive(Debug)]
struct Error(String);

impl Error {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

type Result<T, E = Error> = std::result::Result<T, E>;

// --------------------------------------------------------------------------------------------
// Opcodes (the names of CPython's Lib/pickle.py)
// --------------------------------------------------------------------------------------------

mod op {
    pub(super) const MARK: u8 = b'(';
    pub(super) const STOP: u8 = b'.';
    pub(super) const POP: u8 = b'0';
    pub(super) const POP_MARK: u8 = b'1';
    pub(super) const DUP: u8 = b'2';
    pub(super) const FLOAT: u8 = b'F';
    pub(super) const INT: u8 = b'I';
    pub(super) const BININT: u8 = b'J';
    pub(super) const BININT1: u8 = b'K';
    pub(super) const LONG: u8 = b'L';
    pub(super) const BININT2: u8 = b'M';
    pub(super) const NONE: u8 = b'N';
    pub(super) const PERSID: u8 = b'P';
    pub(super) const BINPERSID: u8 = b'Q';
    pub(super) const REDUCE: u8 = b'R';
    pub(super) const STRING: u8 = b'S';
    pub(super) const BINSTRING: u8 = b'T';
    pub(super) const SHORT_BINSTRING: u8 = b'U';
    pub(super) const UNICODE: u8 = b'V';
    pub(super) const BINUNICODE: u8 = b'X';
    pub(super) const APPEND: u8 = b'a';
    pub(super) const BUILD: u8 = b'b';
    pub(super) const GLOBAL: u8 = b'c';
    pub(super) const DICT: u8 = b'd';
    pub(super) const EMPTY_DICT: u8 = b'}';
    pub(super) const APPENDS: u8 = b'e';
    pub(super) const GET: u8 = b'g';
    pub(super) const BINGET: u8 = b'h';
    pub(super) const INST: u8 = b'i';
    pub(super) const LONG_BINGET: u8 = b'j';
    pub(super) const LIST: u8 = b'l';
    pub(super) const EMPTY_LIST: u8 = b']';
    pub(super) const OBJ: u8 = b'o';
    pub(super) const PUT: u8 = b'p';
    pub(super) const BINPUT: u8 = b'q';
    pub(super) const LONG_BINPUT: u8 = b'r';
    pub(super) const SETITEM: u8 = b's';
    pub(super) const TUPLE: u8 = b't';
    pub(super) const EMPTY_TUPLE: u8 = b')';
    pub(super) const SETITEMS: u8 = b'u';
    pub(super) const BINFLOAT: u8 = b'G';
    // Protocol 2
    pub(super) const PROTO: u8 = 0x80;
    pub(super) const NEWOBJ: u8 = 0x81;
    pub(super) const EXT1: u8 = 0x82;
    pub(super) const EXT2: u8 = 0x83;
    pub(super) const EXT4: u8 = 0x84;
    pub(super) const TUPLE1: u8 = 0x85;
    pub(super) const TUPLE2: u8 = 0x86;
    pub(super) const TUPLE3: u8 = 0x87;
    pub(super) const NEWTRUE: u8 = 0x88;
    pub(super) const NEWFALSE: u8 = 0x89;
    pub(super) const LONG1: u8 = 0x8a;
    pub(super) const LONG4: u8 = 0x8b;
    // Protocol 3
    pub(super) const BINBYTES: u8 = b'B';
    pub(super) const SHORT_BINBYTES: u8 = b'C';
    // Protocol 4
    pub(super) const SHORT_BINUNICODE: u8 = 0x8c;
    pub(super) const BINUNICODE8: u8 = 0x8d;
    pub(super) const BINBYTES8: u8 = 0x8e;
    pub(super) const EMPTY_SET: u8 = 0x8f;
    pub(super) const ADDITEMS: u8 = 0x90;
    pub(super) const FROZENSET: u8 = 0x91;
    pub(super) const NEWOBJ_EX: u8 = 0x92;
    pub(super) const STACK_GLOBAL: u8 = 0x93;
    pub(super) const MEMOIZE: u8 = 0x94;
    pub(super) const FRAME: u8 = 0x95;
    // Protocol 5
    pub(super) const BYTEARRAY8: u8 = 0x96;
    pub(super) const NEXT_BUFFER: u8 = 0x97;
    pub(super) const READONLY_BUFFER: u8 = 0x98;
}

// --------------------------------------------------------------------------------------------
// Encoding
// --------------------------------------------------------------------------------------------

fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<()> {
    out.extend_from_slice(&[op::PROTO, 4]);
    let mut encoder = Encoder {
        out,
        special: None,
        in_key: 0,
    };
    value.serialize(&mut encoder)?;
    encoder.out.push(op::STOP);
    Ok(())
}

/// A Python-only type announced by one of [`PyValue`]'s newtype names, for the value that
/// follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    Set,
    FrozenSet,
    BigInt,
}

struct Encoder<'a> {
    out: &'a mut Vec<u8>,
    special: Option<Special>,
    /// Above zero while encoding a dict key or set element, which Python must hash.
    in_key: u32,
}

impl<'a> Encoder<'a> {
    /// Refuses a special announcement the value did not honour (never happens with
    /// [`PyValue`]; only a foreign type borrowing the private names could).
    fn plain(&mut self) -> Result<()> {
        match self.special.take() {
            None => Ok(()),
            Some(s) => Err(Error::new(format!(
                "internal: {s:?} marker on the wrong value"
            ))),
        }
    }

    fn unhashable(&self, what: &str) -> Result<()> {
        if self.in_key > 0 {
            return Err(Error::new(format!(
                "a {what} cannot be a dict key or set element in Python (it is unhashable); \
                 use a tuple"
            )));
        }
        Ok(())
    }

    fn int(&mut self, v: i128) {
        if let Ok(b) = u8::try_from(v) {
            self.out.extend_from_slice(&[op::BININT1, b]);
        } else if let Ok(h) = u16::try_from(v) {
            self.out.push(op::BININT2);
            self.out.extend_from_slice(&h.to_le_bytes());
        } else if let Ok(w) = i32::try_from(v) {
            self.out.push(op::BININT);
            self.out.extend_from_slice(&w.to_le_bytes());
        } else {
            let bytes = v.to_le_bytes();
            self.long(minimal_twos_complement(&bytes));
        }
    }

    /// `bytes`: little-endian two's complement, as few bytes as hold the sign.
    fn long(&mut self, bytes: &[u8]) {
        if let Ok(n) = u8::try_from(bytes.len()) {
            self.out.extend_from_slice(&[op::LONG1, n]);
        } else {
            self.out.push(op::LONG4);
            self.out
                .extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        }
        self.out.extend_from_slice(bytes);
    }

    fn counted(&mut self, short: u8, four: u8, eight: u8, data: &[u8]) {
        if let Ok(n) = u8::try_from(data.len()) {
            self.out.extend_from_slice(&[short, n]);
        } else if let Ok(n) = u32::try_from(data.len()) {
            self.out.push(four);
            self.out.extend_from_slice(&n.to_le_bytes());
        } else {
            self.out.push(eight);
            self.out
                .extend_from_slice(&(data.len() as u64).to_le_bytes());
        }
        self.out.extend_from_slice(data);
    }

    fn str(&mut self, s: &str) {
        let (short, four, eight) = (op::SHORT_BINUNICODE, op::BINUNICODE, op::BINUNICODE8);
        self.counted(short, four, eight, s.as_bytes());
    }

    fn compound(&mut self, kind: Kind) -> Result<Compound<'_, 'a>> {
        match kind {
            Kind::List => {
                self.unhashable("list")?;
                self.out.push(op::EMPTY_LIST);
            }
            Kind::Set => {
                self.unhashable("set")?;
                self.out.push(op::EMPTY_SET);
            }
            Kind::Dict => {
                self.unhashable("dict")?;
                self.out.push(op::EMPTY_DICT);
            }
            Kind::FrozenSet | Kind::Tuple => self.out.push(op::MARK),
        }
        Ok(Compound {
            enc: self,
            kind,
            batched: 0,
            variant: false,
        })
    }

    /// Opens `{'Variant': ...}`; the compound that follows closes it with `SETITEM`.
    fn variant_open(&mut self, variant: &str) -> Result<()> {
        self.unhashable("dict (an enum variant with data)")?;
        self.out.push(op::EMPTY_DICT);
        self.str(variant);
        Ok(())
    }
}

/// Little-endian two's complement bytes without redundant sign bytes.
fn minimal_twos_complement(bytes: &[u8]) -> &[u8] {
    let mut len = bytes.len();
    while len > 1 {
        let (top, next) = (bytes[len - 1], bytes[len - 2]);
        if (top == 0x00 && next & 0x80 == 0) || (top == 0xff && next & 0x80 != 0) {
            len -= 1;
        } else {
            break;
        }
    }
    &bytes[..len]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    List,
    Set,
    FrozenSet,
    Tuple,
    Dict,
}

struct Compound<'e, 'a> {
    enc: &'e mut Encoder<'a>,
    kind: Kind,
    /// Items since the last `MARK` of the current batch (lists, sets, dicts).
    batched: usize,
    /// Closes an enum variant's one-entry dict at the end.
    variant: bool,
}

impl Compound<'_, '_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        let batching = matches!(self.kind, Kind::List | Kind::Set);
        if batching && self.batched == 0 {
            self.enc.out.push(op::MARK);
        }
        let hashed = matches!(self.kind, Kind::Set | Kind::FrozenSet);
        self.enc.in_key += u32::from(hashed);
        let result = value.serialize(&mut *self.enc);
        self.enc.in_key -= u32::from(hashed);
        result?;
        if batching {
            self.batched += 1;
            if self.batched == BATCH {
                self.flush();
            }
        }
        Ok(())
    }

    fn key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<()> {
        if self.batched == 0 {
            self.enc.out.push(op::MARK);
        }
        self.enc.in_key += 1;
        let result = key.serialize(&mut *self.enc);
        self.enc.in_key -= 1;
        result
    }

    fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        value.serialize(&mut *self.enc)?;
        self.batched += 1;
        if self.batched == BATCH {
            self.flush();
        }
        Ok(())
    }

    fn flush(&mut self) {
        if self.batched > 0 {
            let op = match self.kind {
                Kind::List => op::APPENDS,
                Kind::Set => op::ADDITEMS,
                _ => op::SETITEMS,
            };
            self.enc.out.push(op);
            self.batched = 0;
        }
    }

    fn finish(mut self) -> Result<()> {
        match self.kind {
            Kind::List | Kind::Set | Kind::Dict => self.flush(),
            Kind::FrozenSet => self.enc.out.push(op::FROZENSET),
            Kind::Tuple => self.enc.out.push(op::TUPLE),
        }
        if self.variant {
            self.enc.out.push(op::SETITEM);
        }
        Ok(())
    }
}

impl<'e, 'a> Serializer for &'e mut Encoder<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Compound<'e, 'a>;
    type SerializeTuple = Compound<'e, 'a>;
    type SerializeTupleStruct = Compound<'e, 'a>;
    type SerializeTupleVariant = Compound<'e, 'a>;
    type SerializeMap = Compound<'e, 'a>;
    type SerializeStruct = Compound<'e, 'a>;
    type SerializeStructVariant = Compound<'e, 'a>;

    fn serialize_bool(self, v: bool) -> Result<()> {
        self.plain()?;
        self.out.push(if v { op::NEWTRUE } else { op::NEWFALSE });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<()> {
        self.serialize_i128(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<()> {
        self.serialize_i128(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<()> {
        self.serialize_i128(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<()> {
        self.serialize_i128(v.into())
    }
    fn serialize_i128(self, v: i128) -> Result<()> {
        self.plain()?;
        self.int(v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<()> {
        self.serialize_i128(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<()> {
        self.serialize_i128(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<()> {
        self.serialize_i128(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<()> {
        self.serialize_i128(v.into())
    }
    fn serialize_u128(self, v: u128) -> Result<()> {
        match i128::try_from(v) {
            Ok(v) => self.serialize_i128(v),
            Err(_) => {
                self.plain()?;
                let mut bytes = [0u8; 17];
                bytes[..16].copy_from_slice(&v.to_le_bytes());
                self.long(&bytes);
                Ok(())
            }
        }
    }
    fn serialize_f32(self, v: f32) -> Result<()> {
        self.serialize_f64(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<()> {
        self.plain()?;
        self.out.push(op::BINFLOAT);
        self.out.extend_from_slice(&v.to_be_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<()> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<()> {
        match self.special.take() {
            None => self.str(v),
            Some(Special::BigInt) => {
                let bytes = decimal_to_twos_complement(v)?;
                self.long(&bytes);
            }
            Some(s) => return Err(Error::new(format!("internal: {s:?} marker on a str"))),
        }
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<()> {
        self.plain()?;
        self.counted(op::SHORT_BINBYTES, op::BINBYTES, op::BINBYTES8, v);
        Ok(())
    }
    fn serialize_none(self) -> Result<()> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<()> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<()> {
        self.plain()?;
        self.out.push(op::NONE);
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<()> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<()> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<()> {
        self.plain()?;
        self.special = match name {
            SET_NAME => Some(Special::Set),
            FROZENSET_NAME => Some(Special::FrozenSet),
            BIGINT_NAME => Some(Special::BigInt),
            _ => None,
        };
        value.serialize(&mut *self)?;
        self.plain()
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<()> {
        self.plain()?;
        self.variant_open(variant)?;
        value.serialize(&mut *self)?;
        self.out.push(op::SETITEM);
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'e, 'a>> {
        let kind = match self.special.take() {
            None => Kind::List,
            Some(Special::Set) => Kind::Set,
            Some(Special::FrozenSet) => Kind::FrozenSet,
            Some(Special::BigInt) => return Err(Error::new("internal: a big int is text")),
        };
        self.compound(kind)
    }
    fn serialize_tuple(self, _len: usize) -> Result<Compound<'e, 'a>> {
        self.plain()?;
        self.compound(Kind::Tuple)
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Compound<'e, 'a>> {
        self.serialize_tuple(len)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'e, 'a>> {
        self.plain()?;
        self.variant_open(variant)?;
        let mut c = self.compound(Kind::Tuple)?;
        c.variant = true;
        Ok(c)
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'e, 'a>> {
        self.plain()?;
        self.compound(Kind::Dict)
    }
    fn serialize_struct(self, _: &'static str, _len: usize) -> Result<Compound<'e, 'a>> {
        self.serialize_map(None)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'e, 'a>> {
        self.plain()?;
        self.variant_open(variant)?;
        let mut c = self.compound(Kind::Dict)?;
        c.variant = true;
        Ok(c)
    }
}

impl ser::SerializeSeq for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.element(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeTuple for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.element(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.element(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeTupleVariant for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.element(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeMap for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<()> {
        self.key(key)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.value(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<()> {
        self.key(key)?;
        self.value(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<()> {
        self.key(key)?;
        self.value(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

// --------------------------------------------------------------------------------------------
// Big integers: decimal text <-> little-endian two's complement, through base-10^9 and
// base-2^32 limbs. Quadratic, which the size bound keeps cheap.
// --------------------------------------------------------------------------------------------

fn decimal_to_twos_complement(text: &str) -> Result<Vec<u8>> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::new(format!(
            "PyValue::BigInt({text:?}) is not a decimal integer"
        )));
    }
    if digits.len() > MAX_INT_BYTES * 5 / 2 {
        return Err(Error::new(format!(
            "PyValue::BigInt has {} digits, more than this codec handles",
            digits.len()
        )));
    }
    // Magnitude in base 2^32, least significant limb first.
    let mut limbs: Vec<u32> = Vec::new();
    for chunk in digits.as_bytes().chunks(9) {
        let mut scale = 1u64;
        let mut add = 0u64;
        for &d in chunk {
            scale *= 10;
            add = add * 10 + u64::from(d - b'0');
        }
        let mut carry = add;
        for limb in &mut limbs {
            let v = u64::from(*limb) * scale + carry;
            *limb = v as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            limbs.push(carry as u32);
        }
    }
    let mut bytes: Vec<u8> = limbs.iter().flat_map(|l| l.to_le_bytes()).collect();
    bytes.push(0); // room for the sign
    if negative {
        negate(&mut bytes);
    }
    let len = minimal_twos_complement(&bytes).len();
    bytes.truncate(len);
    if bytes.len() > MAX_INT_BYTES {
        return Err(Error::new(
            "PyValue::BigInt is larger than this codec handles",
        ));
    }
    Ok(bytes)
}

/// Negates a little-endian two's complement number in place.
fn negate(bytes: &mut [u8]) {
    let mut carry = true;
    for b in bytes {
        let (v, c) = (!*b).overflowing_add(u8::from(carry));
        *b = v;
        carry = c;
    }
}

fn twos_complement_to_decimal(bytes: &[u8]) -> String {
    let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
    let mut magnitude = bytes.to_vec();
    if negative {
        negate(&mut magnitude);
    }
    // Base 2^32 limbs, most significant first, for long division by 10^9.
    let mut limbs: Vec<u32> = magnitude
        .chunks(4)
        .rev()
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect();
    let mut groups = Vec::new();
    while limbs.iter().any(|&l| l != 0) {
        let mut rem = 0u64;
        for limb in &mut limbs {
            let v = (rem << 32) | u64::from(*limb);
            *limb = (v / 1_000_000_000) as u32;
            rem = v % 1_000_000_000;
        }
        groups.push(rem as u32);
        while limbs.first() == Some(&0) {
            limbs.remove(0);
        }
    }
    let mut text = String::from(if negative { "-" } else { "" });
    match groups.split_last() {
        None => text.push('0'),
        Some((top, rest)) => {
            let _ = write!(text, "{top}");
            for g in rest.iter().rev() {
                let _ = write!(text, "{g:09}");
            }
        }
    }
    text
}

// --------------------------------------------------------------------------------------------
// Decoding, step 1: the opcode stream into an arena of plain values
// --------------------------------------------------------------------------------------------

/// Index of a node in the arena.
type Id = u32;

#[derive(Debug, Clone)]
enum Node {
    None,
    Bool(bool),
    Int(i128),
    /// Beyond `i128`: decimal digits.
    BigInt(String),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    FrozenSet(Vec<Id>),
    /// One of the few callables CPython uses to spell plain data.
    Global(Global),
    /// Moved out into the Rust value already.
    Taken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    Set,
    FrozenSet,
    ByteArray,
    Bytes,
    CodecsEncode,
    /// `copyreg._reconstructor`, how protocols 0 and 1 build a class instance. Accepted as a
    /// name so that the class that follows it is the one the error names; never applied.
    Reconstructor,
}

/// The globals accepted: what CPython's pickler writes for sets (protocols below 4),
/// bytearrays (below 5) and bytes (below 3). Everything else names a class or a function.
fn allowed_global(module: &[u8], name: &[u8]) -> Option<Global> {
    match (module, name) {
        (b"builtins" | b"__builtin__", b"set") => Some(Global::Set),
        (b"builtins" | b"__builtin__", b"frozenset") => Some(Global::FrozenSet),
        (b"builtins" | b"__builtin__", b"bytearray") => Some(Global::ByteArray),
        (b"builtins" | b"__builtin__", b"bytes") => Some(Global::Bytes),
        (b"_codecs", b"encode") => Some(Global::CodecsEncode),
        (b"copyreg" | b"copy_reg", b"_reconstructor") => Some(Global::Reconstructor),
        _ => None,
    }
}

/// The arena and what building the Rust value needs to bound it.
struct Arena {
    nodes: Vec<Node>,
    /// How many container slots (and the root) refer to each node: a node referred to once,
    /// on a path of such nodes, can be moved out instead of copied.
    refs: Vec<u32>,
    /// Nodes being visited, to catch a structure that contains itself.
    on_path: Vec<bool>,
    /// Bytes left for the value to expand into (shared references are copied).
    budget: u64,
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    refs: Vec<u32>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
}

fn decode_from<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let (mut arena, root) = Parser::new(bytes).run()?;
    T::deserialize(NodeDe::new(&mut arena, root, true, 0))
}

impl<'a> Parser<'a> {
    fn new(input: &'a [u8]) -> Self {
        Self {
            input,
            pos: 0,
            nodes: Vec::new(),
            refs: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn run(mut self) -> Result<(Arena, Id)> {
        let root = loop {
            let at = self.pos;
            let code = self.take(1)?[0];
            if code == op::STOP {
                break self.pop()?;
            }
            // Each opcode adds at most one node, and ids are 32 bits.
            if self.nodes.len() >= Id::MAX as usize {
                return Err(Error::new(
                    "the pickle holds more values than this codec accepts",
                ));
            }
            self.step(code)
                .map_err(|e| Error::new(format!("{e} (opcode 0x{code:02x} at byte {at})")))?;
        };
        if self.pos != self.input.len() {
            return Err(Error::new(format!(
                "{} bytes after the end of the pickle",
                self.input.len() - self.pos
            )));
        }
        self.refs[root as usize] = self.refs[root as usize].saturating_add(1);
        let n = self.nodes.len();
        let budget = 64 * (1 << 20) + 64 * self.input.len() as u64;
        let arena = Arena {
            nodes: self.nodes,
            refs: self.refs,
            on_path: vec![false; n],
            budget,
        };
        Ok((arena, root))
    }

    fn step(&mut self, code: u8) -> Result<()> {
        match code {
            op::PROTO => {
                let version = self.take(1)?[0];
                if version > 5 {
                    return Err(Error::new(format!("unsupported pickle protocol {version}")));
                }
            }
            op::FRAME => {
                let len = self.u64()?;
                if len > (self.input.len() - self.pos) as u64 {
                    return Err(Error::new("a frame runs past the end of the message"));
                }
            }
            op::MARK => self.marks.push(self.stack.len()),
            op::POP => {
                if self.stack.len() > self.floor() {
                    self.stack.pop();
                } else {
                    self.pop_mark()?;
                }
            }
            op::POP_MARK => {
                self.pop_mark()?;
            }
            op::DUP => {
                let top = self.top()?;
                self.stack.push(top);
            }

            op::PUT => {
                let index = self.line_number()?;
                self.memoize(index)?;
            }
            op::BINPUT => {
                let index = self.take(1)?[0].into();
                self.memoize(index)?;
            }
            op::LONG_BINPUT => {
                let index = self.u32()?;
                self.memoize(index)?;
            }
            op::MEMOIZE => {
                let index = u32::try_from(self.memo.len()).map_err(|_| Error::new("memo full"))?;
                self.memoize(index)?;
            }
            op::GET => {
                let index = self.line_number()?;
                self.get(index)?;
            }
            op::BINGET => {
                let index = self.take(1)?[0].into();
                self.get(index)?;
            }
            op::LONG_BINGET => {
                let index = self.u32()?;
                self.get(index)?;
            }

            op::NONE => self.push(Node::None),
            op::NEWTRUE => self.push(Node::Bool(true)),
            op::NEWFALSE => self.push(Node::Bool(false)),
            op::INT => {
                let line = self.line()?;
                let node = match line {
                    b"00" => Node::Bool(false),
                    b"01" => Node::Bool(true),
                    _ => decimal_node(line)?,
                };
                self.push(node);
            }
            op::LONG => {
                let line = self.line()?;
                let digits = line.strip_suffix(b"L").unwrap_or(line);
                let node = decimal_node(digits)?;
                self.push(node);
            }
            op::BININT => {
                let v = i32::from_le_bytes(self.array()?);
                self.push(Node::Int(v.into()));
            }
            op::BININT1 => {
                let v = self.take(1)?[0];
                self.push(Node::Int(v.into()));
            }
            op::BININT2 => {
                let v = u16::from_le_bytes(self.array()?);
                self.push(Node::Int(v.into()));
            }
            op::LONG1 => {
                let n = self.take(1)?[0].into();
                self.long(n)?;
            }
            op::LONG4 => {
                let n = i32::from_le_bytes(self.array()?);
                let n = usize::try_from(n).map_err(|_| Error::new("negative length"))?;
                self.long(n)?;
            }
            op::FLOAT => {
                let line = self.line()?;
                let v = std::str::from_utf8(line)
                    .ok()
                    .and_then(|s| s.trim().parse::<f64>().ok())
                    .ok_or_else(|| Error::new("a FLOAT opcode without a number"))?;
                self.push(Node::Float(v));
            }
            op::BINFLOAT => {
                let v = f64::from_be_bytes(self.array()?);
                self.push(Node::Float(v));
            }

            op::SHORT_BINUNICODE => {
                let n = self.take(1)?[0].into();
                self.unicode(n)?;
            }
            op::BINUNICODE => {
                let n = self.u32()? as usize;
                self.unicode(n)?;
            }
            op::BINUNICODE8 => {
                let n = self.length8()?;
                self.unicode(n)?;
            }
            op::UNICODE => {
                let line = self.line()?;
                let s = raw_unicode_escape(line)?;
                self.push(Node::Str(s));
            }
            op::SHORT_BINBYTES => {
                let n = self.take(1)?[0].into();
                self.bytes(n)?;
            }
            op::BINBYTES => {
                let n = self.u32()? as usize;
                self.bytes(n)?;
            }
            op::BINBYTES8 | op::BYTEARRAY8 => {
                let n = self.length8()?;
                self.bytes(n)?;
            }
            op::STRING | op::BINSTRING | op::SHORT_BINSTRING => {
                return Err(Error::new(
                    "a Python 2 str (STRING opcodes) is not supported; send bytes or str",
                ));
            }

            op::EMPTY_LIST => self.push(Node::List(Vec::new())),
            op::EMPTY_TUPLE => self.push(Node::Tuple(Vec::new())),
            op::EMPTY_DICT => self.push(Node::Dict(Vec::new())),
            op::EMPTY_SET => self.push(Node::Set(Vec::new())),
            op::LIST => {
                let items = self.pop_mark_ref()?;
                self.push(Node::List(items));
            }
            op::TUPLE => {
                let items = self.pop_mark_ref()?;
                self.push(Node::Tuple(items));
            }
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let n = usize::from(code - op::TUPLE1 + 1);
                if self.stack.len() < self.floor() + n {
                    return Err(Error::new("stack underflow"));
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.add_refs(&items);
                self.push(Node::Tuple(items));
            }
            op::FROZENSET => {
                let items = self.pop_mark_ref()?;
                self.push(Node::FrozenSet(items));
            }
            op::DICT => {
                let items = self.pop_mark_ref()?;
                let pairs = pairs(items)?;
                self.push(Node::Dict(pairs));
            }
            op::APPEND => {
                let item = self.pop_ref()?;
                match self.top_node()? {
                    Node::List(items) => items.push(item),
                    _ => return Err(Error::new("APPEND to something that is not a list")),
                }
            }
            op::APPENDS => {
                let items = self.pop_mark_ref()?;
                match self.top_node()? {
                    Node::List(list) => list.extend(items),
                    _ => return Err(Error::new("APPENDS to something that is not a list")),
                }
            }
            op::ADDITEMS => {
                let items = self.pop_mark_ref()?;
                match self.top_node()? {
                    Node::Set(set) => set.extend(items),
                    _ => return Err(Error::new("ADDITEMS to something that is not a set")),
                }
            }
            op::SETITEM => {
                let value = self.pop_ref()?;
                let key = self.pop_ref()?;
                match self.top_node()? {
                    Node::Dict(entries) => entries.push((key, value)),
                    _ => return Err(Error::new("SETITEM on something that is not a dict")),
                }
            }
            op::SETITEMS => {
                let items = self.pop_mark_ref()?;
                let new = pairs(items)?;
                match self.top_node()? {
                    Node::Dict(entries) => entries.extend(new),
                    _ => return Err(Error::new("SETITEMS on something that is not a dict")),
                }
            }

            op::GLOBAL => {
                let module = self.line()?;
                let name = self.line()?;
                let global = check_global(module, name)?;
                self.push(Node::Global(global));
            }
            op::STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Node::Str(module), Node::Str(name)) =
                    (&self.nodes[module as usize], &self.nodes[name as usize])
                else {
                    return Err(Error::new("STACK_GLOBAL without two strings"));
                };
                let global = check_global(module.as_bytes(), name.as_bytes())?;
                self.push(Node::Global(global));
            }
            op::REDUCE => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let node = self.reduce(callable, args)?;
                self.push(node);
            }

            op::INST => {
                let module = self.line()?;
                let name = self.line()?;
                check_global(module, name)?;
                return Err(Error::new("INST is only for class instances"));
            }
            op::OBJ | op::NEWOBJ | op::NEWOBJ_EX | op::BUILD => {
                return Err(Error::new(
                    "a Python object of a custom class cannot be decoded (only plain data)",
                ));
            }
            op::EXT1 | op::EXT2 | op::EXT4 => {
                return Err(Error::new(
                    "a reference into copyreg's extension registry (a class) cannot be decoded",
                ));
            }
            op::PERSID | op::BINPERSID => {
                return Err(Error::new(
                    "persistent ids (persistent_load) are not supported",
                ));
            }
            op::NEXT_BUFFER | op::READONLY_BUFFER => {
                return Err(Error::new(
                    "out-of-band buffers (protocol 5 with buffer_callback) are not supported",
                ));
            }
            _ => return Err(Error::new("unknown opcode")),
        }
        Ok(())
    }

    // Reading the input. Every length is checked against what is left before use.

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let input: &'a [u8] = self.input;
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= input.len())
            .ok_or_else(|| Error::new("the pickle is truncated"))?;
        let bytes = &input[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn length8(&mut self) -> Result<usize> {
        usize::try_from(self.u64()?).map_err(|_| Error::new("the pickle is truncated"))
    }

    /// A newline-terminated argument, without the newline (or a `\r\n`).
    fn line(&mut self) -> Result<&'a [u8]> {
        let input: &'a [u8] = self.input;
        let rest = &input[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| Error::new("the pickle is truncated"))?;
        self.pos += n + 1;
        let line = &rest[..n];
        Ok(line.strip_suffix(b"\r").unwrap_or(line))
    }

    fn line_number(&mut self) -> Result<u32> {
        let line = self.line()?;
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::new("a memo index that is not a number"))
    }

    fn long(&mut self, n: usize) -> Result<()> {
        if n > MAX_INT_BYTES {
            return Err(Error::new(format!(
                "an int of {n} bytes is larger than this codec accepts ({MAX_INT_BYTES})"
            )));
        }
        let bytes = self.take(n)?;
        let node = if n <= 16 {
            let fill = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
                0xff
            } else {
                0
            };
            let mut wide = [fill; 16];
            wide[..n].copy_from_slice(bytes);
            Node::Int(i128::from_le_bytes(wide))
        } else {
            Node::BigInt(twos_complement_to_decimal(bytes))
        };
        self.push(node);
        Ok(())
    }

    fn unicode(&mut self, n: usize) -> Result<()> {
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| Error::new(NOT_UTF8))?;
        self.push(Node::Str(s.to_owned()));
        Ok(())
    }

    fn bytes(&mut self, n: usize) -> Result<()> {
        let bytes = self.take(n)?.to_vec();
        self.push(Node::Bytes(bytes));
        Ok(())
    }

    // The stack and the memo.

    fn push(&mut self, node: Node) {
        let id = self.nodes.len() as Id;
        self.nodes.push(node);
        self.refs.push(0);
        self.stack.push(id);
    }

    /// The height of the stack at the innermost mark, below which nothing may be popped.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    /// Pops the top of the stack (not past a mark).
    fn pop(&mut self) -> Result<Id> {
        if self.stack.len() <= self.floor() {
            return Err(Error::new("stack underflow"));
        }
        Ok(self.stack.pop().expect("checked above"))
    }

    /// Pops the top of the stack to store it in a container.
    fn pop_ref(&mut self) -> Result<Id> {
        let id = self.pop()?;
        self.add_refs(&[id]);
        Ok(id)
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| Error::new("a MARK is missing"))?;
        Ok(self.stack.split_off(mark))
    }

    /// Pops everything above the last mark to store it in a container.
    fn pop_mark_ref(&mut self) -> Result<Vec<Id>> {
        let items = self.pop_mark()?;
        self.add_refs(&items);
        Ok(items)
    }

    fn add_refs(&mut self, ids: &[Id]) {
        for &id in ids {
            self.refs[id as usize] = self.refs[id as usize].saturating_add(1);
        }
    }

    fn top(&self) -> Result<Id> {
        match self.stack.last() {
            Some(&id) if self.stack.len() > self.floor() => Ok(id),
            _ => Err(Error::new("stack underflow")),
        }
    }

    fn top_node(&mut self) -> Result<&mut Node> {
        let id = self.top()?;
        Ok(&mut self.nodes[id as usize])
    }

    fn memoize(&mut self, index: u32) -> Result<()> {
        let top = self.top()?;
        self.memo.insert(index, top);
        Ok(())
    }

    fn get(&mut self, index: u32) -> Result<()> {
        let id = *self
            .memo
            .get(&index)
            .ok_or_else(|| Error::new(format!("memo entry {index} is missing")))?;
        self.stack.push(id);
        Ok(())
    }

    /// Applies one of the accepted globals to its arguments.
    fn reduce(&mut self, callable: Id, args: Id) -> Result<Node> {
        let Node::Global(global) = self.nodes[callable as usize] else {
            return Err(Error::new("REDUCE on something that is not a global"));
        };
        if global == Global::Reconstructor {
            return Err(Error::new(
                "a Python object of a custom class cannot be decoded (only plain data)",
            ));
        }
        let Node::Tuple(args) = &self.nodes[args as usize] else {
            return Err(Error::new("REDUCE without an argument tuple"));
        };
        let arg = |i: usize| args.get(i).map(|&id| &self.nodes[id as usize]);
        let node = match (global, args.len(), arg(0)) {
            (Global::Set, 0, _) => Node::Set(Vec::new()),
            (Global::FrozenSet, 0, _) => Node::FrozenSet(Vec::new()),
            (Global::Set, 1, Some(Node::List(items))) => Node::Set(items.clone()),
            (Global::FrozenSet, 1, Some(Node::List(items))) => Node::FrozenSet(items.clone()),
            (Global::ByteArray | Global::Bytes, 0, _) => Node::Bytes(Vec::new()),
            (Global::ByteArray, 1, Some(Node::Bytes(b))) => Node::Bytes(b.clone()),
            // Protocols below 3 spell bytes as `_codecs.encode(text, 'latin1')` and a
            // bytearray as `bytearray(text, 'latin-1')`.
            (Global::CodecsEncode | Global::ByteArray, 2, Some(Node::Str(text))) => {
                match arg(1) {
                    Some(Node::Str(enc)) if matches!(enc.as_str(), "latin1" | "latin-1") => {}
                    _ => return Err(Error::new("bytes spelt in an encoding other than latin-1")),
                }
                let bytes: Option<Vec<u8>> = text
                    .chars()
                    .map(|c| u8::try_from(u32::from(c)).ok())
                    .collect();
                Node::Bytes(bytes.ok_or_else(|| Error::new("latin-1 text beyond U+00FF"))?)
            }
            _ => return Err(Error::new(format!("unexpected arguments for {global:?}"))),
        };
        if let Node::Set(items) | Node::FrozenSet(items) = &node {
            let items = items.clone();
            self.add_refs(&items);
        }
        Ok(node)
    }
}

/// A `str` Rust cannot hold.
const NOT_UTF8: &str = "a str that is not valid UTF-8 (a lone surrogate?) cannot be decoded";

fn check_global(module: &[u8], name: &[u8]) -> Result<Global> {
    allowed_global(module, name).ok_or_else(|| {
        Error::new(format!(
            "refusing the Python global {}.{}: only plain data (None, bool, int, float, str, \
             bytes, list, tuple, dict, set) can be decoded, not instances of classes",
            String::from_utf8_lossy(module),
            String::from_utf8_lossy(name)
        ))
    })
}

fn pairs(items: Vec<Id>) -> Result<Vec<(Id, Id)>> {
    if items.len() % 2 != 0 {
        return Err(Error::new("a dict with a key but no value"));
    }
    Ok(items.chunks_exact(2).map(|p| (p[0], p[1])).collect())
}

/// An `INT` or `LONG` text argument.
fn decimal_node(text: &[u8]) -> Result<Node> {
    let s = std::str::from_utf8(text)
        .ok()
        .map(str::trim)
        .filter(|s| {
            let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        })
        .ok_or_else(|| Error::new("an INT or LONG opcode without a number"))?;
    if let Ok(v) = s.parse::<i128>() {
        return Ok(Node::Int(v));
    }
    // Normalise through the binary form (which also bounds the size).
    let s = s.strip_prefix('+').unwrap_or(s);
    let trimmed = match s.strip_prefix('-') {
        Some(d) => format!("-{}", d.trim_start_matches('0')),
        None => s.trim_start_matches('0').to_owned(),
    };
    let bytes = decimal_to_twos_complement(&trimmed)?;
    Ok(Node::BigInt(twos_complement_to_decimal(&bytes)))
}

/// Python's `raw-unicode-escape`, as protocol 0 writes `str`: bytes are Latin-1 characters,
/// except `\uXXXX` and `\UXXXXXXXX`.
fn raw_unicode_escape(line: &[u8]) -> Result<String> {
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        let width = match (b, line.get(i + 1)) {
            (b'\\', Some(b'u')) => 4,
            (b'\\', Some(b'U')) => 8,
            _ => {
                out.push(char::from(b));
                i += 1;
                continue;
            }
        };
        let hex = line
            .get(i + 2..i + 2 + width)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| Error::new("a bad \\u escape in a protocol 0 str"))?;
        let hex = char::from_u32(hex).ok_or_else(|| Error::new(NOT_UTF8))?;
        out.push(hex);
        i += 2 + width;
    }
    Ok(out)
}

// --------------------------------------------------------------------------------------------
// Decoding, step 2: the arena into the Rust value, through serde
// --------------------------------------------------------------------------------------------

/// One node of the arena, as a serde `Deserializer`.
struct NodeDe<'a> {
    arena: &'a mut Arena,
    id: Id,
    /// Every node from the root to here is referred to once, so this one can be moved out.
    owned: bool,
    depth: u32,
    /// Checks and budget already applied (the tagged form visits a node twice).
    entered: bool,
}

impl<'a> NodeDe<'a> {
    fn new(arena: &'a mut Arena, id: Id, owned: bool, depth: u32) -> Self {
        Self {
            arena,
            id,
            owned,
            depth,
            entered: false,
        }
    }

    fn enter(&mut self) -> Result<()> {
        if self.entered {
            return Ok(());
        }
        self.entered = true;
        if self.depth > MAX_DEPTH {
            return Err(Error::new(format!(
                "the value nests deeper than {MAX_DEPTH} levels"
            )));
        }
        if self.arena.on_path[self.id as usize] {
            return Err(Error::new(
                "a structure that contains itself (a recursive list or dict) cannot be decoded",
            ));
        }
        let cost = match &self.arena.nodes[self.id as usize] {
            Node::Str(s) | Node::BigInt(s) => 32 + s.len() as u64,
            Node::Bytes(b) => 32 + b.len() as u64,
            Node::List(v) | Node::Tuple(v) | Node::Set(v) | Node::FrozenSet(v) => {
                32 + 8 * v.len() as u64
            }
            Node::Dict(v) => 32 + 16 * v.len() as u64,
            _ => 32,
        };
        self.arena.budget = self.arena.budget.checked_sub(cost).ok_or_else(|| {
            Error::new(
                "the value expands (through shared references) beyond the size this codec \
                 accepts",
            )
        })?;
        Ok(())
    }

    fn owned_here(&self) -> bool {
        self.owned && self.arena.refs[self.id as usize] <= 1
    }

    /// What the node holds, moved out of the arena where this is its only use, else
    /// copied: never a [`Node::Global`] or [`Node::Taken`].
    fn content(&mut self) -> Result<Node> {
        self.enter()?;
        let owned = self.owned_here();
        let node = &mut self.arena.nodes[self.id as usize];
        match node {
            Node::Global(g) => Err(unresolved(*g)),
            Node::Taken => Err(Error::new("internal: a node was used twice")),
            _ if owned => Ok(std::mem::replace(node, Node::Taken)),
            _ => Ok(node.clone()),
        }
    }

    fn child(&mut self, id: Id) -> NodeDe<'_> {
        let owned = self.owned_here();
        NodeDe::new(self.arena, id, owned, self.depth + 1)
    }

    /// Visits the children of this node as a sequence, checking they are all used.
    fn visit_items<'de, V: Visitor<'de>>(self, ids: Vec<Id>, visitor: V) -> Result<V::Value> {
        let id = self.id as usize;
        let owned = self.owned_here();
        self.arena.on_path[id] = true;
        let mut seq = Items {
            arena: &mut *self.arena,
            ids: ids.into_iter(),
            owned,
            depth: self.depth + 1,
        };
        let result = visitor.visit_seq(&mut seq);
        let left = seq.ids.len();
        self.arena.on_path[id] = false;
        let value = result?;
        if left > 0 {
            return Err(de::Error::custom(format_args!(
                "{left} more items than the Rust type takes"
            )));
        }
        Ok(value)
    }

    fn visit_entries<'de, V: Visitor<'de>>(
        self,
        entries: Vec<(Id, Id)>,
        visitor: V,
    ) -> Result<V::Value> {
        let id = self.id as usize;
        let owned = self.owned_here();
        self.arena.on_path[id] = true;
        let mut map = Entries {
            arena: &mut *self.arena,
            entries: entries.into_iter(),
            value: None,
            owned,
            depth: self.depth + 1,
        };
        let result = visitor.visit_map(&mut map);
        let left = map.entries.len();
        self.arena.on_path[id] = false;
        let value = result?;
        if left > 0 {
            return Err(de::Error::custom(format_args!(
                "{left} more entries than the Rust type takes"
            )));
        }
        Ok(value)
    }

    /// The form [`PyValue`] asks for: containers other than lists as one-entry maps from a
    /// tag to the content.
    fn visit_tagged<'de, V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value> {
        self.enter()?;
        let tag = match &self.arena.nodes[self.id as usize] {
            Node::Tuple(_) => TAG_TUPLE,
            Node::Dict(_) => TAG_DICT,
            Node::Set(_) => TAG_SET,
            Node::FrozenSet(_) => TAG_FROZENSET,
            Node::BigInt(_) => TAG_BIGINT,
            _ => return self.deserialize_any(visitor),
        };
        let inner = if tag == TAG_BIGINT {
            let Node::BigInt(digits) = self.content()? else {
                unreachable!("checked above")
            };
            TaggedValue::Text(digits)
        } else {
            TaggedValue::Node(self)
        };
        visitor.visit_map(Tagged {
            tag: Some(tag),
            inner: Some(inner),
        })
    }
}

fn unresolved(g: Global) -> Error {
    Error::new(format!("{g:?} used as a value rather than called"))
}

fn visit_int<'de, V: Visitor<'de>>(v: i128, visitor: V) -> Result<V::Value> {
    if let Ok(v) = i64::try_from(v) {
        visitor.visit_i64(v)
    } else if let Ok(v) = u64::try_from(v) {
        visitor.visit_u64(v)
    } else {
        visitor.visit_i128(v)
    }
}

fn visit_big_int<'de, V: Visitor<'de>>(digits: &str, visitor: V) -> Result<V::Value> {
    if let Ok(v) = digits.parse::<u128>() {
        return visitor.visit_u128(v);
    }
    let shown = if digits.len() > 50 {
        format!("{}...({} digits)", &digits[..40], digits.len())
    } else {
        digits.to_owned()
    };
    Err(de::Error::invalid_value(
        Unexpected::Other(&format!("integer {shown}")),
        &visitor,
    ))
}

impl<'de> Deserializer<'de> for NodeDe<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value> {
        match self.content()? {
            Node::None => visitor.visit_unit(),
            Node::Bool(b) => visitor.visit_bool(b),
            Node::Int(i) => visit_int(i, visitor),
            Node::BigInt(s) => visit_big_int(&s, visitor),
            Node::Float(f) => visitor.visit_f64(f),
            Node::Str(s) => visitor.visit_string(s),
            Node::Bytes(b) => visitor.visit_byte_buf(b),
            Node::List(v) | Node::Tuple(v) | Node::Set(v) | Node::FrozenSet(v) => {
                self.visit_items(v, visitor)
            }
            Node::Dict(v) => self.visit_entries(v, visitor),
            // `content` refuses these.
            Node::Global(_) | Node::Taken => Err(Error::new("internal: a placeholder node")),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value> {
        self.enter()?;
        match self.arena.nodes[self.id as usize] {
            Node::None => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value> {
        self.enter()?;
        match &self.arena.nodes[self.id as usize] {
            Node::None => visitor.visit_unit(),
            Node::Tuple(items) if items.is_empty() => visitor.visit_unit(),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        if name == PYVALUE_NAME {
            self.visit_tagged(visitor)
        } else {
            visitor.visit_newtype_struct(self)
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value> {
        self.enter()?;
        if !matches!(self.arena.nodes[self.id as usize], Node::Bytes(_)) {
            return self.deserialize_any(visitor);
        }
        // Python bytes into a Rust Vec<u8> or [u8; N].
        let Node::Bytes(bytes) = self.content()? else {
            unreachable!("checked above")
        };
        let mut seq = de::value::SeqDeserializer::<_, Error>::new(bytes.into_iter());
        let value = visitor.visit_seq(&mut seq)?;
        seq.end()?;
        Ok(value)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        let (variant, data) = match self.content()? {
            Node::Str(name) => return visitor.visit_enum(name.into_deserializer()),
            Node::Dict(entries) if entries.len() == 1 => (entries[0].0, Some(entries[0].1)),
            Node::Tuple(items) | Node::List(items) if matches!(items.len(), 1 | 2) => {
                (items[0], items.get(1).copied())
            }
            _ => {
                return Err(Error::new(
                    "an enum is a str (a unit variant) or a one-entry dict {variant: data}",
                ));
            }
        };
        let id = self.id as usize;
        self.arena.on_path[id] = true;
        let result = visitor.visit_enum(Variant {
            de: &mut self,
            variant,
            data,
        });
        self.arena.on_path[id] = false;
        result
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        map struct identifier
    }
}

struct Items<'a> {
    arena: &'a mut Arena,
    ids: std::vec::IntoIter<Id>,
    owned: bool,
    depth: u32,
}

impl<'de> de::SeqAccess<'de> for &mut Items<'_> {
    type Error = Error;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>> {
        let Some(id) = self.ids.next() else {
            return Ok(None);
        };
        seed.deserialize(NodeDe::new(self.arena, id, self.owned, self.depth))
            .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.ids.len())
    }
}

struct Entries<'a> {
    arena: &'a mut Arena,
    entries: std::vec::IntoIter<(Id, Id)>,
    value: Option<Id>,
    owned: bool,
    depth: u32,
}

impl Entries<'_> {
    fn node(&mut self, id: Id) -> NodeDe<'_> {
        NodeDe::new(self.arena, id, self.owned, self.depth)
    }
}

impl<'de> de::MapAccess<'de> for &mut Entries<'_> {
    type Error = Error;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        seed.deserialize(self.node(key)).map(Some)
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        let value = self
            .value
            .take()
            .ok_or_else(|| Error::new("internal: a value asked before its key"))?;
        seed.deserialize(self.node(value))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// An enum variant: its name, and what it carries.
struct Variant<'r, 'a> {
    de: &'r mut NodeDe<'a>,
    variant: Id,
    data: Option<Id>,
}

impl<'de, 'r, 'a> de::EnumAccess<'de> for Variant<'r, 'a> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<S: de::DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self)> {
        let name = seed.deserialize(self.de.child(self.variant))?;
        Ok((name, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_, '_> {
    type Error = Error;

    fn unit_variant(self) -> Result<()> {
        match self.data {
            None => Ok(()),
            Some(id) => match self.de.arena.nodes[id as usize] {
                Node::None => Ok(()),
                _ => Err(Error::new("a unit variant with data")),
            },
        }
    }

    fn newtype_variant_seed<S: de::DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value> {
        let data = self
            .data
            .ok_or_else(|| Error::new("a newtype variant without data"))?;
        seed.deserialize(self.de.child(data))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        let data = self
            .data
            .ok_or_else(|| Error::new("a tuple variant without data"))?;
        self.de.child(data).deserialize_seq(visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        let data = self
            .data
            .ok_or_else(|| Error::new("a struct variant without data"))?;
        self.de.child(data).deserialize_any(visitor)
    }
}

/// The one-entry map `{tag: content}` of the tagged form.
struct Tagged<'a> {
    tag: Option<&'static str>,
    inner: Option<TaggedValue<'a>>,
}

enum TaggedValue<'a> {
    /// A container, visited plainly.
    Node(NodeDe<'a>),
    /// A big integer's digits.
    Text(String),
}

impl<'de> de::MapAccess<'de> for Tagged<'_> {
    type Error = Error;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        match self.tag.take() {
            None => Ok(None),
            Some(tag) => seed.deserialize(tag.into_deserializer()).map(Some),
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        match self.inner.take() {
            Some(TaggedValue::Node(node)) => seed.deserialize(node),
            Some(TaggedValue::Text(digits)) => seed.deserialize(digits.into_deserializer()),
            None => Err(Error::new("internal: tagged value asked twice")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(usize::from(self.tag.is_some()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::fmt::Debug;

    use serde::{Deserialize, Serialize, de::DeserializeOwned};
    use serde_bytes::ByteBuf;

    use super::{Codec, Pickle, PyValue, decimal_to_twos_complement, twos_complement_to_decimal};

    fn enc<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        Pickle::encode(value, &mut out).unwrap();
        out
    }

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: T) {
        let back: T = Pickle::decode(&enc(&value)).unwrap();
        assert_eq!(back, value);
    }

    fn decode_err<T: DeserializeOwned + Debug>(bytes: &[u8]) -> String {
        let err = Pickle::decode::<T>(bytes).unwrap_err().to_string();
        assert!(err.starts_with("cannot decode pickle: "), "{err}");
        err
    }

    #[test]
    fn integers_round_trip_at_every_boundary() {
        for v in [
            0i64,
            1,
            -1,
            255,
            256,
            65535,
            65536,
            -129,
            i32::MIN.into(),
            i32::MAX.into(),
        ] {
            round_trip(v);
        }
        round_trip((i8::MIN, i8::MAX, i16::MIN, i16::MAX, i64::MIN, i64::MAX));
        round_trip((
            u8::MAX,
            u16::MAX,
            u32::MAX,
            u64::MAX,
            u64::MAX - 1,
            1u64 << 63,
        ));
        round_trip((
            i128::MIN,
            i128::MAX,
            u128::MAX,
            u128::MAX >> 1,
            (1u128 << 127) + 5,
        ));
        round_trip(vec![u64::MAX; 3]);
    }

    #[test]
    fn integers_out_of_range_are_errors_that_name_the_value() {
        let err = decode_err::<i64>(&enc(&u64::MAX));
        assert!(err.contains("18446744073709551615"), "{err}");
        let err = decode_err::<u8>(&enc(&256u16));
        assert!(err.contains("256") && err.contains("u8"), "{err}");
        let err = decode_err::<u64>(&enc(&-1i8));
        assert!(err.contains("-1"), "{err}");
        let big = PyValue::BigInt("-340282366920938463463374607431768211457".into());
        let err = decode_err::<i128>(&enc(&big));
        assert!(
            err.contains("340282366920938463463374607431768211457"),
            "{err}"
        );
    }

    #[test]
    fn floats_including_nan_infinities_and_negative_zero() {
        round_trip((1.5f64, -0.0f64, f64::MAX, f64::MIN_POSITIVE, f64::INFINITY));
        round_trip(0.1f32);
        let nan: f64 = Pickle::decode(&enc(&f64::NAN)).unwrap();
        assert!(nan.is_nan());
        assert!(
            Pickle::decode::<f64>(&enc(&-0.0f64))
                .unwrap()
                .is_sign_negative()
        );
        // A Python int where a float is expected is fine, as in Python.
        assert_eq!(Pickle::decode::<f64>(&enc(&3u8)).unwrap(), 3.0);
    }

    #[test]
    fn strings_bytes_and_chars() {
        round_trip(String::new());
        round_trip("héllo wörld ✓ 🦀".to_string());
        round_trip("x".repeat(300));
        round_trip('🦀');
        round_trip(ByteBuf::from(vec![]));
        round_trip(ByteBuf::from((0..=255).collect::<Vec<u8>>()));
        round_trip(ByteBuf::from(vec![7; 70_000]));
        // Python bytes decode into a Vec<u8> and an array as well.
        let bytes = enc(&ByteBuf::from(b"abc".to_vec()));
        assert_eq!(Pickle::decode::<Vec<u8>>(&bytes).unwrap(), b"abc");
        assert_eq!(Pickle::decode::<[u8; 3]>(&bytes).unwrap(), *b"abc");
    }

    #[test]
    fn sixteen_mib_of_bytes() {
        let big = ByteBuf::from(vec![0xa5u8; 16 << 20]);
        let bytes = enc(&big);
        assert!(bytes.len() < (16 << 20) + 16);
        assert_eq!(Pickle::decode::<ByteBuf>(&bytes).unwrap(), big);
    }

    #[test]
    fn containers_options_and_unit() {
        round_trip(Vec::<i32>::new());
        round_trip((0..2500).collect::<Vec<u32>>()); // more than one APPENDS batch
        round_trip(vec![Some(1), None, Some(3)]);
        round_trip(Some(Some(5u8)));
        round_trip(());
        round_trip(((), (1,), (1, "a".to_string(), 2.5), ((1, 2), [3, 4])));
        let map: HashMap<String, Vec<i64>> =
            (0..1500).map(|i| (format!("k{i}"), vec![i, -i])).collect();
        round_trip(map);
        round_trip(BTreeMap::from([
            (1i64, "one".to_string()),
            (-2, "minus two".into()),
        ]));
        round_trip(HashMap::from([((1u8, 2u8), true)]));
        round_trip(HashMap::<String, String>::new());
        // Some(None) flattens to None, as in every format without an Option type.
        assert_eq!(
            Pickle::decode::<Option<Option<u8>>>(&enc(&Some(None::<u8>))).unwrap(),
            None
        );
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Point {
        x: i32,
        y: i32,
        label: Option<String>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Empty,
        Circle(f64),
        Line(Point, Point),
        Rect { w: u32, h: u32 },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Meters(f64);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Pair(u8, String);

    #[test]
    fn structs_and_enums() {
        let p = Point {
            x: 1,
            y: -2,
            label: Some("p".into()),
        };
        round_trip(Point {
            x: 1,
            y: -2,
            label: None,
        });
        round_trip(Meters(2.5));
        round_trip(Pair(1, "one".into()));
        round_trip(vec![
            Shape::Empty,
            Shape::Circle(1.0),
            Shape::Line(
                p,
                Point {
                    x: 0,
                    y: 0,
                    label: None,
                },
            ),
            Shape::Rect { w: 3, h: 4 },
        ]);
        // What a Python peer sees.
        let seen = |v: &Shape| Pickle::decode::<PyValue>(&enc(v)).unwrap().to_string();
        assert_eq!(seen(&Shape::Empty), "'Empty'");
        assert_eq!(seen(&Shape::Circle(1.0)), "{'Circle': 1.0}");
        assert_eq!(
            seen(&Shape::Rect { w: 3, h: 4 }),
            "{'Rect': {'w': 3, 'h': 4}}"
        );
        let line = Shape::Line(
            Point {
                x: 1,
                y: 2,
                label: None,
            },
            Point {
                x: 3,
                y: 4,
                label: None,
            },
        );
        assert_eq!(
            seen(&line),
            "{'Line': ({'x': 1, 'y': 2, 'label': None}, {'x': 3, 'y': 4, 'label': None})}"
        );
    }

    #[test]
    fn enums_in_serde_pickle_compat_form_decode() {
        // ('Circle', 2.0) and ('Empty',), as serde-pickle's compat_enum_repr writes them.
        let compat = enc(&(("Circle", 2.0), ("Empty",)));
        assert_eq!(
            Pickle::decode::<(Shape, Shape)>(&compat).unwrap(),
            (Shape::Circle(2.0), Shape::Empty)
        );
    }

    #[test]
    fn struct_field_errors_are_serdes() {
        let err = decode_err::<Point>(&enc(&HashMap::from([("x", 1)])));
        assert!(err.contains("missing field `y`"), "{err}");
        let err = decode_err::<(u8, u8)>(&enc(&(1, 2, 3)));
        assert!(err.contains("more items"), "{err}");
        let err = decode_err::<String>(&enc(&5));
        assert!(
            err.contains("invalid type: integer `5`, expected a string"),
            "{err}"
        );
    }

    fn sample_py_value() -> PyValue {
        use PyValue::*;
        Dict(vec![
            (Str("none".into()), None),
            (Int(-1), Bool(true)),
            (
                Tuple(vec![Int(1), Str("a".into())]),
                List(vec![Float(1.5), Float(f64::INFINITY)]),
            ),
            (
                Str("set".into()),
                Set(vec![Int(1), Bytes(b"\x00'\\".to_vec())]),
            ),
            (Str("frozen".into()), FrozenSet(vec![Tuple(vec![])])),
            (
                Str("empty".into()),
                List(vec![Set(vec![]), FrozenSet(vec![]), Dict(vec![])]),
            ),
            (
                Str("big".into()),
                List(vec![
                    Int(i128::MIN),
                    Int(u64::MAX.into()),
                    BigInt("340282366920938463463374607431768211455".into()),
                    BigInt("-1000000000000000000000000000000000000000000000000000000000001".into()),
                ]),
            ),
            (
                FrozenSet(vec![Int(2)]),
                Str("q'uote\n\u{1F980}\u{7}".into()),
            ),
            (Tuple(vec![Int(1)]), Tuple(vec![Tuple(vec![Int(2)])])),
        ])
    }

    #[test]
    fn py_value_round_trips_every_variant() {
        round_trip(sample_py_value());
        round_trip(PyValue::None);
        round_trip(PyValue::Int(0));
    }

    #[test]
    fn py_value_displays_as_python() {
        assert_eq!(
            sample_py_value().to_string(),
            "{'none': None, -1: True, (1, 'a'): [1.5, float('inf')], 'set': {1, b'\\x00\\'\\\\'}, \
             'frozen': frozenset({()}), 'empty': [set(), frozenset(), {}], 'big': \
             [-170141183460469231731687303715884105728, 18446744073709551615, \
             340282366920938463463374607431768211455, \
             -1000000000000000000000000000000000000000000000000000000000001], \
             frozenset({2}): 'q\\'uote\\n🦀\\x07', (1,): ((2,),)}"
        );
    }

    #[test]
    fn py_value_decodes_typed_encodings() {
        let v: PyValue =
            Pickle::decode(&enc(&(1u8, vec!["a"], HashMap::from([(2, 3.5)])))).unwrap();
        assert_eq!(v.to_string(), "(1, ['a'], {2: 3.5})");
        // and the typed side reads a PyValue's sets and tuples as sequences
        let set = PyValue::Set(vec![PyValue::Int(1), PyValue::Int(2)]);
        let mut v: Vec<u8> = Pickle::decode(&enc(&set)).unwrap();
        v.sort();
        assert_eq!(v, [1, 2]);
    }

    #[test]
    fn big_int_text_conversions_agree_with_i128() {
        let cases = [
            0i128,
            1,
            -1,
            127,
            128,
            -128,
            -129,
            255,
            256,
            i64::MAX.into(),
            i128::MIN,
            i128::MAX,
        ];
        for v in cases
            .into_iter()
            .chain((0..127).flat_map(|s| [1i128 << s, -(1i128 << s), (1i128 << s) - 1]))
        {
            let bytes = decimal_to_twos_complement(&v.to_string()).unwrap();
            assert_eq!(
                bytes,
                super::minimal_twos_complement(&v.to_le_bytes()),
                "{v}"
            );
            assert_eq!(twos_complement_to_decimal(&bytes), v.to_string());
        }
        let huge = format!("-{}", "9".repeat(600));
        let bytes = decimal_to_twos_complement(&huge).unwrap();
        assert_eq!(twos_complement_to_decimal(&bytes), huge);
        assert!(decimal_to_twos_complement("12a").is_err());
        assert!(decimal_to_twos_complement("-").is_err());
        assert!(decimal_to_twos_complement(&"9".repeat(6000)).is_err());
    }

    #[test]
    fn unhashable_keys_are_refused_when_encoding() {
        let mut out = b"kept".to_vec();
        let err = Pickle::encode(&HashMap::from([(vec![1], 2)]), &mut out).unwrap_err();
        assert!(err.to_string().contains("unhashable"), "{err}");
        assert_eq!(out, b"kept", "a failed encode leaves the buffer as it was");
        let set_of_lists = PyValue::Set(vec![PyValue::List(vec![])]);
        assert!(Pickle::encode(&set_of_lists, &mut out).is_err());
        let dict_key = PyValue::Dict(vec![(PyValue::Dict(vec![]), PyValue::None)]);
        assert!(Pickle::encode(&dict_key, &mut out).is_err());
        let variant_key = HashMap::from([(ShapeKey::B(1), 1)]);
        assert!(Pickle::encode(&variant_key, &mut out).is_err());
        // Tuples, frozensets and unit variants are hashable.
        let ok = PyValue::Dict(vec![(
            PyValue::Tuple(vec![PyValue::FrozenSet(vec![PyValue::Str("x".into())])]),
            PyValue::None,
        )]);
        round_trip(ok);
        round_trip(HashMap::from([(ShapeKey::A, 1)]));
    }

    #[derive(Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
    enum ShapeKey {
        A,
        B(u8),
    }

    #[test]
    fn a_descriptor_cannot_be_pickled() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = crate::codec::Descriptor::from(std::os::fd::OwnedFd::from(file));
        let mut out = Vec::new();
        let err = Pickle::encode(&(1, fd), &mut out).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot encode value as a pickle: "),
            "{err}"
        );
        assert!(err.contains("descriptor"), "{err}");
        assert!(out.is_empty());
        const { assert!(!Pickle::CARRIES_DESCRIPTORS) };
    }

    // Hostile or foreign input, written opcode by opcode.

    #[test]
    fn class_instances_and_foreign_globals_are_refused_by_name() {
        // protocol 4: __main__.Point, NEWOBJ, BUILD
        let point = b"\x80\x04\x8c\x08__main__\x8c\x05Point\x93)\x81}(\x8c\x01xK\x01ub.";
        let err = decode_err::<PyValue>(point);
        assert!(
            err.contains("refusing the Python global __main__.Point"),
            "{err}"
        );
        // protocol 0: os.system('echo hi'), the classic
        let system = b"cos\nsystem\n(Vecho hi\ntR.";
        let err = decode_err::<PyValue>(system);
        assert!(err.contains("os.system"), "{err}");
        // INST names its class too
        let inst = b"(imodule\nKlass\n.";
        assert!(decode_err::<PyValue>(inst).contains("module.Klass"));
        // no global at all, but instance opcodes
        for op in [b'o', 0x81, 0x92, b'b'] {
            let bytes = [b'(', b']', b')', op, b'.'];
            assert!(decode_err::<PyValue>(&bytes).contains("custom class"));
        }
        assert!(decode_err::<PyValue>(b"\x82\x01.").contains("extension registry"));
        assert!(decode_err::<PyValue>(b"Pid\n.").contains("persistent"));
        assert!(decode_err::<PyValue>(b"\x80\x05\x97.").contains("out-of-band"));
        assert!(decode_err::<PyValue>(b"S'py2'\n.").contains("Python 2 str"));
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert!(decode_err::<u8>(b"").contains("truncated"));
        assert!(decode_err::<u8>(b"K").contains("truncated"));
        assert!(decode_err::<u8>(b"K\x01").contains("truncated"));
        assert!(decode_err::<u8>(b"K\x01.junk").contains("4 bytes after the end"));
        assert!(decode_err::<u8>(b"\x80\x06K\x01.").contains("protocol 6"));
        assert!(decode_err::<u8>(b"\xffK\x01.").contains("unknown opcode (opcode 0xff at byte 0)"));
        assert!(decode_err::<u8>(b".").contains("underflow"));
        assert!(decode_err::<u8>(b"(.").contains("underflow"));
        assert!(decode_err::<u8>(b"K\x01h\x05.").contains("memo entry 5"));
        assert!(decode_err::<u8>(b"K\x01a.").contains("underflow"));
        assert!(decode_err::<u8>(b"K\x01K\x02a.").contains("not a list"));
        // lengths beyond the message are refused before any allocation
        assert!(
            decode_err::<ByteBuf>(b"\x8e\xff\xff\xff\xff\xff\xff\xff\x7f.").contains("truncated")
        );
        assert!(decode_err::<String>(b"X\xff\xff\xff\xff").contains("truncated"));
        assert!(decode_err::<u8>(b"\x8b\xff\xff\xff\x7f").contains("larger than"));
        assert!(decode_err::<u8>(b"\x95\xff\x00\x00\x00\x00\x00\x00\x00K\x01.").contains("frame"));
        assert!(decode_err::<String>(b"\x8c\x01\xff.").contains("UTF-8"));
    }

    #[test]
    fn a_structure_that_contains_itself_is_refused() {
        // l = []; l.append(l)
        let err = decode_err::<PyValue>(b"\x80\x04]\x94h\x00a.");
        assert!(err.contains("contains itself"), "{err}");
    }

    #[test]
    fn nesting_is_bounded() {
        let nested = |depth: usize| {
            let mut bytes = vec![b']'; depth + 1];
            bytes.extend(std::iter::repeat_n(b'a', depth));
            bytes.push(b'.');
            bytes
        };
        // Within the bound, even in a thread with a small stack (debug build).
        let ok = nested(super::MAX_DEPTH as usize);
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || Pickle::decode::<PyValue>(&ok).unwrap())
            .unwrap()
            .join()
            .unwrap();
        let err = decode_err::<PyValue>(&nested(100_000));
        assert!(err.contains("deeper than 512"), "{err}");
    }

    #[test]
    fn shared_references_cannot_expand_without_bound() {
        // A 1 KiB string, then 40 levels of [prev, prev]: 2^40 KiB if copied out.
        let mut bytes = b"\x80\x04X\x00\x04\x00\x00".to_vec();
        bytes.extend([b'x'; 1024]);
        bytes.push(0x94);
        for level in 0u32..40 {
            bytes.extend(b"](h");
            bytes.push(level as u8);
            bytes.push(b'h');
            bytes.push(level as u8);
            bytes.extend(b"e\x94");
        }
        bytes.push(b'.');
        let err = decode_err::<PyValue>(&bytes);
        assert!(err.contains("expands"), "{err}");
        // while modest sharing is fine: [s] * 1000
        let mut bytes = b"\x80\x04X\x00\x04\x00\x00".to_vec();
        bytes.extend([b'y'; 1024]);
        bytes.extend(b"\x940](");
        for _ in 0..1000 {
            bytes.extend(b"h\x00");
        }
        bytes.extend(b"e.");
        let v: Vec<String> = Pickle::decode(&bytes).unwrap();
        assert_eq!(v.len(), 1000);
        assert!(v.iter().all(|s| s.len() == 1024));
    }

    #[test]
    fn old_protocol_spellings_decode() {
        // Protocol 0 as CPython 3 writes [1, 2**70, 1.5, 'é\\', b'\x00\xff', {1: None}, True]
        let p0 =
            b"(lp0\nI1\naL1180591620717411303424L\naF1.5\naV\xe9\\u005c\np1\nac_codecs\nencode\n\
                   p2\n(V\x00\xff\np3\nVlatin1\np4\ntp5\nRp6\na(dp7\nI1\nNsaI01\na.";
        let v: PyValue = Pickle::decode(p0).unwrap();
        assert_eq!(
            v.to_string(),
            "[1, 1180591620717411303424, 1.5, 'é\\\\', b'\\x00\\xff', {1: None}, True]"
        );
        // Protocol 2 set: builtins.set([1])
        let p2 = b"\x80\x02c__builtin__\nset\n]K\x01a\x85R.";
        assert_eq!(Pickle::decode::<PyValue>(p2).unwrap().to_string(), "{1}");
        // A FLOAT spelt nan
        assert!(Pickle::decode::<f64>(b"Fnan\n.").unwrap().is_nan());
    }
}
