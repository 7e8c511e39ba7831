//! S07 `pipe`: `Pipe(duplex)` between a parent and a child. The child sends
//! `[42, None, 'hello']`; `poll` is false before it sends, true once it has, and false again
//! after `recv`; messages arrive in the order they were sent ('a', then ['b', 'c']); a
//! one-way pipe (`duplex=False`) refuses the wrong direction.
//!
//! Python's messages mix types freely; here one connection carries one type, so the seed's
//! values are a small enum printed the way Python's `repr` prints them.

use std::fmt;
use std::time::Duration;

use multiproc::{Connection, Process};
use serde::{Deserialize, Serialize};

/// The few Python values the seed sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Py {
    Int(i64),
    None,
    Str(String),
    List(Vec<Py>),
}

impl Py {
    fn str(s: &str) -> Self {
        Py::Str(s.to_owned())
    }
}

/// Python's `repr`.
impl fmt::Display for Py {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Py::Int(i) => write!(f, "{i}"),
            Py::None => f.write_str("None"),
            Py::Str(s) => write!(f, "'{s}'"),
            Py::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// The seed's `f(conn)`: sends `[42, None, 'hello']`, then prints what the parent sends, in
/// the order it arrives.
fn f(mut conn: Connection<Py>) {
    conn.send(&Py::List(vec![Py::Int(42), Py::None, Py::str("hello")]))
        .expect("send");
    for _ in 0..2 {
        println!("child received {}", conn.recv().expect("recv"));
    }
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut parent_conn, child_conn) = multiproc::pipe::<Py>(true)?;

    // `Some(Duration::ZERO)` is Python's `poll()`: look, do not wait.
    println!(
        "poll before the child sends: {}",
        parent_conn.poll(Some(Duration::ZERO))?
    );
    let mut p = Process::new(f, child_conn);
    p.start()?;
    // Waits (at most 10 s) for the child's message.
    println!(
        "poll once the child has sent: {}",
        parent_conn.poll(Some(Duration::from_secs(10)))?
    );
    println!("parent received {}", parent_conn.recv()?);
    println!(
        "poll after recv: {}",
        parent_conn.poll(Some(Duration::ZERO))?
    );

    // First in, first out.
    parent_conn.send(&Py::str("a"))?;
    parent_conn.send(&Py::List(vec![Py::str("b"), Py::str("c")]))?;
    p.join()?;
    println!("child exitcode: {:?}", p.exitcode()?);

    // One way: the first end only receives, the second only sends.
    let (mut reader, mut writer) = multiproc::pipe::<Py>(false)?;
    println!(
        "one-way ends: reader readable={} writable={}, writer readable={} writable={}",
        reader.readable(),
        reader.writable(),
        writer.readable(),
        writer.writable()
    );
    writer.send(&Py::str("one way"))?;
    println!("the one-way pipe carried {}", reader.recv()?);
    match reader.send(&Py::str("back")) {
        Err(e) => println!("send on the reading end: error: {e}"),
        Ok(()) => println!("send on the reading end: no error?!"),
    }
    match writer.recv() {
        Err(e) => println!("recv on the writing end: error: {e}"),
        Ok(v) => println!("recv on the writing end: got {v}?!"),
    }
    Ok(())
}
