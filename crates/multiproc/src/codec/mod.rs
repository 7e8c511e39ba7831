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

use serde::{Serialize, de::DeserializeOwned};

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
        *out = postcard::to_extend(value, taken)
            .map_err(|e| CodecError::new("cannot encode value", e))?;
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
///     // (postcard reports custom serde errors without their text)
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

/// Encodes a value.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_stdvec(value).map_err(|e| CodecError::new("cannot encode value", e))
}

/// Decodes a value; trailing bytes are an error.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| CodecError::new("cannot decode value", e))?;
    if !rest.is_empty() {
        return Err(CodecError::new("cannot decode value", "trailing bytes"));
    }
    Ok(value)
}
