//! `concurrent.futures`' module functions over pool results: [`wait`] and
//! [`as_completed`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::TaskError;
use super::result::AsyncResult;

/// When [`wait`] returns (`concurrent.futures.FIRST_COMPLETED`, `FIRST_EXCEPTION`,
/// `ALL_COMPLETED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnWhen {
    /// As soon as one has finished.
    FirstCompleted,
    /// As soon as one has failed, or when all have finished.
    FirstException,
    /// When all have finished.
    AllCompleted,
}

/// What [`wait`] found: the positions (in the slice given) of the finished results and of
/// the others (`done, not_done`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Waited {
    /// Positions of the results that are ready.
    pub done: Vec<usize>,
    /// Positions of the results that are not.
    pub not_done: Vec<usize>,
}

/// Waits for results of one or more pools (`concurrent.futures.wait`), at most `timeout`
/// (`None`: no limit).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use multiproc::pool::{ReturnWhen, wait};
///
/// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
/// let pool = multiproc::Pool::new(2)?;
/// let futs = vec![
///     pool.submit(std::thread::sleep, Duration::from_secs(30))?,
///     pool.submit(std::thread::sleep, Duration::from_millis(1))?,
/// ];
/// let w = wait(&futs, Some(Duration::from_secs(20)), ReturnWhen::FirstCompleted);
/// assert_eq!((w.done, w.not_done), (vec![1], vec![0]));
/// futs[0].cancel();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn wait<R>(futures: &[AsyncResult<R>], timeout: Option<Duration>, when: ReturnWhen) -> Waited {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let w = split(futures);
        let enough = match when {
            ReturnWhen::AllCompleted => w.not_done.is_empty(),
            ReturnWhen::FirstCompleted => !w.done.is_empty() || futures.is_empty(),
            ReturnWhen::FirstException => {
                w.not_done.is_empty() || w.done.iter().any(|&i| futures[i].failed())
            }
        };
        if enough || deadline.is_some_and(|d| Instant::now() >= d) {
            return w;
        }
        let pending: Vec<&AsyncResult<R>> = w.not_done.iter().map(|&i| &futures[i]).collect();
        wait_one_of(&pending, deadline);
    }
}

fn split<R>(futures: &[AsyncResult<R>]) -> Waited {
    let mut w = Waited::default();
    for (i, f) in futures.iter().enumerate() {
        if f.ready() {
            w.done.push(i);
        } else {
            w.not_done.push(i);
        }
    }
    w
}

/// Waits until one of `pending` is ready or the deadline passes.
fn wait_one_of<R>(pending: &[&AsyncResult<R>], deadline: Option<Instant>) {
    let Some(first) = pending.first() else {
        return;
    };
    let engine = first.engine();
    if pending.iter().all(|f| Arc::ptr_eq(f.engine(), engine)) {
        let batches: Vec<u64> = pending.iter().map(|f| f.batch()).collect();
        engine.wait_any(&batches, |b| b.complete(), deadline);
        return;
    }
    // Results of several pools: each pool's own wait in turn, in short slices.
    let slice = Duration::from_millis(2);
    for f in pending {
        let now = Instant::now();
        let until = deadline.map_or(now + slice, |d| d.min(now + slice));
        if f.wait_timeout(until.saturating_duration_since(now)) {
            return;
        }
    }
}

/// Yields the results as they finish (`concurrent.futures.as_completed`); once `timeout`
/// has passed with some not finished, yields one [`TaskError::Timeout`] and ends.
///
/// # Examples
///
/// ```
/// use multiproc::pool::as_completed;
///
/// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
/// let pool = multiproc::Pool::new(2)?;
/// let futs: Vec<_> = (1..=4u64).map(|x| pool.submit(|x: u64| x * x, x)).collect::<Result<_, _>>()?;
/// let mut total = 0;
/// for f in as_completed(&futs, None) {
///     total += f?.get()?;
/// }
/// assert_eq!(total, 1 + 4 + 9 + 16);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn as_completed<R>(
    futures: &[AsyncResult<R>],
    timeout: Option<Duration>,
) -> AsCompleted<'_, R> {
    AsCompleted {
        futures,
        given: vec![false; futures.len()],
        left: futures.len(),
        deadline: timeout.map(|t| Instant::now() + t),
        timed_out: false,
    }
}

/// The iterator of [`as_completed`].
#[derive(Debug)]
pub struct AsCompleted<'a, R> {
    futures: &'a [AsyncResult<R>],
    given: Vec<bool>,
    left: usize,
    deadline: Option<Instant>,
    timed_out: bool,
}

impl<'a, R> Iterator for AsCompleted<'a, R> {
    type Item = Result<&'a AsyncResult<R>, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 || self.timed_out {
            return None;
        }
        loop {
            for (i, f) in self.futures.iter().enumerate() {
                if !self.given[i] && f.ready() {
                    self.given[i] = true;
                    self.left -= 1;
                    return Some(Ok(f));
                }
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                self.timed_out = true;
                return Some(Err(TaskError::Timeout));
            }
            let pending: Vec<&AsyncResult<R>> = self
                .futures
                .iter()
                .enumerate()
                .filter(|(i, _)| !self.given[*i])
                .map(|(_, f)| f)
                .collect();
            wait_one_of(&pending, self.deadline);
        }
    }
}
