//! The benchmark runner: every workload measured three ways in one run — with multiproc,
//! with CPython's `multiprocessing`, and at the OS floor (the same job done with raw system
//! calls) — then one table of medians, minima, maxima and ratios.
//!
//! ```text
//! cargo run --release -p multiproc-bench -- [--quick] [--filter NAME]...
//! ```
//!
//! How it is put together (see `bench/README.md` for how to add a workload):
//!
//! - [`workload`]: what a workload is (a [`workload::Case`]: a name, a multiproc function, a
//!   CPython script, a floor) and the one repetition loop every side uses;
//! - [`workloads`]: the table of all cases, one module per workload;
//! - [`runner`]: runs each cell in fresh processes pinned to the case's CPUs, collects the
//!   samples; [`python`] does the same for the CPython scripts in `bench/python/`;
//! - [`floor`]: the raw system calls (the only file with `unsafe`);
//! - [`stats`] and [`table`]: the figures and how they are printed.

mod floor;
mod python;
mod runner;
mod stats;
mod table;
mod workload;
mod workloads;

use std::process::ExitCode;
use std::time::Duration;

use workload::{Reps, Side};

/// What to run, from the command line.
enum Mode {
    /// The whole benchmark (what a user runs).
    Run(runner::Options),
    /// One cell in this fresh process: the runner starts the bench binary this way.
    Cell {
        case: String,
        side: Side,
        reps: Reps,
    },
    /// List the workloads and exit.
    List,
    /// Print the usage and exit.
    Help,
}

const USAGE: &str = "\
usage: multiproc-bench [--quick] [--filter NAME]... [--reps N] [--budget SECONDS] [--rounds N]
                       [--python EXE]
       multiproc-bench --list

Runs every workload with multiproc, with CPython's multiprocessing and at the OS floor,
pinned to one CPU and then to two, and prints a table of medians [min, max].

  --quick           5 repetitions per cell (checks that everything runs; timings are rough)
  --filter NAME     only the workloads whose name contains NAME (repeatable)
  --reps N          at most N repetitions per cell (default 200)
  --budget SECONDS  stop a cell after this long once it has 5 repetitions (default 3)
  --rounds N        the three sides of a workload take turns N times (default 4)
  --python EXE      the CPython interpreter (default python3)
  --list            list the workloads";

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Mode, String> {
    let mut opts = runner::Options::default();
    let mut cell: Option<String> = None;
    let mut side: Option<Side> = None;
    let mut warmup = true;
    let mut budget_set = false;
    let mut list = false;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => {
                opts.reps.max = 5;
                opts.rounds = 1;
                if !budget_set {
                    opts.reps.budget = Duration::ZERO;
                }
            }
            "--filter" => opts.filters.push(value("--filter")?),
            "--reps" => {
                let n: usize = value("--reps")?
                    .parse()
                    .map_err(|e| format!("--reps: {e}"))?;
                opts.reps.max = n.max(1);
            }
            "--budget" => {
                let s: f64 = value("--budget")?
                    .parse()
                    .map_err(|e| format!("--budget: {e}"))?;
                opts.reps.budget =
                    Duration::try_from_secs_f64(s).map_err(|e| format!("--budget: {e}"))?;
                budget_set = true;
            }
            "--python" => opts.python = value("--python")?,
            "--rounds" => {
                let n: usize = value("--rounds")?
                    .parse()
                    .map_err(|e| format!("--rounds: {e}"))?;
                opts.rounds = n.max(1);
            }
            "--list" => list = true,
            "--help" | "-h" => return Ok(Mode::Help),
            // The runner's own arguments for a cell process.
            "--cell" => cell = Some(value("--cell")?),
            "--side" => side = Some(value("--side")?.parse()?),
            "--budget-ms" => {
                let ms: u64 = value("--budget-ms")?
                    .parse()
                    .map_err(|e| format!("--budget-ms: {e}"))?;
                opts.reps.budget = Duration::from_millis(ms);
            }
            "--no-warmup" => warmup = false,
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    opts.reps.warmup = warmup;
    if list {
        return Ok(Mode::List);
    }
    match (cell, side) {
        (Some(case), Some(side)) => Ok(Mode::Cell {
            case,
            side,
            reps: opts.reps,
        }),
        (None, None) => Ok(Mode::Run(opts)),
        _ => Err("--cell and --side go together".to_owned()),
    }
}

fn main() -> ExitCode {
    // The exec floor's child ends here, before anything else runs (multiproc's hook included).
    floor::exit_if_exec_child();
    // multiproc's start-up hook: spawn and forkserver children of the cells become children here.
    multiproc::init();
    let mode = match parse_args(std::env::args().skip(1)) {
        Ok(mode) => mode,
        Err(e) => {
            eprintln!("multiproc-bench: {e}");
            return ExitCode::from(2);
        }
    };
    match mode {
        Mode::Run(opts) => runner::run(&opts),
        Mode::Cell { case, side, reps } => runner::run_cell(&case, side, &reps),
        Mode::List => {
            for case in workloads::all() {
                println!("{}", case.name);
            }
            ExitCode::SUCCESS
        }
        Mode::Help => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
    }
}
