//! S17 `listener_client`: a [`Listener`] on localhost with the authkey `secret password`
//! sends an object `[2.25, None, 'junk', <class 'float'>]`, the bytes `hello`, and the bytes
//! of the i32 array `[42, 1729]`; a [`Client`] in a child process receives the object, the
//! bytes, and `recv_bytes_into` a buffer of five i32 (8 bytes read, `[42, 1729, 0, 0, 0]`).
//! A wrong authkey fails on both sides with an authentication error; a port nobody listens
//! on gives 'connection refused'.
//!
//! The seed listens on the fixed port 6000; here the OS picks a free port (port 0) and the
//! client process is handed the address, so two runs never clash.

use std::fmt;

use multiproc::Process;
use multiproc::connection::{Client, Connection, Listener};
use serde::{Deserialize, Serialize};

const AUTHKEY: &[u8] = b"secret password";

/// The Python values of the seed's object. Its last item is the type `float` itself; Rust has
/// no type objects to send, so the type's name stands in for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Py {
    Float(f64),
    None,
    Str(String),
    /// A Python type, by name.
    Type(String),
}

/// Python's `repr`.
impl fmt::Display for Py {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Py::Float(x) => write!(f, "{x:?}"),
            Py::None => f.write_str("None"),
            Py::Str(s) => write!(f, "'{s}'"),
            Py::Type(name) => write!(f, "<class '{name}'>"),
        }
    }
}

fn list_repr(items: &[Py]) -> String {
    let items: Vec<String> = items.iter().map(Py::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// Python's `repr` of a `bytes`.
fn bytes_repr(bytes: &[u8]) -> String {
    let text: String = bytes
        .iter()
        .flat_map(|b| b.escape_ascii())
        .map(char::from)
        .collect();
    format!("b'{text}'")
}

/// The seed's client, in a child process.
fn client(address: String) -> Result<(), String> {
    let mut conn: Connection<Vec<Py>> = Client::new(address.as_str())
        .authkey(AUTHKEY)
        .connect()
        .map_err(|e| e.to_string())?;
    let object = conn.recv().map_err(|e| e.to_string())?;
    println!("client received {}", list_repr(&object));
    let bytes = conn.recv_bytes().map_err(|e| e.to_string())?;
    println!("client received {}", bytes_repr(&bytes));

    // Python's `array('i', [0, 0, 0, 0, 0])`, as the bytes `recv_bytes_into` fills.
    let mut buf = [0u8; 5 * size_of::<i32>()];
    let n = conn
        .recv_bytes_into(&mut buf, 0)
        .map_err(|e| e.to_string())?;
    let ints: Vec<i32> = buf
        .chunks_exact(size_of::<i32>())
        .map(|c| i32::from_ne_bytes(c.try_into().expect("4 bytes")))
        .collect();
    println!("client recv_bytes_into read {n} bytes");
    println!("client buffer: array('i', {ints:?})");
    Ok(())
}

/// A client with the wrong key; returns the error it got.
fn wrong_key_client(address: String) -> String {
    match Client::new(address.as_str())
        .authkey(b"wrong password")
        .connect::<Vec<Py>, multiproc::codec::Postcard>()
    {
        Ok(_) => "connected?!".to_owned(),
        Err(e) => format!("error: {e}"),
    }
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listener = Listener::builder()
        .address("localhost:0")
        .authkey(AUTHKEY)
        .bind()?;
    let address = listener.address().to_string();
    println!("listening on {address} ({})", listener.address().family());

    let mut p = Process::new(client, address.clone());
    p.start()?;
    {
        let mut conn: Connection<Vec<Py>> = listener.accept()?;
        let peer = listener.last_accepted().expect("a client was accepted");
        println!("connection accepted from {peer}");
        let object = vec![
            Py::Float(2.25),
            Py::None,
            Py::Str("junk".to_owned()),
            Py::Type("float".to_owned()),
        ];
        conn.send(&object)?;
        conn.send_bytes(b"hello")?;
        // Python's `array('i', [42, 1729])`: two native-endian i32.
        let array: Vec<u8> = [42i32, 1729].iter().flat_map(|i| i.to_ne_bytes()).collect();
        conn.send_bytes(&array)?;
    } // `with listener.accept() as conn`: closed here.
    match p.join_result()? {
        Ok(()) => println!("client exitcode: {:?}", p.exitcode()?),
        Err(e) => println!("client failed: {e}"),
    }

    // A client with the wrong key: both sides fail.
    let mut wrong = Process::new(wrong_key_client, address.clone());
    wrong.start()?;
    match listener.accept::<Vec<Py>, multiproc::codec::Postcard>() {
        Ok(_) => println!("wrong authkey, listener side: accepted?!"),
        Err(e) => println!("wrong authkey, listener side: error: {e}"),
    }
    println!("wrong authkey, client side: {}", wrong.join_result()?);

    // Nobody listens on the port once the listener is closed.
    listener.close();
    match Client::new(address.as_str())
        .authkey(AUTHKEY)
        .connect::<Vec<Py>, multiproc::codec::Postcard>()
    {
        Ok(_) => println!("wrong port: connected?!"),
        Err(multiproc::connection::ConnectionError::Io(e)) => {
            println!("wrong port: error: {e} ({:?})", e.kind())
        }
        Err(e) => println!("wrong port: unexpected error: {e}"),
    }
    Ok(())
}
