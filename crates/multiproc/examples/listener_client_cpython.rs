//! S17 `listener_client`, with CPython on the other side: this program runs the
//! [`Listener`] (authkey `secret password`) and starts `python3`, whose client is the seed's
//! own `multiprocessing.connection.Client` code. Rust sends the object
//! `[2.25, None, 'junk', 'float']` in the [`Pickle`] codec, the bytes `hello` and the bytes
//! of the i32 array `[42, 1729]`; Python prints what it receives (`recv_bytes_into` reads 8
//! bytes into `array('i', [42, 1729, 0, 0, 0])`) and sends back a dict and the object it got,
//! which Rust decodes.
//!
//! The seed's fourth item is the type `float` itself. A pickled type is a reference to
//! Python code, which the pickle codec refuses to follow, so its name goes instead.
//!
//! A Python client with the wrong key fails on both sides, as between two Pythons.
//!
//! The framing and the handshake are CPython's: this works with CPython 3.11 (legacy
//! HMAC-MD5 handshake) as with 3.12 and later (HMAC-SHA256).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use multiproc::codec::Pickle;
use multiproc::connection::{Connection, Listener};
use serde::{Deserialize, Serialize};

const AUTHKEY: &[u8] = b"secret password";

/// The Python client: the seed's code, with the address from the command line and a reply.
const CLIENT: &str = r#"
import sys
from array import array
from multiprocessing.connection import Client

address = (sys.argv[1], int(sys.argv[2]))
with Client(address, authkey=b'secret password') as conn:
    obj = conn.recv()
    print('python received', obj, flush=True)
    print('python received', conn.recv_bytes(), flush=True)
    arr = array('i', [0, 0, 0, 0, 0])
    print('python recv_bytes_into read', conn.recv_bytes_into(arr), flush=True)
    print('python buffer', arr, flush=True)
    conn.send({'greeting': 'hello from CPython', 'sum': sum(arr), 'nothing': None})
    conn.send(obj)
"#;

/// A Python client with the wrong key.
const WRONG_KEY_CLIENT: &str = r#"
import sys
from multiprocessing.connection import Client
from multiprocessing import AuthenticationError

try:
    Client((sys.argv[1], int(sys.argv[2])), authkey=b'wrong password')
except AuthenticationError as e:
    print('wrong authkey, python side: AuthenticationError:', e, flush=True)
"#;

/// One item of the seed's list. Untagged, so each item is a plain Python value (an
/// externally tagged enum would pickle as `{'Float': 2.25}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Item {
    Float(f64),
    Str(String),
    None,
}

/// Python's `dict` reply, as a struct (a struct pickles as a dict of its fields).
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // Read through Debug.
struct Reply {
    greeting: String,
    sum: i64,
    nothing: Option<i64>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listener = Listener::builder()
        .address("127.0.0.1:0")
        .authkey(AUTHKEY)
        .bind()?;
    let multiproc::connection::Address::Tcp(address) = *listener.address() else {
        unreachable!("a TCP address was asked for");
    };
    println!("listening on {address}");

    let mut python = start_python(CLIENT, address)?;

    let mut conn: Connection<Vec<Item>, Pickle> = listener.accept()?;
    println!("connection accepted");
    let object = vec![
        Item::Float(2.25),
        Item::None,
        Item::Str("junk".to_owned()),
        Item::Str("float".to_owned()),
    ];
    conn.send(&object)?;
    conn.send_bytes(b"hello")?;
    // Python's `array('i', [42, 1729])`: two native-endian i32.
    let array: Vec<u8> = [42i32, 1729].iter().flat_map(|i| i.to_ne_bytes()).collect();
    conn.send_bytes(&array)?;

    // One connection carries one type: take the reply as another.
    let mut replies: Connection<Reply, Pickle> = conn.retype();
    println!("rust received {:?}", replies.recv()?);
    let mut conn: Connection<Vec<Item>, Pickle> = replies.retype();
    let back = conn.recv()?;
    println!("rust received the object back: {back:?}");
    println!("the same as sent: {}", back == object);
    drop(conn);

    let status = python.wait()?;
    println!("python exited with {status}");
    if !status.success() {
        return Err("the Python client failed".into());
    }

    // A Python client with the wrong key: both sides fail. Python's line is printed first:
    // ours waits for it to exit.
    let mut python = start_python(WRONG_KEY_CLIENT, address)?;
    let accepted = listener.accept::<(), Pickle>();
    python.wait()?;
    match accepted {
        Ok(_) => println!("wrong authkey, rust side: accepted?!"),
        Err(e) => println!("wrong authkey, rust side: error: {e}"),
    }
    Ok(())
}

/// Starts `python3 -c script HOST PORT`.
fn start_python(script: &str, address: SocketAddr) -> std::io::Result<Child> {
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(address.ip().to_string())
        .arg(address.port().to_string())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot run python3: {e}")))
}
