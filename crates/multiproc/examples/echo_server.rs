//! `echo_server`: a [`Listener`] that serves clients one after another and sends every
//! message back unchanged, as bytes; its clients may be Rust
//! ([`Client`](multiproc::connection::Client)) or CPython
//! (`multiprocessing.connection.Client`), since the framing and the handshake are CPython's.
//!
//! ```text
//! echo_server ADDRESS AUTHKEY [--once]
//! ```
//!
//! `ADDRESS` is `HOST:PORT` (port 0: the OS picks one), a Unix socket path, or `@name` for a
//! Linux abstract socket. Once it listens, the server prints `listening on ADDRESS` (with
//! the actual port) on standard output. It echoes each client's messages until that client
//! closes its end, then accepts the next. A client that fails to authenticate, stays silent
//! during the handshake (5 s), or sends a bad frame (a length header over 64 MiB, a
//! corrupt header, end of file in the middle of a message) is logged on standard error and
//! dropped; the server goes on. With `--once` it exits after its first client. Bad arguments
//! give a usage message and exit code 2.
//!
//! One client at a time: a client that stays connected holds the others in the queue.
//!
//! ```text
//! $ cargo run --release --example echo_server -- 127.0.0.1:0 'secret password'
//! listening on 127.0.0.1:41234
//! $ python3 -c "from multiprocessing.connection import Client
//! c = Client(('127.0.0.1', 41234), authkey=b'secret password'); c.send_bytes(b'hi'); print(c.recv_bytes())"
//! b'hi'
//! ```

use std::io::Write;
use std::process::ExitCode;

use multiproc::codec::Postcard;
use multiproc::connection::{Address, Connection, ConnectionError, Listener};

/// The longest message echoed; a longer one's client is dropped before any of it is read.
const MAX_MESSAGE: u64 = 64 << 20;

const USAGE: &str = "usage: echo_server ADDRESS AUTHKEY [--once]
  ADDRESS  HOST:PORT (port 0 picks a free port), a Unix socket path, or @name (abstract)
  AUTHKEY  the key clients must authenticate with
  --once   exit after serving one client";

struct Args {
    address: Address,
    authkey: String,
    once: bool,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut once = false;
    for arg in args {
        match arg.as_str() {
            "--once" => once = true,
            "-h" | "--help" => return Err(String::new()),
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            _ => positional.push(arg),
        }
    }
    let [address, authkey] = <[String; 2]>::try_from(positional)
        .map_err(|p| format!("expected ADDRESS and AUTHKEY, got {} argument(s)", p.len()))?;
    let address = address.parse().map_err(|e| format!("{e}"))?;
    Ok(Args {
        address,
        authkey,
        once,
    })
}

/// Echoes one client's messages until it closes; returns how many it sent.
fn serve(conn: &mut Connection<(), Postcard>) -> Result<u64, ConnectionError> {
    let mut count = 0;
    loop {
        match conn.recv_bytes() {
            Ok(message) => conn.send_bytes(&message)?,
            Err(ConnectionError::Eof) => return Ok(count),
            Err(e) => return Err(e),
        }
        count += 1;
    }
}

fn run(args: Args) -> Result<(), ConnectionError> {
    let mut listener = Listener::builder()
        .address(&args.address)
        .authkey(args.authkey.as_bytes())
        .max_message_size(MAX_MESSAGE)
        .bind()?;
    println!("listening on {}", listener.address());
    // Whoever started us waits for that line: do not leave it in a buffer.
    std::io::stdout().flush()?;

    loop {
        let mut conn = match listener.accept::<(), Postcard>() {
            Ok(conn) => conn,
            Err(ConnectionError::Closed) => return Err(ConnectionError::Closed),
            Err(e) => {
                eprintln!("echo_server: refused a client: {e}");
                continue;
            }
        };
        let peer = listener
            .last_accepted()
            .map_or_else(|| "?".to_owned(), Address::to_string);
        match serve(&mut conn) {
            Ok(n) => eprintln!("echo_server: {peer}: echoed {n} message(s), client closed"),
            Err(e) => eprintln!("echo_server: {peer}: dropped: {e}"),
        }
        if args.once {
            return Ok(());
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(why) => {
            if !why.is_empty() {
                eprintln!("echo_server: {why}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_server: {e}");
            ExitCode::FAILURE
        }
    }
}
