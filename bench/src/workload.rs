//! What a workload is, and the one repetition loop all three sides use.
//!
//! A [`Case`] is one row of the table: a job measured with multiproc, with CPython, and at
//! the OS floor. Each side is a *cell*. The runner runs every cell in a fresh process (the
//! bench binary itself for multiproc and the floor, `python3` for CPython), pinned to each
//! of the case's CPU sets, and that process prints the seconds each repetition took.

use std::str::FromStr;
use std::time::{Duration, Instant};

/// A cell's measuring function: runs in a fresh bench process and returns the seconds each
/// timed repetition took.
pub(crate) type CellFn = fn(&Reps) -> Result<Vec<f64>, String>;

/// The OS floor of a job: the cheapest way the kernel offers to do it.
pub(crate) struct Floor {
    /// What it does, as shown in the table (`fork+_exit+waitpid`).
    pub(crate) name: &'static str,
    /// Measures it.
    pub(crate) run: CellFn,
}

/// The CPython side of a job: a script in `bench/python/`.
pub(crate) struct Python {
    /// The script's file name.
    pub(crate) script: &'static str,
    /// Its arguments; the runner appends `--reps N --budget-ms M [--no-warmup]`.
    pub(crate) args: &'static [&'static str],
}

/// The CPU sets latency workloads run on: one CPU (parent and child share it), then two.
pub(crate) const LATENCY_CPUS: &[&[usize]] = &[&[0], &[0, 1]];

/// One row of the table.
pub(crate) struct Case {
    /// Unique; `--filter` matches on it.
    pub(crate) name: &'static str,
    /// The job done with multiproc.
    pub(crate) lib: CellFn,
    /// The job done with CPython's `multiprocessing`, if it has one.
    pub(crate) python: Option<Python>,
    /// The OS floor, if the job has one. Cases sharing a floor measure it once per CPU set.
    pub(crate) floor: Option<&'static Floor>,
    /// The CPU sets the whole run is pinned to, one row each.
    pub(crate) cpus: &'static [&'static [usize]],
    /// Each repetition runs in a new process and is that process's very first one (no
    /// warm-up inside it): for costs paid once per process, such as starting a forkserver.
    pub(crate) fresh_process: bool,
}

/// Which side of a case a cell measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// multiproc.
    Lib,
    /// The OS floor.
    Floor,
}

impl Side {
    /// The name on the command line of a cell process.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Side::Lib => "lib",
            Side::Floor => "floor",
        }
    }
}

impl FromStr for Side {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lib" => Ok(Side::Lib),
            "floor" => Ok(Side::Floor),
            other => Err(format!("unknown side {other:?} (lib or floor)")),
        }
    }
}

/// How many repetitions a cell takes: up to `max`, but once it has [`Reps::MIN`] it stops
/// when `budget` is spent (slow cells such as CPython's spawn get fewer).
///
/// `bench/python/harness.py` follows the very same rule.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reps {
    /// At most this many timed repetitions.
    pub(crate) max: usize,
    /// Time after which a cell with at least [`Reps::MIN`] repetitions stops.
    pub(crate) budget: Duration,
    /// One untimed repetition first.
    pub(crate) warmup: bool,
}

impl Default for Reps {
    fn default() -> Self {
        Self {
            max: 200,
            budget: Duration::from_secs(3),
            warmup: true,
        }
    }
}

impl Reps {
    /// Fewest timed repetitions a cell takes, whatever its budget (unless `max` is lower).
    pub(crate) const MIN: usize = 5;

    /// One repetition, the first of its process: how fresh-process cells run each sample.
    pub(crate) const FIRST_ONLY: Reps = Reps {
        max: 1,
        budget: Duration::ZERO,
        warmup: false,
    };

    /// Collects samples: `one` returns one sample (in seconds). A warm-up sample is taken and
    /// dropped first if asked.
    pub(crate) fn collect(
        &self,
        mut one: impl FnMut() -> Result<f64, String>,
    ) -> Result<Vec<f64>, String> {
        if self.warmup {
            one()?;
        }
        let min = Self::MIN.min(self.max);
        let start = Instant::now();
        let mut samples = Vec::with_capacity(self.max);
        while samples.len() < self.max && (samples.len() < min || start.elapsed() < self.budget) {
            samples.push(one()?);
        }
        Ok(samples)
    }

    /// Times `one` repetition by repetition, as [`collect`](Self::collect) counts them.
    pub(crate) fn time(
        &self,
        mut one: impl FnMut() -> Result<(), String>,
    ) -> Result<Vec<f64>, String> {
        self.collect(|| {
            let t = Instant::now();
            one()?;
            Ok(t.elapsed().as_secs_f64())
        })
    }

    /// Times `one` repetition by repetition, as [`time`](Self::time) does, and reports each
    /// divided by `per`, the number of operations a repetition does (the time of one).
    pub(crate) fn time_per(
        &self,
        per: usize,
        mut one: impl FnMut() -> Result<(), String>,
    ) -> Result<Vec<f64>, String> {
        self.collect(|| {
            let t = Instant::now();
            one()?;
            Ok(t.elapsed().as_secs_f64() / per.max(1) as f64)
        })
    }

    /// How many operations one repetition does when each is too quick to time alone (a
    /// round trip, a message): `full`, or `quick` in a cell with no time budget (`--quick`),
    /// which only checks that everything runs. `harness.batch` follows the same rule.
    pub(crate) fn batch(&self, full: usize, quick: usize) -> usize {
        if self.budget.is_zero() { quick } else { full }
    }

    /// The arguments that hand these counts to a cell process (ours or a Python script).
    pub(crate) fn to_args(self) -> Vec<String> {
        let mut args = vec![
            "--reps".to_owned(),
            self.max.to_string(),
            "--budget-ms".to_owned(),
            self.budget.as_millis().to_string(),
        ];
        if !self.warmup {
            args.push("--no-warmup".to_owned());
        }
        args
    }
}
