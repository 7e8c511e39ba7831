//! The records of the pool's two kinds of queue (see `README.md`): task records in each
//! worker's own queue, result records in the pool's one result queue. Pure: no system calls.
//!
//! Every record starts with a 32-byte header of little-endian words; what follows it is the
//! body (postcard).

/// The header's length in bytes.
pub(crate) const HEADER: usize = 32;

/// A task record: run `count` items through the function at (`runner`, `target`).
pub(crate) const TASK_RUN: u32 = 1;
/// A task record: finish the task in hand, then exit cleanly.
pub(crate) const TASK_STOP: u32 = 2;

/// A result record: the task ran; the body is one entry per item.
pub(crate) const RESULT_DONE: u32 = 1;
/// A result record: the task could not run (undecodable arguments, a function not in the
/// image, a result that cannot be encoded); the body is the message.
pub(crate) const RESULT_FAILED: u32 = 2;
/// A result record: the worker's initializer panicked; the body is `(message, location)`.
/// The worker exits after sending it.
pub(crate) const RESULT_INIT_FAILED: u32 = 3;
/// A result record: the task ran and at least one of its items panicked; the body is one
/// entry per item, as for `RESULT_DONE`.
pub(crate) const RESULT_PANICKED: u32 = 6;
/// A result record posted by the pool itself: the worker ended (`id` is unused).
pub(crate) const RESULT_EXITED: u32 = 4;

/// The header of a task record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TaskHeader {
    pub(crate) id: u64,
    pub(crate) kind: u32,
    pub(crate) count: u32,
    pub(crate) runner: u64,
    pub(crate) target: u64,
}

/// The header of a result record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ResultHeader {
    pub(crate) id: u64,
    pub(crate) kind: u32,
    /// The serial number of the worker it comes from (or is about).
    pub(crate) worker: u32,
    /// How long the task ran in the worker, in nanoseconds.
    pub(crate) busy_ns: u64,
    /// The body ends with this many bytes naming the shared objects the results hold by
    /// name (a postcard `Vec<String>`; 0: none), so the pool can release them if the results
    /// are never decoded.
    pub(crate) names_len: u64,
}

/// Both headers have the same shape: a `u64`, two `u32`s, two `u64`s.
type Words = (u64, u32, u32, u64, u64);

fn write_words(out: &mut Vec<u8>, (a, b, c, d, e): Words) {
    out.extend_from_slice(&a.to_le_bytes());
    out.extend_from_slice(&b.to_le_bytes());
    out.extend_from_slice(&c.to_le_bytes());
    out.extend_from_slice(&d.to_le_bytes());
    out.extend_from_slice(&e.to_le_bytes());
}

/// The header's words and the body; `None` if the record is too short.
fn read_words(record: &[u8]) -> Option<(Words, &[u8])> {
    let (h, body) = record.split_at_checked(HEADER)?;
    let word = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap_or_default());
    let half = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().unwrap_or_default());
    Some(((word(0), half(8), half(12), word(16), word(24)), body))
}

impl TaskHeader {
    /// Appends the header to `out` (which should be empty: the body follows).
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        write_words(
            out,
            (self.id, self.kind, self.count, self.runner, self.target),
        );
    }

    /// Splits a record into its header and body; `None` if it is too short.
    pub(crate) fn read(record: &[u8]) -> Option<(Self, &[u8])> {
        let ((id, kind, count, runner, target), body) = read_words(record)?;
        Some((
            Self {
                id,
                kind,
                count,
                runner,
                target,
            },
            body,
        ))
    }
}

impl ResultHeader {
    /// Appends the header to `out` (which should be empty: the body follows).
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let words = (
            self.id,
            self.kind,
            self.worker,
            self.busy_ns,
            self.names_len,
        );
        write_words(out, words);
    }

    /// Splits a record into its header and body; `None` if it is too short.
    pub(crate) fn read(record: &[u8]) -> Option<(Self, &[u8])> {
        let ((id, kind, worker, busy_ns, names_len), body) = read_words(record)?;
        Some((
            Self {
                id,
                kind,
                worker,
                busy_ns,
                names_len,
            },
            body,
        ))
    }

    /// Overwrites the header at the start of `record` (made with room for it).
    pub(crate) fn rewrite(&self, record: &mut [u8]) {
        let mut h = Vec::with_capacity(HEADER);
        self.write(&mut h);
        record[..HEADER].copy_from_slice(&h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let t = TaskHeader {
            id: u64::MAX - 3,
            kind: TASK_RUN,
            count: 7,
            runner: 0x1234_5678_9abc,
            target: 42,
        };
        let mut rec = Vec::new();
        t.write(&mut rec);
        rec.extend_from_slice(b"body");
        assert_eq!(TaskHeader::read(&rec), Some((t, &b"body"[..])));
        assert_eq!(TaskHeader::read(&rec[..HEADER - 1]), None);

        let r = ResultHeader {
            id: 9,
            kind: RESULT_DONE,
            worker: 3,
            busy_ns: 1_000_000,
            names_len: 12,
        };
        let mut rec = vec![0u8; HEADER];
        r.rewrite(&mut rec);
        assert_eq!(ResultHeader::read(&rec), Some((r, &[][..])));
    }
}
