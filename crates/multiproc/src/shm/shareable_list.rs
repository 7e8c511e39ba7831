//! [`ShareableList`]: CPython's `multiprocessing.shared_memory.ShareableList`, byte for byte,
//! so that a list made in Rust can be read and written by Python and the other way round.
//!
//! # The layout
//!
//! CPython 3.9 to 3.13 share one layout (the class is the same, line for line, in 3.9.18,
//! 3.10.13, 3.11.7, 3.12.1 and 3.13.0; 3.8 wrote another one, not supported here).
//! Every integer is in the machine's byte order (`struct`'s native `@` mode; no padding
//! arises, as every field below begins at a multiple of 8):
//!
//! | bytes | content |
//! |---|---|
//! | 8 | `n`, the number of items (`q`) |
//! | `(n + 1) * 8` | the offset of each item's slot from the start of the data area, then the end of the data area (`q` each; the first is 0) |
//! | `offsets[n]` | the data area: one slot per item |
//! | `n * 8` | each item's `struct` format, ASCII, padded with NULs to 8 bytes |
//! | `n` | each item's back-transform code (`b`): 0 value as unpacked, 1 `str`, 2 `bytes`, 3 `None` |
//!
//! | item | format | slot | code |
//! |---|---|---|---|
//! | `int` (i64) | `q` | 8 | 0 |
//! | `float` | `d` | 8 | 0 |
//! | `bool` | `xxxxxxx?` (the value in the slot's last byte) | 8 | 0 |
//! | `None` | `xxxxxx?x` (8 zero bytes) | 8 | 3 |
//! | `str` (UTF-8) | `<slot>s` | `8 * (len / 8 + 1)` | 1 |
//! | `bytes` | `<slot>s` | `8 * (len / 8 + 1)` | 2 |
//!
//! Strings and bytes are NUL-padded to their slot and read back with trailing NULs stripped
//! (CPython's `rstrip(b'\x00')`, so a trailing NUL does not survive either side). Slots never
//! move: writing an item of another type changes only its format and code (a `str` or `bytes`
//! written into a non-`s` slot gets the format `<slot>s`; an 8-byte item written into a
//! `str` slot leaves the rest of the old text in place, as CPython does), and a `str` or
//! `bytes` longer than its slot is refused with CPython's message.
//!
//! One deliberate difference: CPython sizes a `str` slot by its number of *characters*
//! (`len(item)`) and silently truncates longer UTF-8 encodings (CPython gh-88336, open in
//! 3.13); Rust sizes it by its UTF-8 length, so nothing is lost. For ASCII the two agree,
//! and both sides read either layout, since the offsets are stored in the header.

use std::fmt;
use std::str::Utf8Error;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{SharedMemory, ShmError};

/// Slots are multiples of this many bytes (CPython's `_alignment`).
const ALIGNMENT: usize = 8;
/// The width of a stored format, and of every non-`str`/`bytes` item.
const WIDTH: usize = 8;
/// The largest `str`/`bytes` slot: its format, `<slot>s`, must fit in [`WIDTH`] characters.
const MAX_SLOT: usize = 9_999_992;

/// Back-transform codes (CPython's `_back_transforms_mapping`).
const CODE_VALUE: i8 = 0;
const CODE_STR: i8 = 1;
const CODE_BYTES: i8 = 2;
const CODE_NONE: i8 = 3;

/// One item of a [`ShareableList`]: the six Python types a `ShareableList` can hold.
///
/// `From` conversions make lists easy to write; `ListItem::None` is Python's `None`.
/// [`PartialEq`] compares structurally (`Int(1) != Bool(true)`); [`ListItem::py_eq`] is
/// Python's `==`. [`Display`](fmt::Display) gives Python's `repr`.
///
/// # Examples
///
/// ```
/// use multiproc::ListItem;
///
/// let items: Vec<ListItem> = vec![
///     42.into(),
///     2.5.into(),
///     true.into(),
///     "text".into(),
///     b"raw".into(),
///     ListItem::None,
/// ];
/// assert_eq!(items[0], ListItem::Int(42));
/// assert_eq!(items[3].as_str(), Some("text"));
/// assert_eq!(items[4].to_string(), "b'raw'");
/// assert!(ListItem::Int(1).py_eq(&ListItem::Bool(true)));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ListItem {
    /// `int`, as a 64-bit signed integer (format `q`).
    Int(i64),
    /// `float` (format `d`).
    Float(f64),
    /// `bool` (format `xxxxxxx?`).
    Bool(bool),
    /// `str`, stored as UTF-8 (format `<n>s`, code 1).
    Str(String),
    /// `bytes` (format `<n>s`, code 2).
    Bytes(Vec<u8>),
    /// `None` (format `xxxxxx?x`).
    None,
}

impl ListItem {
    /// The integer, if this is an [`Int`](ListItem::Int).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::ListItem;
    ///
    /// assert_eq!(ListItem::Int(7).as_int(), Some(7));
    /// assert_eq!(ListItem::Bool(true).as_int(), None);
    /// ```
    pub fn as_int(&self) -> Option<i64> {
        match self {
            ListItem::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// The float, if this is a [`Float`](ListItem::Float).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::ListItem;
    ///
    /// assert_eq!(ListItem::Float(0.5).as_float(), Some(0.5));
    /// assert_eq!(ListItem::Int(1).as_float(), None);
    /// ```
    pub fn as_float(&self) -> Option<f64> {
        match self {
            ListItem::Float(v) => Some(*v),
            _ => None,
        }
    }

    /// The boolean, if this is a [`Bool`](ListItem::Bool).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::ListItem;
    ///
    /// assert_eq!(ListItem::Bool(false).as_bool(), Some(false));
    /// assert_eq!(ListItem::Int(0).as_bool(), None);
    /// ```
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            ListItem::Bool(v) => Some(*v),
            _ => None,
        }
    }

    /// The string, if this is a [`Str`](ListItem::Str).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::ListItem;
    ///
    /// assert_eq!(ListItem::from("abc").as_str(), Some("abc"));
    /// assert_eq!(ListItem::from(b"abc").as_str(), None);
    /// ```
    pub fn as_str(&self) -> Option<&str> {
        match self {
            ListItem::Str(v) => Some(v),
            _ => None,
        }
    }

    /// The bytes, if this is a [`Bytes`](ListItem::Bytes).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::ListItem;
    ///
    /// assert_eq!(ListItem::from(b"abc").as_bytes(), Some(&b"abc"[..]));
    /// assert_eq!(ListItem::from("abc").as_bytes(), None);
    /// ```
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            ListItem::Bytes(v) => Some(v),
            _ => None,
        }
    }

    /// Whether this is [`ListItem::None`].
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::ListItem;
    ///
    /// assert!(ListItem::from(()).is_none());
    /// assert!(ListItem::from(None::<i64>).is_none());
    /// assert!(!ListItem::Int(0).is_none());
    /// ```
    pub fn is_none(&self) -> bool {
        matches!(self, ListItem::None)
    }

    /// Python's `==`, which [`ShareableList::count`] and [`ShareableList::index`] use: numbers
    /// compare by value across `int`, `float` and `bool` (`1 == 1.0 == True`), NaN equals
    /// nothing, `str` never equals `bytes`.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::ListItem;
    ///
    /// assert!(ListItem::Int(1).py_eq(&ListItem::Float(1.0)));
    /// assert!(ListItem::Float(0.0).py_eq(&ListItem::Bool(false)));
    /// assert!(!ListItem::from("a").py_eq(&ListItem::from(b"a")));
    /// assert!(!ListItem::Float(f64::NAN).py_eq(&ListItem::Float(f64::NAN)));
    /// ```
    pub fn py_eq(&self, other: &ListItem) -> bool {
        use ListItem as L;
        match (self, other) {
            (L::Int(a), L::Int(b)) => a == b,
            (L::Bool(a), L::Bool(b)) => a == b,
            (L::Float(a), L::Float(b)) => a == b,
            (L::Int(i), L::Bool(b)) | (L::Bool(b), L::Int(i)) => *i == i64::from(*b),
            (L::Float(x), L::Bool(b)) | (L::Bool(b), L::Float(x)) => *x == f64::from(u8::from(*b)),
            (L::Float(x), L::Int(i)) | (L::Int(i), L::Float(x)) => float_equals_int(*x, *i),
            (L::Str(a), L::Str(b)) => a == b,
            (L::Bytes(a), L::Bytes(b)) => a == b,
            (L::None, L::None) => true,
            _ => false,
        }
    }

    /// CPython's `_extract_recreation_code`.
    fn code(&self) -> i8 {
        match self {
            ListItem::Str(_) => CODE_STR,
            ListItem::Bytes(_) => CODE_BYTES,
            ListItem::None => CODE_NONE,
            ListItem::Int(_) | ListItem::Float(_) | ListItem::Bool(_) => CODE_VALUE,
        }
    }

    /// The stored bytes of a `str` or `bytes` item.
    fn text(&self) -> Option<&[u8]> {
        match self {
            ListItem::Str(s) => Some(s.as_bytes()),
            ListItem::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

/// Python compares an `int` and a `float` exactly (no rounding of the integer).
fn float_equals_int(x: f64, i: i64) -> bool {
    // -2^63 <= x < 2^63, so the cast is exact for an integral x.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    x.is_finite() && x.fract() == 0.0 && (-TWO_63..TWO_63).contains(&x) && x as i64 == i
}

/// Python's `repr` of the item (`1`, `2.5`, `1e+16`, `True`, `'text'`, `b'\x00'`, `None`).
///
/// # Examples
///
/// ```
/// use multiproc::ListItem;
///
/// assert_eq!(ListItem::Float(1e16).to_string(), "1e+16");
/// assert_eq!(ListItem::from("it's").to_string(), "\"it's\"");
/// assert_eq!(ListItem::from(&b"\x00a"[..]).to_string(), r"b'\x00a'");
/// ```
impl fmt::Display for ListItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListItem::Int(v) => write!(f, "{v}"),
            ListItem::Float(v) => f.write_str(&float_repr(*v)),
            ListItem::Bool(true) => f.write_str("True"),
            ListItem::Bool(false) => f.write_str("False"),
            ListItem::Str(s) => f.write_str(&str_repr(s)),
            ListItem::Bytes(b) => f.write_str(&bytes_repr(b)),
            ListItem::None => f.write_str("None"),
        }
    }
}

/// Python's `repr(float)`: the shortest round-trip digits, exponent form below 1e-4 and from
/// 1e16 on (Rust's `{:?}` uses the same rule), with Python's `e+16` / `e-05` exponents.
fn float_repr(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let s = format!("{v:?}");
    match s.split_once('e') {
        Some((mantissa, exponent)) => {
            let (sign, digits) = match exponent.strip_prefix('-') {
                Some(digits) => ('-', digits),
                None => ('+', exponent),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

/// The quote Python's `repr` picks: `'` unless the text has `'` and no `"`.
fn quote_for(has_single: bool, has_double: bool) -> char {
    if has_single && !has_double { '"' } else { '\'' }
}

/// Python's `repr(str)` (non-printable characters approximated by Unicode control
/// characters).
fn str_repr(s: &str) -> String {
    let quote = quote_for(s.contains('\''), s.contains('"'));
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() || c == '\u{a0}' || c == '\u{ad}' => {
                let n = u32::from(c);
                if n <= 0xff {
                    out.push_str(&format!("\\x{n:02x}"));
                } else if n <= 0xffff {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr(bytes)`.
fn bytes_repr(b: &[u8]) -> String {
    let quote = quote_for(b.contains(&b'\''), b.contains(&b'"'));
    let mut out = String::with_capacity(b.len() + 3);
    out.push('b');
    out.push(quote);
    for &byte in b {
        match byte {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            c if char::from(c) == quote => {
                out.push('\\');
                out.push(quote);
            }
            0x20..=0x7e => out.push(char::from(byte)),
            _ => out.push_str(&format!("\\x{byte:02x}")),
        }
    }
    out.push(quote);
    out
}

macro_rules! list_item_from {
    ($($(#[$doc:meta])* $t:ty => |$v:ident| $e:expr;)*) => {$(
        $(#[$doc])*
        impl From<$t> for ListItem {
            fn from($v: $t) -> Self {
                $e
            }
        }
    )*};
}

list_item_from! {
    /// An `int`.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(multiproc::ListItem::from(-5i64), multiproc::ListItem::Int(-5));
    /// ```
    i64 => |v| ListItem::Int(v);
    /// An `int`.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(multiproc::ListItem::from(3), multiproc::ListItem::Int(3));
    /// ```
    i32 => |v| ListItem::Int(i64::from(v));
    /// An `int`.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(multiproc::ListItem::from(3u32), multiproc::ListItem::Int(3));
    /// ```
    u32 => |v| ListItem::Int(i64::from(v));
    /// A `float`.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(multiproc::ListItem::from(0.25), multiproc::ListItem::Float(0.25));
    /// ```
    f64 => |v| ListItem::Float(v);
    /// A `bool`.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(multiproc::ListItem::from(true), multiproc::ListItem::Bool(true));
    /// ```
    bool => |v| ListItem::Bool(v);
    /// A `str`.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(multiproc::ListItem::from("hi"), multiproc::ListItem::Str("hi".into()));
    /// ```
    &str => |v| ListItem::Str(v.to_owned());
    /// A `str`.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = String::from("hi");
    /// assert_eq!(multiproc::ListItem::from(s), multiproc::ListItem::Str("hi".into()));
    /// ```
    String => |v| ListItem::Str(v);
    /// A `bytes`.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(multiproc::ListItem::from(vec![1u8]), multiproc::ListItem::Bytes(vec![1]));
    /// ```
    Vec<u8> => |v| ListItem::Bytes(v);
    /// A `bytes`.
    ///
    /// # Examples
    ///
    /// ```
    /// let raw: &[u8] = &[0, 1];
    /// assert_eq!(multiproc::ListItem::from(raw), multiproc::ListItem::Bytes(vec![0, 1]));
    /// ```
    &[u8] => |v| ListItem::Bytes(v.to_vec());
    /// `None`.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(multiproc::ListItem::from(()), multiproc::ListItem::None);
    /// ```
    () => |_v| ListItem::None;
}

/// A `bytes` from a byte string literal.
///
/// # Examples
///
/// ```
/// assert_eq!(multiproc::ListItem::from(b"ab"), multiproc::ListItem::Bytes(b"ab".to_vec()));
/// ```
impl<const N: usize> From<&[u8; N]> for ListItem {
    fn from(v: &[u8; N]) -> Self {
        ListItem::Bytes(v.to_vec())
    }
}

/// The value, or `None`.
///
/// # Examples
///
/// ```
/// use multiproc::ListItem;
///
/// assert_eq!(ListItem::from(Some(1.5)), ListItem::Float(1.5));
/// assert_eq!(ListItem::from(None::<&str>), ListItem::None);
/// ```
impl<T: Into<ListItem>> From<Option<T>> for ListItem {
    fn from(v: Option<T>) -> Self {
        v.map_or(ListItem::None, Into::into)
    }
}

/// An error from a [`ShareableList`]. Messages follow CPython's where CPython has one.
///
/// # Examples
///
/// ```
/// use multiproc::{ListError, ShareableList};
/// # multiproc::init();
///
/// let list = ShareableList::new(&["abc".into()])?;
/// let err = list.set(0, "more than eight bytes").unwrap_err();
/// assert!(matches!(err, ListError::ExceedsStorage { len: 21, available: 8 }));
/// assert_eq!(err.to_string(), "bytes/str item exceeds available storage");
/// assert_eq!(list.get(1).unwrap_err().to_string(), "index out of range");
/// # Ok::<(), ListError>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListError {
    /// [`ShareableList::get`] past the end (CPython's `IndexError`).
    #[error("index out of range")]
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// The list's length.
        len: usize,
    },
    /// [`ShareableList::set`] past the end (CPython's `IndexError`).
    #[error("assignment index out of range")]
    AssignmentIndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// The list's length.
        len: usize,
    },
    /// A `str` or `bytes` longer than its item's slot (CPython's `ValueError`).
    #[error("bytes/str item exceeds available storage")]
    ExceedsStorage {
        /// The item's length in bytes (UTF-8 for a `str`).
        len: usize,
        /// The slot's length.
        available: usize,
    },
    /// A `str` or `bytes` so long that its format, `<slot>s`, would not fit in 8 characters
    /// (CPython fails an `assert`): at most 9,999,991 bytes.
    #[error("bytes/str item of {len} bytes is too long for a ShareableList (at most 9999991)")]
    ItemTooLong {
        /// The item's length in bytes.
        len: usize,
    },
    /// [`ShareableList::index`] did not find the value (CPython's `ValueError`).
    #[error("{0} not in this container")]
    NotFound(String),
    /// A stored `str` is not valid UTF-8 (CPython's `UnicodeDecodeError`).
    #[error("item {index} is not valid UTF-8: {source}")]
    InvalidUtf8 {
        /// The item's position.
        index: usize,
        /// What is wrong with it.
        source: Utf8Error,
    },
    /// The segment does not hold a `ShareableList` layout (or another process broke it).
    #[error("not a valid ShareableList layout: {0}")]
    Corrupt(String),
    /// The shared memory segment itself failed.
    #[error(transparent)]
    Shm(#[from] ShmError),
}

fn corrupt(what: impl Into<String>) -> ListError {
    ListError::Corrupt(what.into())
}

// -------------------------------------------------------------------------------------------
// The layout, over any byte region (a buffer in the tests, a segment in ShareableList)

/// Bytes that a layout is read from and written to.
trait Region {
    /// The number of bytes.
    fn size(&self) -> usize;
    /// Copies `buf.len()` bytes at `offset` into `buf`.
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), ListError>;
    /// Copies `data` to `offset`.
    fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), ListError>;
}

fn out_of_bounds(offset: usize, len: usize, size: usize) -> ListError {
    corrupt(format!(
        "{len} bytes at offset {offset} are past the end of the segment ({size} bytes)"
    ))
}

impl Region for [u8] {
    fn size(&self) -> usize {
        self.len()
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), ListError> {
        let src = offset
            .checked_add(buf.len())
            .and_then(|end| self.get(offset..end))
            .ok_or_else(|| out_of_bounds(offset, buf.len(), self.len()))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), ListError> {
        let size = self.len();
        let dst = offset
            .checked_add(data.len())
            .and_then(|end| self.get_mut(offset..end))
            .ok_or_else(|| out_of_bounds(offset, data.len(), size))?;
        dst.copy_from_slice(data);
        Ok(())
    }
}

/// A segment, through its bounds-checked copies.
struct ShmRegion<'a>(&'a SharedMemory);

impl Region for ShmRegion<'_> {
    fn size(&self) -> usize {
        self.0.size()
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), ListError> {
        check_bounds(self.size(), offset, buf.len())?;
        Ok(self.0.read(offset, buf)?)
    }

    fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), ListError> {
        check_bounds(self.size(), offset, data.len())?;
        Ok(self.0.write(offset, data)?)
    }
}

fn check_bounds(size: usize, offset: usize, len: usize) -> Result<(), ListError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(out_of_bounds(offset, len, size)),
    }
}

/// A stored `struct` format, one of those CPython writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `q`
    Int,
    /// `d`
    Float,
    /// `xxxxxxx?`
    Bool,
    /// `xxxxxx?x`
    None,
    /// `<n>s`
    Text(usize),
}

impl Format {
    /// The format of a non-`str`/`bytes` item.
    fn of_value(item: &ListItem) -> Format {
        match item {
            ListItem::Int(_) => Format::Int,
            ListItem::Float(_) => Format::Float,
            ListItem::Bool(_) => Format::Bool,
            _ => Format::None,
        }
    }

    /// The stored bytes with trailing NULs stripped, as CPython reads them.
    fn trimmed(raw: &[u8; WIDTH]) -> &[u8] {
        let end = raw.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        &raw[..end]
    }

    fn parse(raw: &[u8; WIDTH]) -> Option<Format> {
        match Format::trimmed(raw) {
            b"q" => Some(Format::Int),
            b"d" => Some(Format::Float),
            b"xxxxxxx?" => Some(Format::Bool),
            b"xxxxxx?x" => Some(Format::None),
            [digits @ .., b's'] if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {
                std::str::from_utf8(digits)
                    .ok()?
                    .parse()
                    .ok()
                    .map(Format::Text)
            }
            _ => None,
        }
    }

    /// The 8 stored bytes; `None` if a `<n>s` format would not fit.
    fn encode(self) -> Option<[u8; WIDTH]> {
        let text = match self {
            Format::Int => "q".to_string(),
            Format::Float => "d".to_string(),
            Format::Bool => "xxxxxxx?".to_string(),
            Format::None => "xxxxxx?x".to_string(),
            Format::Text(n) => format!("{n}s"),
        };
        let mut raw = [0u8; WIDTH];
        raw.get_mut(..text.len())?.copy_from_slice(text.as_bytes());
        Some(raw)
    }

    /// How many bytes `struct` packs or unpacks with this format.
    fn width(self) -> usize {
        match self {
            Format::Text(n) => n,
            _ => WIDTH,
        }
    }
}

/// Where everything is: CPython's `_allocated_offsets` (relative to the data area; `n + 1`
/// entries, the last being the data area's length). Immutable once the list exists.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    offsets: Vec<usize>,
}

impl Layout {
    /// The layout CPython would give `items` (but `str` slots by UTF-8 length).
    fn for_items(items: &[ListItem]) -> Result<Layout, ListError> {
        let mut offsets = Vec::with_capacity(items.len() + 1);
        let mut offset = 0usize;
        offsets.push(offset);
        for item in items {
            let slot = match item.text() {
                Some(text) => {
                    let slot = ALIGNMENT * (text.len() / ALIGNMENT + 1);
                    if slot > MAX_SLOT {
                        return Err(ListError::ItemTooLong { len: text.len() });
                    }
                    slot
                }
                None => WIDTH,
            };
            offset = offset
                .checked_add(slot)
                .ok_or_else(|| corrupt("too large"))?;
            offsets.push(offset);
        }
        let layout = Layout { offsets };
        layout.checked_size().ok_or_else(|| corrupt("too large"))?;
        Ok(layout)
    }

    /// Reads and checks the header of a layout someone else may have written.
    fn read<R: Region + ?Sized>(region: &R) -> Result<Layout, ListError> {
        let size = region.size();
        let mut word = [0u8; 8];
        region.read_at(0, &mut word)?;
        let n = usize::try_from(i64::from_ne_bytes(word))
            .map_err(|_| corrupt(format!("negative length {}", i64::from_ne_bytes(word))))?;
        let header = n
            .checked_add(2)
            .and_then(|words| words.checked_mul(8))
            .filter(|&header| header <= size)
            .ok_or_else(|| corrupt(format!("length {n} does not fit in {size} bytes")))?;
        let mut raw = vec![0u8; header - 8];
        region.read_at(8, &mut raw)?;
        let mut offsets = Vec::with_capacity(n + 1);
        for chunk in raw.chunks_exact(8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let value = i64::from_ne_bytes(word);
            let offset =
                usize::try_from(value).map_err(|_| corrupt(format!("negative offset {value}")))?;
            if offsets.last().is_some_and(|&last| offset < last) {
                return Err(corrupt("offsets are not in order"));
            }
            offsets.push(offset);
        }
        let layout = Layout { offsets };
        match layout.checked_size() {
            Some(needed) if needed <= size => Ok(layout),
            _ => Err(corrupt(format!(
                "the layout of {n} items does not fit in {size} bytes"
            ))),
        }
    }

    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// CPython's `_offset_data_start`.
    fn data_start(&self) -> usize {
        (self.len() + 2) * 8
    }

    /// CPython's `_offset_packing_formats`.
    fn formats_start(&self) -> usize {
        self.data_start() + self.offsets[self.len()]
    }

    /// CPython's `_offset_back_transform_codes`.
    fn codes_start(&self) -> usize {
        self.formats_start() + self.len() * WIDTH
    }

    /// The bytes the layout takes (CPython's `requested_size`), if it fits in a `usize`.
    fn checked_size(&self) -> Option<usize> {
        let n = self.len();
        n.checked_add(2)?
            .checked_mul(8)?
            .checked_add(self.offsets[n])?
            .checked_add(n.checked_mul(WIDTH + 1)?)
    }

    /// The bytes the layout takes; only for a layout whose size was checked.
    fn size(&self) -> usize {
        self.codes_start() + self.len()
    }

    /// A whole list: header, items, formats and codes, as CPython's `__init__` writes them.
    fn encode(items: &[ListItem]) -> Result<(Layout, Vec<u8>), ListError> {
        let layout = Layout::for_items(items)?;
        let mut buf = vec![0u8; layout.size()];
        let header = std::iter::once(layout.len())
            .chain(layout.offsets.iter().copied())
            .flat_map(|v| (v as i64).to_ne_bytes());
        for (dst, src) in buf.iter_mut().zip(header) {
            *dst = src;
        }
        for (index, item) in items.iter().enumerate() {
            // A fresh slot has no format yet: `set` gives a str/bytes its slot's length.
            layout.set(&mut buf[..], index, item)?;
        }
        Ok((layout, buf))
    }

    fn format_at<R: Region + ?Sized>(
        &self,
        region: &R,
        index: usize,
    ) -> Result<[u8; WIDTH], ListError> {
        let mut raw = [0u8; WIDTH];
        region.read_at(self.formats_start() + index * WIDTH, &mut raw)?;
        Ok(raw)
    }

    fn parsed_format<R: Region + ?Sized>(
        &self,
        region: &R,
        index: usize,
    ) -> Result<Format, ListError> {
        let raw = self.format_at(region, index)?;
        Format::parse(&raw).ok_or_else(|| {
            corrupt(format!(
                "item {index} has the format {:?}",
                String::from_utf8_lossy(Format::trimmed(&raw))
            ))
        })
    }

    /// CPython's `__getitem__`.
    fn get<R: Region + ?Sized>(&self, region: &R, index: usize) -> Result<ListItem, ListError> {
        if index >= self.len() {
            return Err(ListError::IndexOutOfRange {
                index,
                len: self.len(),
            });
        }
        let format = self.parsed_format(region, index)?;
        let mut data = vec![0u8; format.width()];
        region.read_at(self.data_start() + self.offsets[index], &mut data)?;
        let mut code = [0u8; 1];
        region.read_at(self.codes_start() + index, &mut code)?;
        let code = i8::from_ne_bytes(code);
        let word = || {
            let mut word = [0u8; 8];
            word.copy_from_slice(&data[..8]);
            word
        };
        let strip = |data: &[u8]| {
            let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            data[..end].to_vec()
        };
        Ok(match (code, format) {
            (CODE_NONE, _) => ListItem::None,
            (CODE_VALUE, Format::Int) => ListItem::Int(i64::from_ne_bytes(word())),
            (CODE_VALUE, Format::Float) => ListItem::Float(f64::from_ne_bytes(word())),
            (CODE_VALUE, Format::Bool) => ListItem::Bool(data[7] != 0),
            // What CPython gives for these, though it never writes them.
            (CODE_VALUE, Format::None) => ListItem::Bool(data[6] != 0),
            (CODE_VALUE, Format::Text(_)) => ListItem::Bytes(data),
            (CODE_BYTES, Format::Text(_)) => ListItem::Bytes(strip(&data)),
            (CODE_STR, Format::Text(_)) => {
                let text = strip(&data);
                match String::from_utf8(text) {
                    Ok(s) => ListItem::Str(s),
                    Err(e) => {
                        return Err(ListError::InvalidUtf8 {
                            index,
                            source: e.utf8_error(),
                        });
                    }
                }
            }
            (CODE_STR | CODE_BYTES, _) => {
                return Err(corrupt(format!(
                    "item {index} is a str or bytes with the format {format:?}"
                )));
            }
            (code, _) => {
                return Err(corrupt(format!(
                    "item {index} has the back-transform code {code}"
                )));
            }
        })
    }

    /// CPython's `__setitem__`. Everything is checked before anything is written.
    fn set<R: Region + ?Sized>(
        &self,
        region: &mut R,
        index: usize,
        item: &ListItem,
    ) -> Result<(), ListError> {
        if index >= self.len() {
            return Err(ListError::AssignmentIndexOutOfRange {
                index,
                len: self.len(),
            });
        }
        let offset = self.data_start() + self.offsets[index];
        let current = self.format_at(region, index)?;
        let (format, data) = match item.text() {
            Some(text) => {
                let available = self.offsets[index + 1] - self.offsets[index];
                if text.len() > available {
                    return Err(ListError::ExceedsStorage {
                        len: text.len(),
                        available,
                    });
                }
                let format = if Format::trimmed(&current).last() == Some(&b's') {
                    // CPython keeps a str/bytes slot's format.
                    self.parsed_format(region, index)?
                } else {
                    Format::Text(available)
                };
                if text.len() > format.width() {
                    return Err(ListError::ExceedsStorage {
                        len: text.len(),
                        available: format.width(),
                    });
                }
                let mut data = vec![0u8; format.width()];
                data[..text.len()].copy_from_slice(text);
                (format, data)
            }
            None => {
                let data = match item {
                    ListItem::Int(v) => v.to_ne_bytes(),
                    ListItem::Float(v) => v.to_ne_bytes(),
                    ListItem::Bool(v) => [0, 0, 0, 0, 0, 0, 0, u8::from(*v)],
                    _ => [0; 8],
                };
                (Format::of_value(item), data.to_vec())
            }
        };
        let raw = format
            .encode()
            .ok_or_else(|| corrupt(format!("the slot of item {index} is too long")))?;
        check_bounds(region.size(), offset, data.len())?;
        region.write_at(self.formats_start() + index * WIDTH, &raw)?;
        region.write_at(self.codes_start() + index, &item.code().to_ne_bytes())?;
        region.write_at(offset, &data)
    }

    /// CPython's `format` property: every item's format, joined.
    fn format<R: Region + ?Sized>(&self, region: &R) -> Result<String, ListError> {
        let mut out = String::new();
        for index in 0..self.len() {
            let raw = self.format_at(region, index)?;
            let text = std::str::from_utf8(Format::trimmed(&raw))
                .map_err(|_| corrupt(format!("the format of item {index} is not UTF-8")))?;
            out.push_str(text);
        }
        Ok(out)
    }

    /// CPython's `count`.
    fn count<R: Region + ?Sized>(&self, region: &R, value: &ListItem) -> Result<usize, ListError> {
        let mut count = 0;
        for index in 0..self.len() {
            count += usize::from(value.py_eq(&self.get(region, index)?));
        }
        Ok(count)
    }

    /// CPython's `index`.
    fn index<R: Region + ?Sized>(&self, region: &R, value: &ListItem) -> Result<usize, ListError> {
        for index in 0..self.len() {
            if value.py_eq(&self.get(region, index)?) {
                return Ok(index);
            }
        }
        Err(ListError::NotFound(value.to_string()))
    }
}

// -------------------------------------------------------------------------------------------
// ShareableList

/// CPython's `multiprocessing.shared_memory.ShareableList`: a fixed-length list of `int`,
/// `float`, `bool`, `str`, `bytes` and `None` in a [`SharedMemory`] segment, in CPython's
/// exact layout, so that Python processes read and write it too
/// (`ShareableList(name=list.name())` in Python, [`ShareableList::attach`] in Rust).
///
/// Items cannot be added or removed. Each item keeps the slot it was created with: an
/// `int`, `float`, `bool` or `None` takes 8 bytes, a `str` or `bytes` its length rounded up
/// to the next multiple of 8 (strictly more than its length), and any item fits a slot of 8
/// bytes or more; a longer `str` or `bytes` is refused ([`ListError::ExceedsStorage`]).
/// Strings are UTF-8; trailing NUL bytes of a `str` or `bytes` are not kept (CPython strips
/// them too). Every access reads or writes the segment itself, so other processes see
/// writes at once; as in CPython, concurrent writers to one item need a lock.
///
/// Cloning gives another handle to the same list. Sent to another process (it is
/// `Serialize`/`Deserialize`, like its [`SharedMemory`]), it arrives attached to the same
/// segment. The segment lives as a [`SharedMemory`] does: made here, it is unlinked when the
/// last process of this program holding it lets go (or at `list.shm().unlink()`); attached
/// by name, it is never removed on your behalf.
///
/// # Examples
///
/// ```
/// use multiproc::{ListError, ListItem, ShareableList};
/// # multiproc::init();
///
/// let list = ShareableList::new(&[1.into(), 2.5.into(), "three".into(), ListItem::None])?;
/// assert_eq!(list.len(), 4);
/// list.set(3, b"four")?; // any type, in any slot it fits
/// let other = ShareableList::attach(list.name())?; // e.g. in another process
/// assert_eq!(
///     other.to_vec()?,
///     [1.into(), 2.5.into(), "three".into(), ListItem::from(b"four")]
/// );
/// assert_eq!(other.format()?, "qd8s8s");
/// # Ok::<(), ListError>(())
/// ```
#[derive(Clone)]
pub struct ShareableList {
    shm: SharedMemory,
    layout: Layout,
}

impl ShareableList {
    /// Makes a list of `items` in a new segment with a generated name.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{ListError, ShareableList};
    /// # multiproc::init();
    ///
    /// let list = ShareableList::new(&[7.into(), "seven".into()])?;
    /// assert_eq!(list.get(1)?.as_str(), Some("seven"));
    /// # Ok::<(), ListError>(())
    /// ```
    pub fn new(items: &[ListItem]) -> Result<ShareableList, ListError> {
        let (layout, bytes) = Layout::encode(items)?;
        ShareableList::fill(SharedMemory::create(bytes.len())?, layout, &bytes)
    }

    /// Makes a list of `items` in a new segment called `name` (CPython's
    /// `ShareableList(items, name=name)`).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{ListError, ShareableList};
    /// # multiproc::init();
    ///
    /// let name = format!("sl_doc_{}", std::process::id());
    /// let list = ShareableList::new_named(&name, &[true.into()])?;
    /// assert_eq!(list.name(), name);
    /// # Ok::<(), ListError>(())
    /// ```
    pub fn new_named(name: &str, items: &[ListItem]) -> Result<ShareableList, ListError> {
        let (layout, bytes) = Layout::encode(items)?;
        ShareableList::fill(
            SharedMemory::create_named(name, bytes.len())?,
            layout,
            &bytes,
        )
    }

    fn fill(shm: SharedMemory, layout: Layout, bytes: &[u8]) -> Result<ShareableList, ListError> {
        shm.write(0, bytes)?;
        Ok(ShareableList { shm, layout })
    }

    /// Attaches to the list in the segment called `name`, made by Rust or by Python
    /// (CPython's `ShareableList(name=name)`). A segment that does not hold a list's layout
    /// gives [`ListError::Corrupt`].
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{ListError, ShareableList};
    /// # multiproc::init();
    ///
    /// let list = ShareableList::new(&[1.into()])?;
    /// let same = ShareableList::attach(list.name())?;
    /// same.set(0, 2)?;
    /// assert_eq!(list.get(0)?.as_int(), Some(2));
    /// # Ok::<(), ListError>(())
    /// ```
    pub fn attach(name: &str) -> Result<ShareableList, ListError> {
        ShareableList::from_shm(SharedMemory::attach(name)?)
    }

    /// The list in a segment already open.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{ListError, SharedMemory, ShareableList};
    /// # multiproc::init();
    ///
    /// let list = ShareableList::new(&["x".into()])?;
    /// let same = ShareableList::from_shm(SharedMemory::attach(list.name())?)?;
    /// assert_eq!(same.len(), 1);
    /// let garbage = SharedMemory::create(8)?;
    /// garbage.write(0, &(-1i64).to_ne_bytes())?;
    /// assert!(matches!(ShareableList::from_shm(garbage), Err(ListError::Corrupt(_))));
    /// # Ok::<(), ListError>(())
    /// ```
    pub fn from_shm(shm: SharedMemory) -> Result<ShareableList, ListError> {
        let layout = Layout::read(&ShmRegion(&shm))?;
        Ok(ShareableList { shm, layout })
    }

    /// The segment (to unlink it, or to read its raw bytes).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{ListError, ShareableList};
    /// # multiproc::init();
    ///
    /// let list = ShareableList::new(&[])?;
    /// assert_eq!(list.shm().size(), 16); // the length and one offset
    /// # Ok::<(), ListError>(())
    /// ```
    pub fn shm(&self) -> &SharedMemory {
        &self.shm
    }

    /// The segment, giving up the list.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{ListError, ShareableList};
    /// # multiproc::init();
    ///
    /// let shm = ShareableList::new(&[1.into()])?.into_shm();
    /// assert_eq!(shm.size(), 8 * 3 + 8 + 8 + 1);
    /// # Ok::<(), ListError>(())
    /// ```
    pub fn into_shm(self) -> SharedMemory {
        self.shm
    }

    /// The segment's name (without a leading `/`, like CPython's `shm.name`).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{ListError, ShareableList};
    /// # multiproc::init();
    ///
    /// let list = ShareableList::new(&[])?;
    /// assert_eq!(list.name(), list.shm().name());
    /// # Ok::<(), ListError>(())
    /// ```
    pub fn name(&self) -> &str {
        self.shm.name()
    }

    /// The number of items (fixed when the list is made).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{ListError, ShareableList};
    /// # multiproc::init();
    ///
    /// let list = ShareableList::new(&[1.into(), 2.into()])?;
    /// assert_eq!(list.len(), 2);
    /// # Ok::<(), ListError>(())
    /// ```
    pub fn len(&self) -> usize {
        self.layout.len()
    }

    /// Whether the list has no items.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{ListError, ShareableList};
    /// # multiproc::init();
    ///
    /// let list = ShareableList::new(&[])?;
    /// assert!(list.is_empty());
    /// # Ok::<(), ListError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Item `index` (CPython's `list[index]`).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{ListError, ListItem, ShareableList};
    /// # multiproc::init();
    ///
    /// let list = ShareableList::new(&[ListItem::None, 1.5.into()])?;
    /// assert_eq!(list.get(1)?, ListItem::Float(1.5));
    /// assert!(matches!(list.get(2), Err(ListError::IndexOutOfRange { index: 2, len: 2 })));
    /// # Ok::<(), ListError>(())
    /// ```
    pub fn get(&self, index: usize) -> Result<ListItem, ListError> {
        self.layout.get(&ShmRegion(&self.shm), index)
    }

    /// Writes item `index` (CPython's `list[index] = item`), of any type: the item's format
    /// changes, its slot does not. A `str` or `bytes` longer than the slot is refused.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{ListError, ListItem, ShareableList};
    /// # multiproc::init();
    ///
    /// let list = ShareableList::new(&[0.into(), "a longer text".into()])?;
    /// list.set(0, "eight ch")?; // an 8-byte slot: up to 8 bytes
    /// list.set(1, ListItem::None)?;
    /// assert_eq!(list.to_vec()?, ["eight ch".into(), ListItem::None]);
    /// assert!(matches!(list.set(0, "nine char"), Err(ListError::ExceedsStorage { .. })));
    /// # Ok::<(), ListError>(())
    /// ```
    pub fn set(&self, index: usize, item: impl Into<ListItem>) -> Result<(), ListError> {
        self.layout
            .set(&mut ShmRegion(&self.shm), index, &item.into())
    }

    /// Every item, in order.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{ListError, ListItem, ShareableList};
    /// # multiproc::init();
    ///
    /// let items: Vec<ListItem> = vec![1.into(), false.into(), b"\x01".into()];
    /// let list = ShareableList::new(&items)?;
    /// assert_eq!(list.to_vec()?, items);
    /// # Ok::<(), ListError>(())
    /// ```
    pub fn to_vec(&self) -> Result<Vec<ListItem>, ListError> {
        (0..self.len()).map(|index| self.get(index)).collect()
    }

    /// Each item in turn, read when the iterator gets to it.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{ListError, ShareableList};
    /// # multiproc::init();
    ///
    /// let list = ShareableList::new(&[1.into(), 2.into(), 3.into()])?;
    /// let mut sum = 0;
    /// for item in list.iter() {
    ///     sum += item?.as_int().unwrap_or(0);
    /// }
    /// assert_eq!(sum, 6);
    /// # Ok::<(), ListError>(())
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = Result<ListItem, ListError>> + '_ {
        (0..self.len()).map(|index| self.get(index))
    }

    /// How many items equal `value` by Python's `==` ([`ListItem::py_eq`]), as CPython's
    /// `count`.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{ListError, ShareableList};
    /// # multiproc::init();
    ///
    /// let list = ShareableList::new(&[1.into(), 1.0.into(), true.into(), "1".into()])?;
    /// assert_eq!(list.count(&1.into())?, 3);
    /// assert_eq!(list.count(&"1".into())?, 1);
    /// # Ok::<(), ListError>(())
    /// ```
    pub fn count(&self, value: &ListItem) -> Result<usize, ListError> {
        self.layout.count(&ShmRegion(&self.shm), value)
    }

    /// The position of the first item equal to `value` by Python's `==`
    /// ([`ListItem::py_eq`]), or [`ListError::NotFound`] with CPython's message.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{ListError, ShareableList};
    /// # multiproc::init();
    ///
    /// let list = ShareableList::new(&["a".into(), b"b".into()])?;
    /// assert_eq!(list.index(&b"b".into())?, 1);
    /// let missing = list.index(&"b".into()).unwrap_err();
    /// assert_eq!(missing.to_string(), "'b' not in this container");
    /// # Ok::<(), ListError>(())
    /// ```
    pub fn index(&self, value: &ListItem) -> Result<usize, ListError> {
        self.layout.index(&ShmRegion(&self.shm), value)
    }

    /// Every item's `struct` format, joined (CPython's `format` property).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{ListError, ListItem, ShareableList};
    /// # multiproc::init();
    ///
    /// let list = ShareableList::new(&[1.into(), true.into(), "hi".into(), ListItem::None])?;
    /// assert_eq!(list.format()?, "qxxxxxxx?8sxxxxxx?x");
    /// # Ok::<(), ListError>(())
    /// ```
    pub fn format(&self) -> Result<String, ListError> {
        self.layout.format(&ShmRegion(&self.shm))
    }
}

/// Shows the name and length (not the items, which would need reading the segment).
///
/// # Examples
///
/// ```
/// use multiproc::{ListError, ShareableList};
/// # multiproc::init();
///
/// let list = ShareableList::new(&[1.into()])?;
/// assert!(format!("{list:?}").contains(list.name()));
/// # Ok::<(), ListError>(())
/// ```
impl fmt::Debug for ShareableList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShareableList")
            .field("name", &self.name())
            .field("len", &self.len())
            .finish()
    }
}

/// As its [`SharedMemory`]: the receiver attaches to the same segment.
///
/// # Examples
///
/// ```
/// use multiproc::{ListError, ShareableList};
/// # multiproc::init();
///
/// fn is_serialize<T: serde::Serialize>(_: &T) {}
/// let list = ShareableList::new(&[1.into()])?;
/// is_serialize(&list);
/// # Ok::<(), ListError>(())
/// ```
impl Serialize for ShareableList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.shm.serialize(serializer)
    }
}

/// Attaches to the segment and reads its layout (an error if it holds no list).
///
/// # Examples
///
/// ```
/// use multiproc::ShareableList;
/// # multiproc::init();
///
/// fn is_deserialize<T: serde::de::DeserializeOwned>() {}
/// is_deserialize::<ShareableList>();
/// ```
impl<'de> Deserialize<'de> for ShareableList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let shm = SharedMemory::deserialize(deserializer)?;
        ShareableList::from_shm(shm).map_err(crate::codec::de_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes written by CPython 3.11.7 (3.12.1 and 3.13.0 write the same), x86-64, with
    /// `bytes(ShareableList(items).shm.buf[:size])`.
    const PY_MIXED: &str = "0800000000000000000000000000000008000000000000001000000000000000\
        1800000000000000200000000000000028000000000000003000000000000000\
        3800000000000000400000000000000001000000000000000000000000000440\
        0000000000000001686900000000000061620063000000000000000000000000\
        f9ffffffffffffff68c3a96c6c6f000071000000000000006400000000000000\
        787878787878783f387300000000000038730000000000007878787878783f78\
        710000000000000038730000000000000000000102030001";
    /// `[]`
    const PY_EMPTY: &str = "00000000000000000000000000000000";
    /// `['', b'', '12345678', False]`
    const PY_EDGES: &str = "0400000000000000000000000000000008000000000000001000000000000000\
        2000000000000000280000000000000000000000000000000000000000000000\
        3132333435363738000000000000000000000000000000003873000000000000\
        38730000000000003136730000000000787878787878783f01020100";
    /// `[42, 'longer string..', 1.0, 's']`, then `l[0] = 'abc'; l[1] = 3; l[2] = None;
    /// l[3] = b'xy'`.
    const PY_CHANGED: &str = "0400000000000000000000000000000008000000000000001800000000000000\
        2000000000000000280000000000000061626300000000000300000000000000\
        7472696e672e2e00000000000000000078790000000000003873000000000000\
        71000000000000007878787878783f78387300000000000001000302";
    /// `['ééééé']`: CPython sizes the slot by characters (8) and truncates the 10 bytes.
    const PY_TRUNCATED: &str = "010000000000000000000000000000000800000000000000c3a9c3a9c3a9c3a9\
        387300000000000001";

    fn hex(s: &str) -> Vec<u8> {
        let s: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        s.chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn mixed() -> Vec<ListItem> {
        vec![
            1.into(),
            2.5.into(),
            true.into(),
            "hi".into(),
            b"ab\x00c".into(),
            ListItem::None,
            (-7).into(),
            "h\u{e9}llo".into(),
        ]
    }

    fn read_all(buf: &[u8]) -> Result<Vec<ListItem>, ListError> {
        let layout = Layout::read(buf)?;
        (0..layout.len()).map(|i| layout.get(buf, i)).collect()
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn rust_writes_what_cpython_writes() {
        assert_eq!(Layout::encode(&mixed()).unwrap().1, hex(PY_MIXED));
        assert_eq!(Layout::encode(&[]).unwrap().1, hex(PY_EMPTY));
        let edges = [
            ListItem::from(""),
            b"".into(),
            "12345678".into(),
            false.into(),
        ];
        assert_eq!(Layout::encode(&edges).unwrap().1, hex(PY_EDGES));
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn set_changes_formats_as_cpython_does() {
        let items = [42.into(), "longer string..".into(), 1.0.into(), "s".into()];
        let (layout, mut buf) = Layout::encode(&items).unwrap();
        layout.set(&mut buf[..], 0, &"abc".into()).unwrap();
        layout.set(&mut buf[..], 1, &3.into()).unwrap();
        layout.set(&mut buf[..], 2, &ListItem::None).unwrap();
        layout.set(&mut buf[..], 3, &b"xy".into()).unwrap();
        assert_eq!(buf, hex(PY_CHANGED));
        assert_eq!(layout.format(&buf[..]).unwrap(), "8sqxxxxxx?x8s");
        let read = read_all(&buf).unwrap();
        assert_eq!(read, ["abc".into(), 3.into(), ListItem::None, b"xy".into()]);
        // An 8-byte item in a str slot keeps its slot: a str fits it again.
        layout
            .set(&mut buf[..], 1, &"sixteen bytes!!".into())
            .unwrap();
        assert_eq!(layout.get(&buf[..], 1).unwrap(), "sixteen bytes!!".into());
        assert_eq!(layout.format(&buf[..]).unwrap(), "8s16sxxxxxx?x8s");
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn rust_reads_what_cpython_writes() {
        let mut want = mixed();
        want[4] = b"ab\x00c".into();
        assert_eq!(read_all(&hex(PY_MIXED)).unwrap(), want);
        assert_eq!(read_all(&hex(PY_EMPTY)).unwrap(), []);
        assert_eq!(
            read_all(&hex(PY_EDGES)).unwrap(),
            ["".into(), b"".into(), "12345678".into(), false.into()]
        );
        assert_eq!(
            read_all(&hex(PY_TRUNCATED)).unwrap(),
            ["\u{e9}\u{e9}\u{e9}\u{e9}".into()]
        );
        let buf = hex(PY_MIXED);
        let layout = Layout::read(&buf[..]).unwrap();
        assert_eq!(
            layout.format(&buf[..]).unwrap(),
            "qdxxxxxxx?8s8sxxxxxx?xq8s"
        );
        assert_eq!(layout.size(), buf.len());
    }

    #[test]
    fn str_slots_hold_the_whole_utf8() {
        let item = ListItem::from("\u{e9}".repeat(5));
        let (layout, buf) = Layout::encode(std::slice::from_ref(&item)).unwrap();
        assert_eq!(layout.offsets, [0, 16]);
        assert_eq!(layout.get(&buf[..], 0).unwrap(), item);
        assert_eq!(layout.format(&buf[..]).unwrap(), "16s");
    }

    #[test]
    fn slots_are_rounded_up_strictly() {
        let items: Vec<ListItem> = [0, 1, 7, 8, 9, 15, 16]
            .iter()
            .map(|&n| ListItem::Bytes(vec![b'x'; n]))
            .collect();
        let layout = Layout::for_items(&items).unwrap();
        assert_eq!(layout.offsets, [0, 8, 16, 24, 40, 56, 72, 96]);
    }

    #[test]
    fn round_trip_and_trailing_nuls() {
        let items = [
            i64::MIN.into(),
            i64::MAX.into(),
            (-0.0).into(),
            f64::INFINITY.into(),
            "tab\tnul\0inside".into(),
            "trailing\0\0".into(),
            b"\0\0".into(),
            ListItem::None,
        ];
        let (layout, buf) = Layout::encode(&items).unwrap();
        let read = read_all(&buf).unwrap();
        assert_eq!(read[..5], items[..5]);
        assert!(read[2].as_float().unwrap().is_sign_negative());
        assert_eq!(read[5], "trailing".into());
        assert_eq!(read[6], b"".into());
        assert_eq!(read[7], ListItem::None);
        assert_eq!(layout.size(), buf.len());
        let (_, buf) = Layout::encode(&[f64::NAN.into()]).unwrap();
        assert!(read_all(&buf).unwrap()[0].as_float().unwrap().is_nan());
    }

    #[test]
    fn errors_have_cpython_messages() {
        let (layout, mut buf) = Layout::encode(&[1.into(), "1234567".into()]).unwrap();
        let err = layout
            .set(&mut buf[..], 0, &"123456789".into())
            .unwrap_err();
        assert!(matches!(
            err,
            ListError::ExceedsStorage {
                len: 9,
                available: 8
            }
        ));
        assert_eq!(err.to_string(), "bytes/str item exceeds available storage");
        // A slot of 8 takes 8 bytes (CPython allows len == slot).
        layout.set(&mut buf[..], 1, &b"12345678".into()).unwrap();
        assert_eq!(layout.get(&buf[..], 1).unwrap(), b"12345678".into());
        let err = layout.get(&buf[..], 2).unwrap_err();
        assert_eq!(err.to_string(), "index out of range");
        let err = layout.set(&mut buf[..], 2, &1.into()).unwrap_err();
        assert_eq!(err.to_string(), "assignment index out of range");
        // A failed set writes nothing.
        let before = buf.clone();
        assert!(layout.set(&mut buf[..], 0, &"far too long".into()).is_err());
        assert_eq!(buf, before);
    }

    #[test]
    fn longest_item() {
        let longest = ListItem::Bytes(vec![1; MAX_SLOT - 1]);
        let (layout, buf) = Layout::encode(std::slice::from_ref(&longest)).unwrap();
        assert_eq!(layout.format(&buf[..]).unwrap(), "9999992s");
        assert_eq!(layout.get(&buf[..], 0).unwrap(), longest);
        let err = Layout::encode(&[ListItem::Bytes(vec![1; MAX_SLOT])]).unwrap_err();
        assert!(matches!(err, ListError::ItemTooLong { len: MAX_SLOT }));
    }

    #[test]
    fn count_and_index_use_python_equality() {
        let items = [
            1.into(),
            true.into(),
            1.0.into(),
            "1".into(),
            b"1".into(),
            ListItem::None,
            f64::NAN.into(),
        ];
        let (layout, buf) = Layout::encode(&items).unwrap();
        let count = |v: ListItem| layout.count(&buf[..], &v).unwrap();
        assert_eq!(count(1.into()), 3);
        assert_eq!(count(true.into()), 3);
        assert_eq!(count(ListItem::None), 1);
        assert_eq!(count(f64::NAN.into()), 0);
        assert_eq!(count(0.into()), 0);
        assert_eq!(layout.index(&buf[..], &1.0.into()).unwrap(), 0);
        assert_eq!(layout.index(&buf[..], &b"1".into()).unwrap(), 4);
        let err = layout.index(&buf[..], &"it's".into()).unwrap_err();
        assert_eq!(err.to_string(), "\"it's\" not in this container");
        assert!(float_equals_int(-9_223_372_036_854_775_808.0, i64::MIN));
        assert!(!float_equals_int(9_223_372_036_854_775_808.0, i64::MAX));
        assert!(!float_equals_int(
            9_007_199_254_740_992.0,
            9_007_199_254_740_993
        ));
    }

    #[test]
    fn repr_is_python_repr() {
        let cases: [(ListItem, &str); 16] = [
            (1.into(), "1"),
            ((-0.0).into(), "-0.0"),
            (2.5.into(), "2.5"),
            (1e16.into(), "1e+16"),
            (1.5e-5.into(), "1.5e-05"),
            (1e-4.into(), "0.0001"),
            (123456789012345.6.into(), "123456789012345.6"),
            (f64::NEG_INFINITY.into(), "-inf"),
            (f64::NAN.into(), "nan"),
            (false.into(), "False"),
            (ListItem::None, "None"),
            ("a'b\"c\\\n\u{1}\u{e9}".into(), r#"'a\'b"c\\\n\x01é'"#),
            ("'".into(), r#""'""#),
            (b"'\x00\xff\t".into(), r#"b"'\x00\xff\t""#),
            (b"'\"".into(), r#"b'\'"'"#),
            (ListItem::Bytes(vec![]), "b''"),
        ];
        for (item, want) in cases {
            assert_eq!(item.to_string(), want, "{item:?}");
        }
    }

    /// Damaged layouts give errors, never panics.
    #[test]
    fn bad_bytes_are_errors() {
        let good = hex(PY_MIXED);
        for end in 0..good.len() {
            let buf = &good[..end];
            if let Ok(layout) = Layout::read(buf) {
                panic!("a truncated layout of {end} bytes was accepted: {layout:?}");
            }
        }
        let layout = Layout::read(&good[..]).unwrap();
        for at in 0..good.len() {
            for value in [0x00, 0x01, 0x04, 0x73, 0x7f, 0x80, 0xff] {
                let mut buf = good.clone();
                buf[at] = value;
                let _ = read_all(&buf);
                if let Ok(layout) = Layout::read(&buf[..]) {
                    let _ = layout.format(&buf[..]);
                    let mut copy = buf.clone();
                    for i in 0..layout.len() {
                        let _ = layout.set(&mut copy[..], i, &"x".into());
                        let _ = layout.set(&mut copy[..], i, &1.into());
                    }
                }
                // The cached layout of the good buffer over damaged bytes.
                for i in 0..layout.len() {
                    let _ = layout.get(&buf[..], i);
                }
            }
        }
        let mut buf = good.clone();
        buf[..8].copy_from_slice(&(-1i64).to_ne_bytes());
        assert!(matches!(Layout::read(&buf[..]), Err(ListError::Corrupt(_))));
        let mut buf = good.clone();
        buf[..8].copy_from_slice(&i64::MAX.to_ne_bytes());
        assert!(matches!(Layout::read(&buf[..]), Err(ListError::Corrupt(_))));
        let mut buf = good.clone();
        buf[16..24].copy_from_slice(&i64::MAX.to_ne_bytes());
        assert!(matches!(Layout::read(&buf[..]), Err(ListError::Corrupt(_))));
        // An unknown back-transform code, an unknown format, a str that is not UTF-8.
        let codes = layout.codes_start();
        let mut buf = good.clone();
        buf[codes] = 9;
        assert!(matches!(
            layout.get(&buf[..], 0),
            Err(ListError::Corrupt(_))
        ));
        let mut buf = good.clone();
        buf[layout.formats_start()] = b'Q';
        assert!(matches!(
            layout.get(&buf[..], 0),
            Err(ListError::Corrupt(_))
        ));
        let mut buf = good.clone();
        buf[layout.data_start() + layout.offsets[3]] = 0xff;
        assert!(matches!(
            layout.get(&buf[..], 3),
            Err(ListError::InvalidUtf8 { index: 3, .. })
        ));
        // A str whose format claims more than the segment holds.
        let mut buf = good.clone();
        let at = layout.formats_start() + 7 * WIDTH;
        buf[at..at + WIDTH].copy_from_slice(b"9999992s");
        assert!(matches!(
            layout.get(&buf[..], 7),
            Err(ListError::Corrupt(_))
        ));
    }
}
