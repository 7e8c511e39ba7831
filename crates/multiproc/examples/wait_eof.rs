//! S19 `wait_eof`: a child sends 0 to 4 on a pipe; [`wait`] in the parent reports each, and
//! wakes once more when another thread closes the parent's copy of the writing end (end of
//! file), and the parent prints 'finished'.
//!
//! End of file comes only when every copy of the writing end is closed: the child's goes
//! when it exits, the parent's must be closed by the parent. In the seed the parent's copy is
//! the `w` it passed to the child; here the [`Process`] holds it (the writer was moved into
//! it), so the closing thread owns the `Process`: it joins the child, then drops the `Process`
//! and with it the writing end. The seed's thread sleeps 5 s before closing; this one waits
//! for the child to exit instead.

use multiproc::connection::{Connection, ConnectionError, wait};
use multiproc::{Process, ProcessError};

/// The seed's `foo(w)`.
fn foo(mut w: Connection<i32>) {
    for i in 0..5 {
        w.send(&i).expect("send");
    }
}

/// The seed's `closing(w)`: waits for the child to exit, then closes the parent's copy of the
/// writing end (held by `p`). Returns the child's exit code.
fn closing(p: Process) -> Result<Option<i32>, ProcessError> {
    p.join()?;
    let code = p.exitcode()?;
    drop(p);
    Ok(code)
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (r, w) = multiproc::pipe::<i32>(true)?;
    let mut p = Process::new(foo, w);
    p.start()?;
    let closer = std::thread::spawn(move || closing(p));

    let mut readers = vec![r];
    while !readers.is_empty() {
        let mut closed = Vec::new();
        for i in wait(&readers, None)? {
            match readers[i].recv() {
                Ok(value) => println!("{value}"),
                Err(ConnectionError::Eof) => closed.push(i),
                Err(e) => return Err(e.into()),
            }
        }
        for i in closed.into_iter().rev() {
            readers.remove(i);
        }
    }
    println!("finished");
    let code = closer.join().expect("the closing thread panicked")?;
    println!("child exitcode: {code:?}");
    Ok(())
}
