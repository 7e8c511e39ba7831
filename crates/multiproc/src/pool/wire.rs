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

fn word(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

fn half(bytes: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(w)
}

impl TaskHeader {
    /// Appends the header to `out` (which should be empty: the body follows).
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.kind.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.runner.to_le_bytes());
        out.extend_from_slice(&self.target.to_le_bytes());
    }

    /// Splits a record into its header and body; `None` if it is too short.
    pub(crate) fn read(record: &[u8]) -> Option<(Self, &[u8])> {
        if record.len() < HEADER {
            return None;
        }
        let h = Self {
            id: word(record, 0),
            kind: half(record, 8),
            count: half(record, 12),
            runner: word(record, 16),
            target: word(record, 24),
        };
        Some((h, &record[HEADER..]))
    }
}

impl ResultHeader {
    /// Appends the header to `out` (which should be empty: the body follows).
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.kind.to_le_bytes());
        out.extend_from_slice(&self.worker.to_le_bytes());
        out.extend_from_slice(&self.busy_ns.to_le_bytes());
        out.extend_from_slice(&self.names_len.to_le_bytes());
    }

    /// Splits a record into its header and body; `None` if it is too short.
    pub(crate) fn read(record: &[u8]) -> Option<(Self, &[u8])> {
        if record.len() < HEADER {
            return None;
        }
        let h = Self {
            id: word(record, 0),
            kind: half(record, 8),
            worker: half(record, 12),
            busy_ns: word(record, 16),
            names_len: word(record, 24),
        };
        Some((h, &record[HEADER..]))
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
