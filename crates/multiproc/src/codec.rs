//! The default serde codec: every argument, result and control message crosses a process
//! boundary in this format.
//!
//! It is [`postcard`]: compact, stable (its wire format is frozen at 1.0), well kept, and fast
//! for the small messages that dominate here. A pickle codec for talking to CPython peers
//! comes with connections.

use serde::{Serialize, de::DeserializeOwned};

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
