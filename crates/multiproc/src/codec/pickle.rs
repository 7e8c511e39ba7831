//! The pickle codec, for CPython peers.

use serde::{Serialize, de::DeserializeOwned};

use super::{Codec, CodecError};

/// Python's pickle format, so that `send` / `recv` interoperate with CPython's
/// `Connection.send()` / `recv()` for plain data.
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pickle;

impl Codec for Pickle {
    const CARRIES_DESCRIPTORS: bool = false;

    fn encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        serde_pickle::to_writer(out, &value, serde_pickle::SerOptions::new())
            .map_err(|e| CodecError::new("cannot encode value as a pickle", e))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        serde_pickle::from_slice(bytes, serde_pickle::DeOptions::new())
            .map_err(|e| CodecError::new("cannot decode pickle", e))
    }
}
