//! Codecs: how a value becomes bytes on the way to another process.
//!
//! - [`Postcard`], the default: every argument, result and control message crosses a
//!   process boundary in this format. It is [`postcard`]: compact, stable (its wire format is
//!   frozen at 1.0), well kept, and fast for the small messages that dominate here. It is the
//!   one codec that carries descriptors, so a [`Connection`](crate::Connection), a
//!   [`Lock`](crate::Lock) or shared memory can travel inside a value.
//! - [`Pickle`], for talking to CPython: `conn.send(obj)` in Python and `recv` in Rust (and
//!   the other way round) for plain data.
//!
//! A [`Connection`](crate::Connection) takes its codec as a type parameter.

pub(crate) mod fds;
mod pickle;

pub use fds::Descriptor;
pub use pickle::{Pickle, PyValue};

use serde::{Serialize, de, de::DeserializeOwned, ser};
use std::cell::RefCell;
use std::fmt::Display;

/// A way to turn values into message bytes and back. Implemented by [`Postcard`] (the
/// default) and [`Pickle`].
///
/// # Examples
///
/// ```
/// use multiproc::codec::{Codec, Postcard};
///
/// let mut bytes = Vec::new();
/// Postcard::encode(&(1u8, "two"), &mut bytes).unwrap();
/// let back: (u8, String) = Postcard::decode(&bytes).unwrap();
/// assert_eq!(back, (1, "two".to_string()));
/// ```
pub trait Codec: Send + Sync + 'static {
    /// True if values may carry descriptors (connections and other shared objects) in this
    /// format; a codec without it refuses such values with an error.
    const CARRIES_DESCRIPTORS: bool;

    /// Appends the encoding of `value` to `out`.
    ///
    /// # Errors
    ///
    /// The value's `Serialize` failed or the format cannot express it.
    fn encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError>;

    /// Decodes one whole value; trailing bytes are an error.
    ///
    /// # Errors
    ///
    /// The bytes are not a valid encoding of a `T`.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError>;
}

/// The default codec, [`postcard`]. Carries descriptors.
///
/// # Examples
///
/// ```
/// use multiproc::codec::{Codec, Postcard};
///
/// let mut bytes = Vec::new();
/// Postcard::encode(&vec![1u32, 2, 3], &mut bytes).unwrap();
/// assert_eq!(Postcard::decode::<Vec<u32>>(&bytes).unwrap(), [1, 2, 3]);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Postcard;

impl Codec for Postcard {
    const CARRIES_DESCRIPTORS: bool = true;

    fn encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let taken = std::mem::take(out);
        *out = own_custom(ENCODE, || postcard::to_extend(value, taken))?;
        Ok(())
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        decode(bytes)
    }
}

/// Why a value could not be encoded or decoded.
///
/// # Examples
///
/// An argument whose `Serialize` fails is refused at `start`, before any child exists:
///
/// ```
/// use multiproc::{Process, ProcessError, StartMethod};
/// use serde::{Deserialize, Serialize, Serializer};
///
/// #[derive(Deserialize)]
/// struct Refuses;
///
/// impl Serialize for Refuses {
///     fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
///         Err(serde::ser::Error::custom("not today"))
///     }
/// }
///
/// fn take(_: Refuses) {}
///
/// # multiproc::set_start_method(StartMethod::Fork).unwrap();
/// let mut p = Process::new(take, Refuses);
/// match p.start() {
///     // (postcard reports a custom serde error of the caller's own without its text)
///     Err(ProcessError::Codec(e)) => assert!(e.to_string().starts_with("cannot encode value")),
///     other => panic!("{other:?}"),
/// }
/// assert!(multiproc::active_children().is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{context}: {message}")]
pub struct CodecError {
    context: &'static str,
    message: String,
}

impl CodecError {
    pub(crate) fn new(context: &'static str, e: impl std::fmt::Display) -> Self {
        Self {
            context,
            message: e.to_string(),
        }
    }
}

const ENCODE: &str = "cannot encode value";
const DECODE: &str = "cannot decode value";

/// Encodes a value.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    own_custom(ENCODE, || postcard::to_stdvec(value))
}

/// Encodes a small value into `buf` without allocating; `None` if it does not fit (or cannot
/// be encoded: [`encode`] then says why).
pub(crate) fn encode_small<'b, T: Serialize + ?Sized>(
    value: &T,
    buf: &'b mut [u8],
) -> Option<&'b [u8]> {
    own_custom(ENCODE, || postcard::to_slice(value, buf))
        .ok()
        .map(|b| &*b)
}

/// Decodes a value; trailing bytes are an error.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, rest) = take_from_bytes(bytes)?;
    if !rest.is_empty() {
        return Err(CodecError::new(DECODE, "trailing bytes"));
    }
    Ok(value)
}

/// Decodes a value from the front of `bytes`; returns it and the bytes after it.
pub(crate) fn take_from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, &[u8]), CodecError> {
    own_custom(DECODE, || postcard::take_from_bytes(bytes))
}

// Postcard drops the text of a custom serde error (`Error::custom(msg)` becomes a bare
// "Serde Deserialization Error"). An error made through `ser_error` / `de_error` (the ones
// multiproc's own types raise: a shared object that is gone, a descriptor missing, a build
// that differs) leaves its text here too, and the codec's error carries it.
thread_local! {
    static CUSTOM: RefCell<Option<String>> = const { RefCell::new(None) };
}

// (`try_with`: a value may be encoded or decoded from an exit handler, after this thread's
// locals are gone; the text is then simply not kept.)
fn take_custom() -> Option<String> {
    CUSTOM.try_with(|c| c.borrow_mut().take()).ok().flatten()
}

/// Runs one postcard operation with a text slot of its own: an operation nested in another
/// (a segment dropped while a failed decoding unwinds encodes a message to the tracker)
/// neither clears nor takes the outer one's text.
fn own_custom<T>(
    context: &'static str,
    op: impl FnOnce() -> Result<T, postcard::Error>,
) -> Result<T, CodecError> {
    let outer = take_custom();
    let r = op().map_err(|e| postcard_error(context, e));
    let _ = CUSTOM.try_with(|c| *c.borrow_mut() = outer);
    r
}

/// Registers this thread's kept error text (see
/// [`bootstrap::register_child_thread_locals`](crate::bootstrap::register_child_thread_locals)).
pub(crate) fn register_thread_locals() {
    let _ = CUSTOM.try_with(|_| ());
    fds::register_thread_locals();
}

fn keep_custom(text: &str) {
    let _ = CUSTOM.try_with(|c| *c.borrow_mut() = Some(text.to_owned()));
}

/// A postcard error, with the text of the custom error behind it if one was kept.
fn postcard_error(context: &'static str, e: postcard::Error) -> CodecError {
    let kept = take_custom();
    match (e, kept) {
        (postcard::Error::SerdeSerCustom | postcard::Error::SerdeDeCustom, Some(text)) => {
            CodecError::new(context, text)
        }
        (e, _) => CodecError::new(context, e),
    }
}

/// A serde encoding error whose text survives any codec (see [`postcard_error`]).
pub(crate) fn ser_error<E: ser::Error>(msg: impl Display) -> E {
    let text = msg.to_string();
    keep_custom(&text);
    E::custom(text)
}

/// A serde decoding error whose text survives any codec (see [`postcard_error`]).
pub(crate) fn de_error<E: de::Error>(msg: impl Display) -> E {
    let text = msg.to_string();
    keep_custom(&text);
    E::custom(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Refuses both ways the way multiproc's own types do.
    #[derive(Debug)]
    struct Refuses;

    impl Serialize for Refuses {
        fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(ser_error("no encoding today"))
        }
    }

    impl<'de> Deserialize<'de> for Refuses {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            u8::deserialize(d)?;
            Err(de_error("shared memory \"x\" is gone"))
        }
    }

    /// Encodes something when dropped, as a shared object does (it tells the tracker).
    #[derive(Debug)]
    struct EncodesOnDrop;

    impl<'de> Deserialize<'de> for EncodesOnDrop {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            u8::deserialize(d)?;
            Ok(Self)
        }
    }

    impl Drop for EncodesOnDrop {
        fn drop(&mut self) {
            assert!(encode(&7u8).is_ok());
            assert!(decode::<u8>(&[7, 0]).is_err());
        }
    }

    #[test]
    fn a_value_dropped_on_the_error_path_keeps_the_errors_text() {
        let e = decode::<(EncodesOnDrop, Refuses)>(&[1, 2]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot decode value: shared memory \"x\" is gone"
        );
    }

    #[test]
    fn multiprocs_own_custom_errors_keep_their_text() {
        let e = encode(&(1u8, Refuses)).unwrap_err();
        assert_eq!(e.to_string(), "cannot encode value: no encoding today");
        let mut out = Vec::new();
        let e = Postcard::encode(&[Refuses], &mut out).unwrap_err();
        assert_eq!(e.to_string(), "cannot encode value: no encoding today");
        let e = decode::<(u8, Refuses)>(&[1, 2]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot decode value: shared memory \"x\" is gone"
        );
        // A later failure of another kind does not inherit the text.
        let e = decode::<(u8, u8)>(&[1]).unwrap_err();
        assert!(!e.to_string().contains("gone"), "{e}");
        let e = decode::<u8>(&[1, 2]).unwrap_err();
        assert_eq!(e.to_string(), "cannot decode value: trailing bytes");
    }
}
