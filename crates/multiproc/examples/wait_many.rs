//! S18 `wait_many`: [`wait`] over two pipes and a socket connection ([`Listener`] +
//! [`Client`]) in a child process reports each message as it arrives, drops a reader at end
//! of file, and finishes when all are closed. The parent sends 100, 200, 300 and 400 on the
//! three writers in turn, then closes them one by one.
//!
//! The seed types each send by hand; here the child acknowledges every event on another
//! pipe before the parent goes on, so the output is always the same.

use multiproc::connection::{Client, Connection, ConnectionError, Listener, wait};
use multiproc::{Process, codec::Postcard};

/// The seed's `receive(readers)`, with names for the readers (their descriptor numbers
/// differ between the processes) and a pipe to acknowledge each event on.
fn receive((mut readers, mut ack): (Vec<(String, Connection<i32>)>, Connection<String>)) {
    while !readers.is_empty() {
        println!("receiving...");
        let conns: Vec<&Connection<i32>> = readers.iter().map(|(_, c)| c).collect();
        let ready = wait(&conns, None).expect("wait");
        let mut closed = Vec::new();
        for i in ready {
            let (name, conn) = &mut readers[i];
            let event = match conn.recv() {
                Ok(value) => format!("received {name}: {value}"),
                Err(ConnectionError::Eof) => {
                    closed.push(i);
                    format!("{name} closed: dropped")
                }
                Err(e) => panic!("{name}: {e}"),
            };
            println!("{event}");
            ack.send(&event).expect("acknowledge");
        }
        // From the back, so the indices still to remove stay valid.
        for i in closed.into_iter().rev() {
            readers.remove(i);
        }
    }
    println!("finished");
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (r1, w1) = multiproc::pipe::<i32>(true)?;
    let (r2, w2) = multiproc::pipe::<i32>(true)?;
    // A socket pair through a listener, authenticated with the program's own key. The
    // handshake needs both sides at once, so the client connects from a thread.
    let mut listener = Listener::builder().address("localhost:0").bind()?;
    let address = listener.address().clone();
    let connecting = std::thread::spawn(move || Client::new(address).connect::<i32, Postcard>());
    let r3: Connection<i32> = listener.accept()?;
    let w3 = connecting.join().expect("the connecting thread panicked")?;
    println!(
        "r1: {}, r2: {}, r3: {}",
        r1.fileno()?,
        r2.fileno()?,
        r3.fileno()?
    );

    let (mut ack, child_ack) = multiproc::pipe::<String>(true)?;
    let readers = vec![
        ("r1".to_owned(), r1),
        ("r2".to_owned(), r2),
        ("r3".to_owned(), r3),
    ];
    let mut p = Process::new(receive, (readers, child_ack));
    p.start()?;

    // The parent prints nothing until the child is done, so no line races another.
    let mut writers = [w1, w2, w3];
    let mut events = Vec::new();
    for (i, value) in [(0, 100), (1, 200), (2, 300), (0, 400)] {
        writers[i].send(&value)?;
        events.push(ack.recv()?);
    }
    for w in &mut writers {
        w.close();
        events.push(ack.recv()?);
    }
    p.join()?;
    println!("child exitcode: {:?}", p.exitcode()?);
    println!("acknowledged events: {}", events.len());
    Ok(())
}
