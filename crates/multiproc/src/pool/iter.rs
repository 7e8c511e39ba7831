//! `imap`, `imap_unordered` and the synchronous `map`: a stream of chunks fed lazily from
//! the caller's iterator, with a bounded number of tasks in flight.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Serialize, de::DeserializeOwned};

use super::engine::{Engine, IdMap, TaskOpts};
use super::result::{Values, decode_outcome};
use super::{Func, MapOptions, Pool, PoolError, TaskError, encode_items};

/// Tasks in flight per worker when the options do not say.
const IN_FLIGHT_PER_WORKER: usize = 64;

/// One submission fed from an iterator: chunks go in as the window allows, results come out
/// in order (`ordered`) or as they finish.
pub(crate) struct Stream<'p, I, R> {
    engine: Arc<Engine>,
    batch: u64,
    input: Option<I>,
    offsets: (u64, u64),
    chunksize: usize,
    window: u64,
    opts: TaskOpts,
    submitted: u64,
    taken: u64,
    /// The next chunk an ordered stream gives back.
    next_index: u64,
    ordered: bool,
    sealed: bool,
    /// Items of each chunk not yet taken.
    counts: IdMap<u32>,
    /// The whole call's deadline.
    deadline: Option<Instant>,
    #[cfg(feature = "progress")]
    progress: Option<indicatif::ProgressBar>,
    /// The pool it borrows (the stream must not outlive it).
    _pool: PhantomData<&'p Pool>,
    _r: PhantomData<fn() -> R>,
}

/// What [`Stream::next_chunk`] found.
pub(crate) enum Next<R> {
    /// A finished chunk: its index and its items' values.
    Chunk(u64, Values<R>),
    /// The call's timeout, or the one given, passed first.
    TimedOut,
    /// Every chunk has been given.
    End,
}

impl<'p, I, R> Stream<'p, I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    pub(crate) fn open(
        pool: &'p Pool,
        f: Func<I::Item, R>,
        items: I,
        chunksize: usize,
        options: &MapOptions,
        ordered: bool,
    ) -> Result<Self, PoolError> {
        let offsets = f.offsets;
        let batch = pool.engine.new_batch(None)?;
        #[cfg(feature = "progress")]
        let progress = options
            .progress
            .clone()
            .inspect(|bar| match items.size_hint() {
                (lo, Some(hi)) if lo == hi => bar.set_length(lo as u64),
                _ => bar.unset_length(),
            });
        let window = options
            .in_flight
            .unwrap_or(IN_FLIGHT_PER_WORKER * pool.processes()) as u64;
        Ok(Self {
            engine: pool.engine.clone(),
            batch,
            input: Some(items),
            offsets,
            chunksize,
            window,
            opts: options.task_opts(),
            submitted: 0,
            taken: 0,
            next_index: 0,
            ordered,
            sealed: false,
            counts: IdMap::default(),
            deadline: options.timeout.map(|t| Instant::now() + t),
            #[cfg(feature = "progress")]
            progress,
            _pool: PhantomData,
            _r: PhantomData,
        })
    }

    /// Submits chunks while the window has room and the input has items.
    fn feed(&mut self) -> Result<(), PoolError> {
        while self.submitted - self.taken < self.window {
            let Some(input) = self.input.as_mut() else {
                break;
            };
            let chunk: Vec<I::Item> = input.by_ref().take(self.chunksize).collect();
            if chunk.is_empty() {
                self.input = None;
                break;
            }
            let n = chunk.len() as u32;
            if chunk.len() < self.chunksize {
                self.input = None;
            }
            let added = encode_items(&chunk).and_then(|items| {
                self.engine
                    .add_task(self.batch, self.offsets, items, self.opts)
            });
            match added {
                Ok(index) => {
                    self.counts.insert(index, n);
                    self.submitted += 1;
                }
                Err(e) => {
                    self.input = None;
                    self.seal();
                    return Err(e);
                }
            }
        }
        if self.input.is_none() {
            self.seal();
        }
        Ok(())
    }

    fn seal(&mut self) {
        if !self.sealed {
            self.sealed = true;
            self.engine.seal(self.batch);
        }
    }

    /// The next finished chunk, waiting for it until the call's deadline or `until`.
    pub(crate) fn next_chunk(&mut self, until: Option<Instant>) -> Result<Next<R>, PoolError> {
        let deadline = match (self.deadline, until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        loop {
            self.feed()?;
            if self.sealed && self.taken == self.submitted {
                #[cfg(feature = "progress")]
                if let Some(bar) = &self.progress {
                    bar.finish();
                }
                return Ok(Next::End);
            }
            let (ordered, next) = (self.ordered, self.next_index);
            let got = self.engine.with_batch(self.batch, |o, _| {
                let o = o?;
                if ordered {
                    let r = o.ready.remove(&next)?;
                    while o.arrival.front().is_some_and(|i| !o.ready.contains_key(i)) {
                        o.arrival.pop_front();
                    }
                    Some((next, r))
                } else {
                    while let Some(i) = o.arrival.pop_front() {
                        if let Some(r) = o.ready.remove(&i) {
                            return Some((i, r));
                        }
                    }
                    None
                }
            });
            if let Some((index, outcome)) = got {
                self.taken += 1;
                if ordered {
                    self.next_index += 1;
                }
                let n = self.counts.remove(&index).unwrap_or(1);
                #[cfg(feature = "progress")]
                if let Some(bar) = &self.progress {
                    bar.inc(u64::from(n));
                }
                return Ok(Next::Chunk(index, decode_outcome(outcome, n)));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(Next::TimedOut);
            }
            self.engine.wait_batch(
                self.batch,
                |b| {
                    if ordered {
                        b.is_ready(next)
                    } else {
                        b.has_ready()
                    }
                },
                deadline,
            );
        }
    }
}

impl<I, R> Drop for Stream<'_, I, R> {
    fn drop(&mut self) {
        if !self.sealed {
            self.engine.seal(self.batch);
        }
        self.engine.drop_batch(self.batch);
    }
}

/// Items of a stream, one at a time.
struct Items<'p, I, R> {
    stream: Stream<'p, I, R>,
    buffer: VecDeque<Result<R, TaskError>>,
    done: bool,
}

impl<I, R> Items<'_, I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    /// The next item; `until` bounds this one wait (the iterator goes on after it).
    fn next_item(&mut self, until: Option<Instant>) -> Option<Result<R, TaskError>> {
        loop {
            if let Some(v) = self.buffer.pop_front() {
                return Some(v);
            }
            if self.done {
                return None;
            }
            match self.stream.next_chunk(until) {
                Ok(Next::Chunk(_, values)) => self.buffer.extend(values.into_results()),
                Ok(Next::End) => self.done = true,
                Ok(Next::TimedOut) => {
                    // The call's own timeout ends it; a wait's only ends the wait.
                    if self.stream.deadline.is_some_and(|d| Instant::now() >= d) {
                        self.done = true;
                    }
                    return Some(Err(TaskError::Timeout));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
            }
        }
    }
}

/// The iterator of [`Pool::imap`] (each item's result, in input order) and of
/// [`Pool::imap_unordered`] (in the order the tasks finish).
///
/// Dropping it before the end stops reading the input; tasks already submitted still run
/// and their results are thrown away.
///
/// # Examples
///
/// ```
/// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
/// let pool = multiproc::Pool::new(2)?;
/// let it = pool.imap(|x: u32| x + 1, [1, 2, 3])?;
/// assert_eq!(it.collect::<Result<Vec<_>, _>>()?, [2, 3, 4]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct IMap<'p, I, R> {
    items: Items<'p, I, R>,
}

impl<'p, I, R> IMap<'p, I, R> {
    pub(crate) fn new(stream: Stream<'p, I, R>) -> Self {
        Self {
            items: Items {
                stream,
                buffer: VecDeque::new(),
                done: false,
            },
        }
    }
}

impl<I, R> IMap<'_, I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    /// The next item, waiting at most `timeout` for it (CPython's `next(timeout)`):
    /// `Some(Err(TaskError::Timeout))` if it is not ready in time, and the iterator goes on.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::TaskError;
    ///
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(1)?;
    /// let mut it = pool.imap(std::thread::sleep, [Duration::from_millis(300)])?;
    /// assert!(matches!(it.next_timeout(Duration::from_millis(1)), Some(Err(TaskError::Timeout))));
    /// assert!(matches!(it.next_timeout(Duration::from_secs(20)), Some(Ok(()))));
    /// assert!(it.next().is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R, TaskError>> {
        self.items.next_item(Some(Instant::now() + timeout))
    }
}

impl<I, R> Iterator for IMap<'_, I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.items.next_item(None)
    }
}

impl<I, R> std::fmt::Debug for IMap<'_, I, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IMap")
            .field("submitted", &self.items.stream.submitted)
            .field("taken", &self.items.stream.taken)
            .finish()
    }
}

/// The iterator of [`Pool::imap_unordered`]: the same type as [`IMap`], giving each item's
/// result in the order the tasks finish.
///
/// # Examples
///
/// ```
/// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
/// let pool = multiproc::Pool::new(2)?;
/// let it: multiproc::IMapUnordered<'_, _, u32> = pool.imap_unordered(|x: u32| x + 1, [1, 2, 3])?;
/// let mut v = it.collect::<Result<Vec<_>, _>>()?;
/// v.sort();
/// assert_eq!(v, [2, 3, 4]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type IMapUnordered<'p, I, R> = IMap<'p, I, R>;
