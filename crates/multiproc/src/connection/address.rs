//! Where a [`Listener`](super::Listener) listens and a [`Client`](super::Client) connects.

use std::ffi::OsStr;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::str::FromStr;

/// A listener's address, in one of CPython's families: a Unix socket path (`AF_UNIX`), a
/// Linux abstract name (CPython: a path starting with NUL), or TCP over IPv4 or IPv6
/// (`AF_INET`, `(host, port)`).
///
/// Parsing a string (`"host:port"`, `"[::1]:port"`, `"/path/to/socket"`, `"@name"` or
/// `"\0name"`) picks the family as CPython's `address_type` does, with `host:port` in place
/// of a tuple.
///
/// # Examples
///
/// ```
/// use multiproc::connection::Address;
///
/// assert!(matches!("127.0.0.1:6000".parse::<Address>()?, Address::Tcp(_)));
/// assert!(matches!("[::1]:6000".parse::<Address>()?, Address::Tcp(_)));
/// assert!(matches!("localhost:6000".parse::<Address>()?, Address::Tcp(_)));
/// assert!(matches!("/tmp/app.sock".parse::<Address>()?, Address::Unix(_)));
/// assert!(matches!("@app".parse::<Address>()?, Address::Abstract(_)));
/// assert_eq!("@app".parse::<Address>()?.to_string(), "@app");
/// // An address can be a Process argument or a message.
/// let bytes = postcard::to_stdvec(&"127.0.0.1:80".parse::<Address>()?).unwrap();
/// assert!(!bytes.is_empty());
/// # Ok::<(), multiproc::connection::AddressError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Address {
    /// A socket file in the file system.
    Unix(PathBuf),
    /// A name in Linux's abstract socket namespace (no file; gone with its last socket).
    Abstract(Vec<u8>),
    /// A TCP endpoint.
    Tcp(SocketAddr),
    /// The address of an unnamed Unix socket (a client's, as a listener sees it).
    Unnamed,
}

/// An address string that names no usable address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address {input:?}: {reason}")]
pub struct AddressError {
    input: String,
    reason: String,
}

impl Address {
    /// A TCP address from a host name or IP and a port (the first the resolver gives).
    ///
    /// # Errors
    ///
    /// The host does not resolve.
    ///
    /// # Examples
    ///
    /// ```
    /// let a = multiproc::connection::Address::tcp("localhost", 6000)?;
    /// assert_eq!(a.to_string().rsplit(':').next(), Some("6000"));
    /// # Ok::<(), multiproc::connection::AddressError>(())
    /// ```
    pub fn tcp(host: &str, port: u16) -> Result<Self, AddressError> {
        let err = |reason: String| AddressError {
            input: format!("{host}:{port}"),
            reason,
        };
        let mut found = (host, port)
            .to_socket_addrs()
            .map_err(|e| err(e.to_string()))?;
        found
            .next()
            .map(Address::Tcp)
            .ok_or_else(|| err("the host has no address".into()))
    }

    /// The CPython family name: `AF_UNIX` (paths and abstract names) or `AF_INET`.
    ///
    /// # Examples
    ///
    /// ```
    /// let a: multiproc::connection::Address = "127.0.0.1:1".parse()?;
    /// assert_eq!(a.family(), "AF_INET");
    /// # Ok::<(), multiproc::connection::AddressError>(())
    /// ```
    pub fn family(&self) -> &'static str {
        match self {
            Address::Tcp(_) => "AF_INET",
            _ => "AF_UNIX",
        }
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, AddressError> {
        let err = |reason: &str| AddressError {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(err("empty"));
        }
        if let Some(name) = s.strip_prefix('\0').or_else(|| s.strip_prefix('@')) {
            if name.len() > MAX_UNIX_NAME - 1 {
                return Err(err("abstract name too long"));
            }
            return Ok(Address::Abstract(name.as_bytes().to_vec()));
        }
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(Address::Tcp(sa));
        }
        if !s.contains('/') {
            if let Some((host, port)) = s.rsplit_once(':') {
                if let Ok(port) = port.parse::<u16>() {
                    return Address::tcp(host.trim_matches(['[', ']']), port);
                }
            }
        }
        if s.len() > MAX_UNIX_NAME - 1 {
            return Err(err("socket path too long (at most 107 bytes)"));
        }
        Ok(Address::Unix(PathBuf::from(s)))
    }
}

/// The room in `sockaddr_un.sun_path`.
pub(crate) const MAX_UNIX_NAME: usize = 108;

impl From<SocketAddr> for Address {
    fn from(sa: SocketAddr) -> Self {
        Address::Tcp(sa)
    }
}

impl From<PathBuf> for Address {
    fn from(p: PathBuf) -> Self {
        Address::Unix(p)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "{}", p.display()),
            Address::Abstract(name) => {
                write!(f, "@{}", OsStr::from_bytes(name).to_string_lossy())
            }
            Address::Tcp(sa) => write!(f, "{sa}"),
            Address::Unnamed => f.write_str("(unnamed)"),
        }
    }
}

/// Anything that names an address: an [`Address`], a string to parse, a `SocketAddr`.
pub trait ToAddress {
    /// The address.
    ///
    /// # Errors
    ///
    /// A string that does not parse.
    fn to_address(&self) -> Result<Address, AddressError>;
}

impl ToAddress for Address {
    fn to_address(&self) -> Result<Address, AddressError> {
        Ok(self.clone())
    }
}

impl ToAddress for &Address {
    fn to_address(&self) -> Result<Address, AddressError> {
        Ok((*self).clone())
    }
}

impl ToAddress for str {
    fn to_address(&self) -> Result<Address, AddressError> {
        self.parse()
    }
}

impl ToAddress for &str {
    fn to_address(&self) -> Result<Address, AddressError> {
        self.parse()
    }
}

impl ToAddress for String {
    fn to_address(&self) -> Result<Address, AddressError> {
        self.parse()
    }
}

impl ToAddress for SocketAddr {
    fn to_address(&self) -> Result<Address, AddressError> {
        Ok(Address::Tcp(*self))
    }
}

impl ToAddress for (&str, u16) {
    fn to_address(&self) -> Result<Address, AddressError> {
        Address::tcp(self.0, self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_picked_like_cpython() {
        assert_eq!(
            "/a/b".parse::<Address>().unwrap(),
            Address::Unix("/a/b".into())
        );
        assert_eq!(
            "\0x".parse::<Address>().unwrap(),
            Address::Abstract(b"x".to_vec())
        );
        assert_eq!(
            "[::1]:80".parse::<Address>().unwrap(),
            Address::Tcp("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            "rel.sock".parse::<Address>().unwrap(),
            Address::Unix("rel.sock".into())
        );
        assert!("".parse::<Address>().is_err());
        assert!(format!("/{}", "x".repeat(200)).parse::<Address>().is_err());
        assert!("nonexistent.invalid:80".parse::<Address>().is_err());
    }
}
