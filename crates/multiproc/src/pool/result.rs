//! [`AsyncResult`]: the handle of work submitted with `apply_async` or `map_async`, and how
//! results are decoded from their entries.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::callable::{ITEM_PANICKED, ITEM_RETURNED};
use crate::codec::{self, fds};

use super::engine::{BatchOutcomes, Engine, OnComplete, Raw};
use super::{PoolError, TaskError};

/// Turns a batch's outcomes into the value a result gives back.
pub(crate) type Decode<R> = fn(BatchOutcomes, u64) -> Result<R, TaskError>;

/// The result of [`Pool::apply_async`](super::Pool::apply_async) or
/// [`Pool::map_async`](super::Pool::map_async) (CPython's `AsyncResult`).
///
/// It is also a [`Future`]: async code awaits it without blocking a thread (the pool's
/// background thread collects the result and wakes the task).
///
/// The value can be taken once: a second [`get`](Self::get) gives [`TaskError::Taken`].
/// Dropping the handle lets the task run to its end and throws its result away.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use multiproc::{Pool, TaskError};
///
/// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
/// let pool = Pool::new(1)?;
/// let slow = pool.apply_async(std::thread::sleep, Duration::from_millis(300))?;
/// assert!(!slow.ready());
/// assert!(matches!(slow.get_timeout(Duration::from_millis(10)), Err(TaskError::Timeout)));
/// assert!(slow.successful().is_err()); // not ready yet
/// slow.wait();
/// assert!(slow.ready() && slow.successful()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct AsyncResult<R> {
    engine: Arc<Engine>,
    batch: u64,
    decode: Decode<R>,
    taken: AtomicBool,
    _r: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.ready())
            .field("taken", &self.taken.load(Ordering::Relaxed))
            .finish()
    }
}

impl<R> AsyncResult<R> {
    pub(crate) fn new(engine: Arc<Engine>, batch: u64, decode: Decode<R>) -> Self {
        Self {
            engine,
            batch,
            decode,
            taken: AtomicBool::new(false),
            _r: PhantomData,
        }
    }

    /// Waits for the result and takes it (`get()`).
    ///
    /// # Errors
    ///
    /// The task's [`TaskError`]; for a map, the error of the first item (in input order)
    /// that failed. [`TaskError::Taken`] on a second call.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(1)?;
    /// let r = pool.apply_async(|x: u32| x + 1, 1)?;
    /// assert_eq!(r.get()?, 2);
    /// assert!(matches!(r.get(), Err(multiproc::TaskError::Taken)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get(&self) -> Result<R, TaskError> {
        self.wait();
        self.take()
    }

    /// Waits at most `timeout` for the result (`get(timeout)`).
    ///
    /// # Errors
    ///
    /// [`TaskError::Timeout`] if it is not ready in time (the task goes on, and a later
    /// `get` can still take it); otherwise as [`get`](Self::get).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(1)?;
    /// let r = pool.apply_async(|x: u32| x, 5)?;
    /// assert_eq!(r.get_timeout(Duration::from_secs(10))?, 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<R, TaskError> {
        if self.wait_timeout(timeout) {
            self.take()
        } else {
            Err(TaskError::Timeout)
        }
    }

    /// Waits until the result is ready (`wait()`).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(1)?;
    /// let r = pool.apply_async(|x: u32| x, 5)?;
    /// r.wait();
    /// assert!(r.ready());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait(&self) {
        self.engine.wait_batch(self.batch, |b| b.complete(), None);
    }

    /// Waits at most `timeout`; true if the result is ready (`wait(timeout)`, which in
    /// CPython returns nothing).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(1)?;
    /// let r = pool.apply_async(std::thread::sleep, Duration::from_millis(200))?;
    /// assert!(!r.wait_timeout(Duration::from_millis(1)));
    /// assert!(r.wait_timeout(Duration::from_secs(10)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.engine
            .wait_batch(self.batch, |b| b.complete(), Some(deadline))
    }

    /// Whether the task has finished (`ready()`).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(1)?;
    /// let r = pool.apply_async(|x: u32| x, 5)?;
    /// r.wait();
    /// assert!(r.ready());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ready(&self) -> bool {
        self.engine.with_batch(self.batch, |_, b| b.complete())
    }

    /// Whether it finished without an error (`successful()`).
    ///
    /// # Errors
    ///
    /// [`PoolError::NotReady`] if it has not finished.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(1)?;
    /// let r = pool.apply_async(|x: i32| if x < 0 { panic!("negative") } else { x }, -1)?;
    /// r.wait();
    /// assert!(!r.successful()?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn successful(&self) -> Result<bool, PoolError> {
        self.engine.with_batch(self.batch, |_, b| {
            if b.complete() {
                Ok(!b.failed())
            } else {
                Err(PoolError::NotReady)
            }
        })
    }

    /// Cancels the task (for a map, every task not yet finished): one still waiting is
    /// dropped, a running one has its worker killed and replaced. Its result then gives
    /// [`TaskError::Cancelled`]. False if nothing was left to cancel (it had finished).
    ///
    /// Unlike CPython's `Future.cancel`, a running task can be cancelled.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::TaskError;
    ///
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(1)?;
    /// let long = pool.apply_async(std::thread::sleep, Duration::from_secs(60))?;
    /// assert!(long.cancel());
    /// assert!(matches!(long.get(), Err(TaskError::Cancelled)));
    /// assert!(long.cancelled());
    /// assert_eq!(pool.apply(|x: u8| x, 1)?, 1); // a fresh worker took over
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancel(&self) -> bool {
        self.engine.cancel(self.batch)
    }

    /// Whether [`cancel`](Self::cancel) cancelled something.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(1)?;
    /// let r = pool.apply_async(|x: u8| x, 1)?;
    /// r.wait();
    /// assert!(!r.cancel() && !r.cancelled());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancelled(&self) -> bool {
        self.engine.with_batch(self.batch, |_, b| b.cancelled())
    }

    /// Whether it finished with an error (for a map: any item).
    pub(crate) fn failed(&self) -> bool {
        self.engine
            .with_batch(self.batch, |_, b| b.complete() && b.failed())
    }

    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub(crate) fn batch(&self) -> u64 {
        self.batch
    }

    fn take(&self) -> Result<R, TaskError> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return Err(TaskError::Taken);
        }
        let (outcomes, submitted) = self
            .engine
            .with_batch(self.batch, |o, b| (o.map(std::mem::take), b.submitted()));
        match outcomes {
            Some(o) => (self.decode)(o, submitted),
            None => Err(TaskError::Taken),
        }
    }
}

impl<R> Future for AsyncResult<R> {
    type Output = Result<R, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.ready() || !self.engine.set_waker(self.batch, cx.waker()) {
            return Poll::Ready(self.take());
        }
        Poll::Pending
    }
}

impl<R> Drop for AsyncResult<R> {
    fn drop(&mut self) {
        self.engine.drop_batch(self.batch);
    }
}

/// Decodes the entries of one task's result, appending one value (or error) per item.
/// (The tagged form, for a task some item of which panicked; see [`decode_outcome`].)
fn decode_entries<R: DeserializeOwned>(raw: Raw, out: &mut Vec<Result<R, TaskError>>) {
    let mut raw = raw;
    let bytes = std::mem::take(&mut raw.bytes);
    let fds = std::mem::take(&mut raw.fds);
    let items = raw.items;
    // Decoding takes the transits of the shared objects named (so the drop has none left).
    raw.by_name.clear();
    fds::decoding(fds, || {
        let mut rest = &bytes[..];
        for _ in 0..items {
            let Some((&tag, tail)) = rest.split_first() else {
                out.push(Err(TaskError::Failed(
                    "the result has fewer entries than items".to_owned(),
                )));
                continue;
            };
            let decoded = match tag {
                ITEM_RETURNED => codec::take_from_bytes::<R>(tail).map(|(v, r)| (Ok(v), r)),
                ITEM_PANICKED => codec::take_from_bytes::<(String, Option<String>)>(tail).map(
                    |((message, location), r)| (Err(TaskError::Panicked { message, location }), r),
                ),
                _ => {
                    out.push(Err(TaskError::Failed(format!("bad result entry {tag}"))));
                    rest = &[];
                    continue;
                }
            };
            match decoded {
                Ok((v, r)) => {
                    out.push(v);
                    rest = r;
                }
                Err(e) => {
                    out.push(Err(TaskError::Decode(e)));
                    rest = &[];
                }
            }
        }
    });
}

/// The values of one task's items.
pub(crate) enum Values<R> {
    /// Every item returned (the usual case, kept as plain values: no `Result` per item).
    All(Vec<R>),
    /// Each item's value or error.
    Each(Vec<Result<R, TaskError>>),
}

impl<R> Values<R> {
    pub(crate) fn into_results(self) -> Vec<Result<R, TaskError>> {
        match self {
            Self::All(v) => v.into_iter().map(Ok).collect(),
            Self::Each(v) => v,
        }
    }
}

/// Decodes an outcome into its items' values; a failed task gives its error for each of its
/// `items`.
pub(crate) fn decode_outcome<R: DeserializeOwned>(
    outcome: super::engine::Outcome,
    items: u32,
) -> Values<R> {
    let mut out = Vec::with_capacity(items as usize);
    match outcome {
        Ok(mut raw) if raw.all_returned => {
            let bytes = std::mem::take(&mut raw.bytes);
            let fds = std::mem::take(&mut raw.fds);
            // Decoding takes the transits of the shared objects named.
            raw.by_name.clear();
            match fds::decoding(fds, || crate::codec::decode::<Vec<R>>(&bytes)) {
                Ok(values) if values.len() == items as usize => return Values::All(values),
                Ok(_) => out.extend((0..items).map(|_| {
                    Err(TaskError::Failed(
                        "the result has another number of values than items".to_owned(),
                    ))
                })),
                Err(e) => out.extend((0..items).map(|_| Err(TaskError::Decode(e.clone())))),
            }
        }
        Ok(raw) => decode_entries(raw, &mut out),
        Err(e) => out.extend((0..items).map(|_| Err(e.clone()))),
    }
    Values::Each(out)
}

/// The value of a one-task batch (`apply_async`).
pub(crate) fn decode_one<R: DeserializeOwned + 'static>(
    mut o: BatchOutcomes,
    _submitted: u64,
) -> Result<R, TaskError> {
    if let Some(decoded) = o.decoded.take() {
        return match decoded.downcast::<Result<R, TaskError>>() {
            Ok(r) => *r,
            Err(_) => Err(TaskError::Taken),
        };
    }
    match o.ready.remove(&0) {
        Some(outcome) => decode_outcome(outcome, 1)
            .into_results()
            .into_iter()
            .next()
            .unwrap_or(Err(TaskError::Taken)),
        None => Err(TaskError::Taken),
    }
}

/// The values of every task of a batch, in order (`map_async`): all of them, or the error
/// of the first item that failed.
pub(crate) fn decode_all<T: DeserializeOwned>(
    mut o: BatchOutcomes,
    submitted: u64,
) -> Result<Vec<T>, TaskError> {
    let mut values = Vec::new();
    let mut first_error = None;
    for i in 0..submitted {
        match o.ready.remove(&i) {
            Some(Ok(raw)) => {
                let items = raw.items;
                match decode_outcome::<T>(Ok(raw), items) {
                    Values::All(v) => values.extend(v),
                    Values::Each(each) => {
                        for e in each {
                            match e {
                                Ok(v) => values.push(v),
                                Err(e) => {
                                    first_error.get_or_insert(e);
                                }
                            }
                        }
                    }
                }
            }
            Some(Err(e)) => {
                first_error.get_or_insert(e);
            }
            None => {
                first_error.get_or_insert(TaskError::Taken);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(values),
    }
}

/// CPython's `callback` / `error_callback`: decodes the value when the task finishes, calls
/// one of them with it, and keeps it for `get`.
pub(crate) fn callbacks<R: DeserializeOwned + Send + 'static>(
    callback: impl FnOnce(&R) + Send + 'static,
    error_callback: impl FnOnce(&TaskError) + Send + 'static,
) -> OnComplete {
    Box::new(move |o: &mut BatchOutcomes| {
        let outcomes = std::mem::take(o);
        // A panicking callback (or `Deserialize`) is the program's bug; it must not take the
        // pool's collecting thread down with it (the panic hook has printed it).
        let value: Result<R, TaskError> =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode_one(outcomes, 1)))
                .unwrap_or_else(|_| {
                    Err(TaskError::Failed("decoding the result panicked".to_owned()))
                });
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &value {
            Ok(v) => callback(v),
            Err(e) => error_callback(e),
        }));
        o.decoded = Some(Box::new(value));
    })
}
