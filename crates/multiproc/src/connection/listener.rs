//! [`Listener`] and [`Client`]: connections between processes that did not inherit one,
//! over Unix socket paths, Linux abstract names, or TCP; authenticated by default.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::address::{Address, ToAddress};
use super::endpoint::{DEFAULT_MAX_MESSAGE, Endpoint};
use super::{Connection, ConnectionError, auth};
use crate::codec::Codec;
use crate::sys;

/// Which key a handshake uses.
#[derive(Clone, Debug)]
enum Key {
    /// The program's own key ([`current_process().authkey()`](crate::current_process)),
    /// which every process of the program shares.
    Program,
    /// A given key (an empty one authenticates with an empty key, as CPython 3.13 does).
    Given(Vec<u8>),
    /// No handshake at all (CPython's `authkey=None`), for peers that expect none.
    None,
}

impl Key {
    fn resolve(&self) -> Option<Vec<u8>> {
        match self {
            Key::Program => Some(crate::current_process().authkey().to_vec()),
            Key::Given(k) => Some(k.clone()),
            Key::None => None,
        }
    }
}

/// What both sides settle before a connection is handed out: the key, how long the
/// handshake may take, the longest message.
#[derive(Clone, Debug)]
struct Terms {
    key: Key,
    handshake_timeout: Duration,
    max_message: u64,
}

impl Default for Terms {
    fn default() -> Self {
        Self {
            key: Key::Program,
            handshake_timeout: auth::DEFAULT_HANDSHAKE_TIMEOUT,
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }
}

impl Terms {
    /// Authenticates a new socket (in the order of the side that `accepted` it or of the one
    /// that connected) and makes it a connection.
    fn establish<T, C: Codec>(
        &self,
        fd: OwnedFd,
        accepted: bool,
    ) -> Result<Connection<T, C>, ConnectionError> {
        let mut end = Endpoint::new(fd);
        if let Some(key) = self.key.resolve() {
            if accepted {
                auth::as_listener(&mut end, &key, self.handshake_timeout)?;
            } else {
                auth::as_client(&mut end, &key, self.handshake_timeout)?;
            }
        }
        end.max_message = self.max_message;
        Ok(Connection::from_endpoint(end, true, true))
    }
}

/// How a [`Listener`] is set up; made by [`Listener::builder`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use multiproc::connection::Listener;
///
/// let listener = Listener::builder()
///     .address("127.0.0.1:0")
///     .authkey(b"secret password")
///     .backlog(16)
///     .handshake_timeout(Duration::from_secs(2))
///     .bind()?;
/// assert_eq!(listener.address().family(), "AF_INET");
/// # Ok::<(), multiproc::connection::ConnectionError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ListenerBuilder {
    address: Option<Result<Address, super::AddressError>>,
    tcp: bool,
    backlog: i32,
    terms: Terms,
}

impl ListenerBuilder {
    /// Listens on this address (default: a new Unix socket in a private directory). A TCP
    /// port of 0 picks a free port; [`Listener::address`] tells which.
    pub fn address(mut self, address: impl ToAddress) -> Self {
        self.address = Some(address.to_address());
        self
    }

    /// With no address given, listens on a free TCP port of 127.0.0.1 instead of a Unix
    /// socket (CPython's `family='AF_INET'`).
    pub fn tcp(mut self) -> Self {
        self.tcp = true;
        self
    }

    /// How many connections may wait to be accepted (default 64; CPython's is 1).
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog.min(i32::MAX as u32) as i32;
        self
    }

    /// Authenticates every client with this key (default: the program's own key, so the
    /// program's processes find each other with no setup). An empty key authenticates with
    /// an empty key, as CPython 3.13 does.
    pub fn authkey(mut self, key: impl AsRef<[u8]>) -> Self {
        self.terms.key = Key::Given(key.as_ref().to_vec());
        self
    }

    /// No handshake: any local process (any host, on TCP) that connects gets a connection.
    /// Only for peers that expect none (CPython's `authkey=None`).
    pub fn no_authentication(mut self) -> Self {
        self.terms.key = Key::None;
        self
    }

    /// How long a client's handshake may take before it is refused (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`](super::DEFAULT_HANDSHAKE_TIMEOUT)).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.terms.handshake_timeout = timeout;
        self
    }

    /// The longest message accepted connections take (see
    /// [`Connection::set_max_message_size`]).
    pub fn max_message_size(mut self, max: u64) -> Self {
        self.terms.max_message = max;
        self
    }

    /// Binds and listens.
    ///
    /// # Errors
    ///
    /// An address that does not parse; the OS's error (`AddrInUse` for an address already
    /// bound).
    pub fn bind(self) -> Result<Listener, ConnectionError> {
        let (address, private_dir) = match self.address {
            Some(a) => (a?, None),
            None if self.tcp => (Address::Tcp(([127, 0, 0, 1], 0).into()), None),
            None => {
                let (dir, path) = private_socket_path()?;
                (Address::Unix(path), Some(dir))
            }
        };
        let sock = sys::listen(&address, self.backlog).inspect_err(|_| {
            if let Some(dir) = &private_dir {
                let _ = std::fs::remove_dir(dir);
            }
        })?;
        let mut unlink = None;
        if let Address::Unix(path) = &address {
            if private_dir.is_some() {
                // The directory already keeps others out; the socket too, for good measure.
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
            }
            unlink = Some(path.clone());
        }
        // The bound address, with the port the OS picked.
        let bound = match &address {
            Address::Tcp(_) => sys::local_address(sock.as_fd())?,
            _ => address,
        };
        Ok(Listener {
            sock: Some(sock),
            address: bound,
            terms: self.terms,
            last_accepted: None,
            unlink,
            private_dir,
        })
    }
}

/// A new private directory (mode 0700) and a socket path inside it.
fn private_socket_path() -> Result<(PathBuf, PathBuf), ConnectionError> {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let dir = std::env::temp_dir().join(format!(
        "multiproc-{}-{}",
        std::process::id(),
        hex(&sys::random_bytes::<6>())
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let path = dir.join(format!("listener-{}", hex(&sys::random_bytes::<6>())));
    Ok((dir, path))
}

/// A listening socket that hands out authenticated connections, as CPython's
/// `multiprocessing.connection.Listener`.
///
/// By default it listens on a new Unix socket in a private directory (mode 0700) and
/// authenticates clients with the program's own key; both are configurable through
/// [`Listener::builder`]. Closing (or dropping) it removes its socket file and directory.
///
/// Unlike CPython, a client that fails the handshake, stays silent, or sends garbage makes
/// `accept` return an error after at most the handshake timeout; the listener goes on
/// serving the next client.
///
/// The handshake needs both sides at once: `Client::connect` and `accept` must run in
/// different threads or processes (CPython code that calls `Client(...)` before `accept()` in
/// one thread works only without an authkey; here, add `no_authentication()` on both sides
/// for that, or connect from a thread).
///
/// # Examples
///
/// ```
/// use multiproc::Connection;
/// use multiproc::connection::{Client, Listener};
///
/// let mut listener = Listener::builder().authkey(b"secret password").bind()?;
/// let address = listener.address().clone();
/// let client = std::thread::spawn(move || -> Result<String, multiproc::connection::ConnectionError> {
///     let mut conn: Connection<String> = Client::new(address).authkey(b"secret password").connect()?;
///     conn.recv()
/// });
/// let mut conn: Connection<String> = listener.accept()?;
/// conn.send(&"hello".to_string())?;
/// assert_eq!(client.join().unwrap()?, "hello");
/// # Ok::<(), multiproc::connection::ConnectionError>(())
/// ```
#[derive(Debug)]
pub struct Listener {
    sock: Option<OwnedFd>,
    address: Address,
    terms: Terms,
    last_accepted: Option<Address>,
    unlink: Option<PathBuf>,
    private_dir: Option<PathBuf>,
}

impl Listener {
    /// The options, starting from the defaults.
    pub fn builder() -> ListenerBuilder {
        ListenerBuilder {
            address: None,
            tcp: false,
            backlog: 64,
            terms: Terms::default(),
        }
    }

    /// Listens on `address` with the default options (the program's key).
    ///
    /// # Errors
    ///
    /// See [`ListenerBuilder::bind`].
    ///
    /// # Examples
    ///
    /// ```
    /// let listener = multiproc::connection::Listener::bind("@multiproc-doc-bind")?;
    /// assert!(multiproc::connection::Listener::bind("@multiproc-doc-bind").is_err());
    /// # Ok::<(), multiproc::connection::ConnectionError>(())
    /// ```
    pub fn bind(address: impl ToAddress) -> Result<Listener, ConnectionError> {
        Self::builder().address(address).bind()
    }

    /// Waits for a client, authenticates it, and returns the connection.
    ///
    /// # Errors
    ///
    /// [`ConnectionError::Authentication`] if the client fails the handshake or does not
    /// finish it in time (the listener stays usable); [`ConnectionError::Closed`] after
    /// [`close`](Self::close); the OS's error.
    pub fn accept<T, C: Codec>(&mut self) -> Result<Connection<T, C>, ConnectionError> {
        self.accept_inner(None)
    }

    /// [`accept`](Self::accept), waiting at most `timeout` for a client to arrive (the
    /// handshake then has its own timeout).
    ///
    /// # Errors
    ///
    /// [`ConnectionError::Timeout`] if no client came, and those of
    /// [`accept`](Self::accept).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut listener = multiproc::connection::Listener::builder().bind()?;
    /// let r = listener.accept_timeout::<(), multiproc::codec::Postcard>(Duration::from_millis(20));
    /// assert!(matches!(r, Err(multiproc::connection::ConnectionError::Timeout)));
    /// # Ok::<(), multiproc::connection::ConnectionError>(())
    /// ```
    pub fn accept_timeout<T, C: Codec>(
        &mut self,
        timeout: Duration,
    ) -> Result<Connection<T, C>, ConnectionError> {
        self.accept_inner(Some(Instant::now() + timeout))
    }

    fn accept_inner<T, C: Codec>(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Connection<T, C>, ConnectionError> {
        let sock = self.sock.as_ref().ok_or(ConnectionError::Closed)?;
        let (fd, peer) = sys::accept(sock.as_fd(), deadline).map_err(ConnectionError::from_io)?;
        sys::tune_connected(fd.as_fd(), &peer);
        self.last_accepted = Some(peer);
        self.terms.establish(fd, true)
    }

    /// The address clients connect to (with the actual port if port 0 was asked for).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The address of the last client accepted (an unnamed Unix socket's is
    /// [`Address::Unnamed`]).
    pub fn last_accepted(&self) -> Option<&Address> {
        self.last_accepted.as_ref()
    }

    /// Stops listening and removes the socket file (and the private directory of a
    /// generated address). Closing twice is harmless.
    pub fn close(&mut self) {
        if self.sock.take().is_some() {
            if let Some(path) = self.unlink.take() {
                let _ = std::fs::remove_file(path);
            }
            if let Some(dir) = self.private_dir.take() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }

    pub(crate) fn listening_fd(&self) -> Option<BorrowedFd<'_>> {
        self.sock.as_ref().map(|s| s.as_fd())
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.close();
    }
}

/// Connects to a [`Listener`] (or to CPython's), as CPython's
/// `multiprocessing.connection.Client`.
///
/// # Examples
///
/// A wrong port is refused at once:
///
/// ```
/// use multiproc::connection::{Client, ConnectionError};
///
/// let err = Client::new("127.0.0.1:1").connect::<(), multiproc::codec::Postcard>().unwrap_err();
/// assert!(matches!(err, ConnectionError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused));
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Client {
    address: Result<Address, super::AddressError>,
    terms: Terms,
    connect_timeout: Duration,
}

impl Client {
    /// A client for `address`, with the program's own key.
    pub fn new(address: impl ToAddress) -> Self {
        Self {
            address: address.to_address(),
            terms: Terms::default(),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Authenticates with this key (an empty key authenticates with an empty key, as
    /// CPython 3.13 does).
    pub fn authkey(mut self, key: impl AsRef<[u8]>) -> Self {
        self.terms.key = Key::Given(key.as_ref().to_vec());
        self
    }

    /// No handshake (for a listener that expects none: CPython's `authkey=None`).
    pub fn no_authentication(mut self) -> Self {
        self.terms.key = Key::None;
        self
    }

    /// How long connecting may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the handshake may take (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`](super::DEFAULT_HANDSHAKE_TIMEOUT)).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.terms.handshake_timeout = timeout;
        self
    }

    /// The longest message the connection takes (see
    /// [`Connection::set_max_message_size`]).
    pub fn max_message_size(mut self, max: u64) -> Self {
        self.terms.max_message = max;
        self
    }

    /// Connects and authenticates.
    ///
    /// # Errors
    ///
    /// An address that does not parse; the OS's error (`ConnectionRefused`, `NotFound` for
    /// a missing socket file); [`ConnectionError::Timeout`] if connecting took too long;
    /// [`ConnectionError::Authentication`] if the handshake failed.
    pub fn connect<T, C: Codec>(&self) -> Result<Connection<T, C>, ConnectionError> {
        let address = self.address.clone()?;
        let fd = sys::connect(&address, Instant::now() + self.connect_timeout)
            .map_err(ConnectionError::from_io)?;
        self.terms.establish(fd, false)
    }
}
