//! Runs the cases: pins the bench process to each CPU set (every process it starts inherits
//! the pinning), lets the three sides of a case take turns in rounds, each turn in a fresh
//! process, and prints the table.
//!
//! A multiproc or floor turn runs as `multiproc-bench --cell NAME --side lib|floor --reps N
//! --budget-ms M [--no-warmup]`, which prints a JSON list of seconds, exactly as the CPython
//! scripts do; the runner then summarises all three sides the same way. A fresh process per
//! turn keeps turns apart: each starts with no forkserver, no reaper thread, no children.

use std::io::Write;
use std::process::{Command, ExitCode, Stdio};

use crate::floor;
use crate::python::Interpreter;
use crate::stats;
use crate::table::{self, Cell, Row};
use crate::workload::{Case, Reps, Side};
use crate::workloads;

/// What the user asked for.
pub(crate) struct Options {
    /// Repetitions per cell.
    pub(crate) reps: Reps,
    /// Run only the cases whose name contains one of these (all when empty).
    pub(crate) filters: Vec<String>,
    /// The CPython interpreter.
    pub(crate) python: String,
    /// The sides of a case take turns this many times, each with a share of the repetitions.
    pub(crate) rounds: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            reps: Reps::default(),
            filters: Vec::new(),
            python: "python3".to_owned(),
            rounds: 4,
        }
    }
}

impl Options {
    fn selects(&self, case: &Case) -> bool {
        let name = case.name.to_lowercase();
        self.filters.is_empty()
            || self
                .filters
                .iter()
                .any(|f| name.contains(&f.to_lowercase()))
    }
}

/// The first line of `path` that starts with `key`, after the colon.
fn proc_field(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    Some(line.split_once(':')?.1.trim().to_owned())
}

/// The machine, as BENCHMARKS.md wants it described.
fn describe_machine(python: &Result<Interpreter, String>) -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
    let cpu = proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown CPU".to_owned());
    let python = match python {
        Ok(p) => p.version.clone(),
        Err(e) => format!("no CPython: {e}"),
    };
    format!("nproc {nproc}, kernel {kernel}, {cpu}; {python}")
}

/// How this run was asked for, as a command to paste.
fn command_line() -> String {
    let mut line = "cargo run --release -p multiproc-bench --".to_owned();
    for arg in std::env::args().skip(1) {
        if arg.contains(|c: char| !(c.is_ascii_alphanumeric() || "-_+./=,".contains(c))) {
            line.push_str(&format!(" '{}'", arg.replace('\'', r"'\''")));
        } else {
            line.push(' ');
            line.push_str(&arg);
        }
    }
    line
}

/// The repetition rule in words.
fn describe_reps(opts: &Options) -> String {
    let reps = &opts.reps;
    let rounds = opts.rounds.max(1);
    let warmup = if reps.warmup {
        ", each after one untimed warm-up"
    } else {
        ""
    };
    if reps.max <= Reps::MIN || reps.budget.is_zero() {
        return format!(
            "{} per cell in {rounds} round(s){warmup}",
            reps.max.min(Reps::MIN) * rounds
        );
    }
    format!(
        "up to {} per cell in {rounds} rounds{warmup}; a round stops early once it has {} \
         and has run {:.2} s",
        reps.max.div_ceil(rounds) * rounds,
        Reps::MIN,
        reps.budget.as_secs_f64() / rounds as f64
    )
}

/// Runs everything and prints the table. Fails if any cell that should run did not.
pub(crate) fn run(opts: &Options) -> ExitCode {
    let cases: Vec<Case> = workloads::all()
        .into_iter()
        .filter(|c| opts.selects(c))
        .collect();
    if cases.is_empty() {
        eprintln!(
            "multiproc-bench: no workload matches {:?} (see --list)",
            opts.filters
        );
        return ExitCode::from(2);
    }
    let python = Interpreter::find(&opts.python);
    println!("# multiproc benchmarks\n");
    println!("- command: `{}`", command_line());
    println!("- machine: {}", describe_machine(&python));
    println!("- repetitions: {}\n", describe_reps(opts));
    let allowed = match floor::allowed_cpus() {
        Ok(set) => set,
        Err(e) => {
            eprintln!("multiproc-bench: cannot read this process's CPU affinity: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut rows = Vec::new();
    for case in &cases {
        for &cpus in case.cpus {
            rows.push(run_case_on(case, cpus, &allowed, opts, &python));
        }
    }
    if let Err(e) = floor::restore_cpus(&allowed) {
        eprintln!("multiproc-bench: cannot restore the CPU affinity: {e}");
    }
    print!("{}", table::render(&rows));
    let failed = rows.iter().any(|r| {
        [&r.lib, &r.python, &r.floor]
            .iter()
            .any(|c| matches!(c, Cell::Failed(_)))
    });
    if failed {
        eprintln!("multiproc-bench: some cells failed (see \"Not measured\" above)");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Samples gathered round after round; the first error sticks and ends that side.
struct Gathered(Result<Vec<f64>, String>);

impl Gathered {
    fn new() -> Self {
        Self(Ok(Vec::new()))
    }

    /// Adds one round of `measure`, unless this side already failed.
    fn add(&mut self, measure: impl FnOnce() -> Result<Vec<f64>, String>) {
        if let Ok(samples) = &mut self.0 {
            match measure() {
                Ok(more) => samples.extend(more),
                Err(e) => self.0 = Err(e),
            }
        }
    }

    fn cell(self) -> Cell {
        Cell::from_samples(self.0)
    }
}

/// One row: `case` with the whole run pinned to `cpus`.
///
/// The sides take turns, [`Options::rounds`] times, each round a share of the repetitions
/// and of the time budget, so that a machine that gets busier or quieter during the run
/// (other work on a shared VM) shifts all three sides alike and the ratios stay honest.
fn run_case_on(
    case: &Case,
    cpus: &'static [usize],
    allowed: &rustix::thread::CpuSet,
    opts: &Options,
    python: &Result<Interpreter, String>,
) -> Row {
    let mut row = Row {
        case: case.name,
        cpus,
        lib: Cell::Absent,
        python: Cell::Absent,
        floor_name: case.floor.map(|f| f.name),
        floor: Cell::Absent,
    };
    let missing = cpus.iter().find(|&&c| !allowed.is_set(c));
    let pinned = match missing {
        Some(c) => Err(format!("CPU {c} is not available to this process")),
        None => floor::pin_to(cpus).map_err(|e| format!("cannot pin to CPUs {cpus:?}: {e}")),
    };
    if let Err(why) = pinned {
        row.lib = Cell::Skipped(why.clone());
        row.python = case
            .python
            .as_ref()
            .map_or(Cell::Absent, |_| Cell::Skipped(why.clone()));
        row.floor = case.floor.map_or(Cell::Absent, |_| Cell::Skipped(why));
        return row;
    }
    let interp = match (&case.python, python) {
        (Some(py), Ok(interp)) => Some((py, interp)),
        (Some(_), Err(why)) => {
            row.python = Cell::Skipped(why.clone());
            None
        }
        (None, _) => None,
    };
    let rounds = opts.rounds.max(1);
    let per_round = Reps {
        max: opts.reps.max.div_ceil(rounds),
        budget: opts.reps.budget / rounds as u32,
        warmup: opts.reps.warmup,
    };
    let (mut lib, mut flo, mut py) = (Gathered::new(), Gathered::new(), Gathered::new());
    for round in 1..=rounds {
        progress(case, cpus, round, rounds);
        lib.add(|| {
            sample(case, &per_round, |r| {
                run_cell_process(case.name, Side::Lib, r)
            })
        });
        if case.floor.is_some() {
            // The floor is a per-repetition mechanism: always measured warm.
            flo.add(|| run_cell_process(case.name, Side::Floor, &per_round));
        }
        if let Some((script, interp)) = interp {
            py.add(|| sample(case, &per_round, |r| interp.run(script, r)));
        }
    }
    row.lib = lib.cell();
    if case.floor.is_some() {
        row.floor = flo.cell();
    }
    if interp.is_some() {
        row.python = py.cell();
    }
    row
}

fn progress(case: &Case, cpus: &[usize], round: usize, rounds: usize) {
    eprintln!(
        "multiproc-bench: {} on CPUs {cpus:?}, round {round}/{rounds}",
        case.name
    );
    let _ = std::io::stderr().flush();
}

/// Takes a cell's samples with `process`, which runs one cell process: once with `reps`, or,
/// for a fresh-process case, once per repetition.
fn sample(
    case: &Case,
    reps: &Reps,
    mut process: impl FnMut(&Reps) -> Result<Vec<f64>, String>,
) -> Result<Vec<f64>, String> {
    if !case.fresh_process {
        return process(reps);
    }
    reps.collect(|| {
        process(&Reps::FIRST_ONLY)?
            .first()
            .copied()
            .ok_or_else(|| "the cell process printed no timing".to_owned())
    })
}

/// Runs one multiproc or floor cell in a fresh bench process and reads its timings.
fn run_cell_process(case: &str, side: Side, reps: &Reps) -> Result<Vec<f64>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the bench binary: {e}"))?;
    let out = Command::new(exe)
        .args(["--cell", case, "--side", side.name()])
        .args(reps.to_args())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot start the cell process: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the cell process failed ({}); its errors are above",
            out.status
        ));
    }
    stats::parse_json(&String::from_utf8_lossy(&out.stdout))
}

/// In a cell process: measures one side of one case and prints its timings.
pub(crate) fn run_cell(name: &str, side: Side, reps: &Reps) -> ExitCode {
    let Some(case) = workloads::all().into_iter().find(|c| c.name == name) else {
        eprintln!("multiproc-bench: no workload named {name:?}");
        return ExitCode::from(2);
    };
    let measure = match side {
        Side::Lib => Some(case.lib),
        Side::Floor => case.floor.map(|f| f.run),
    };
    let Some(measure) = measure else {
        eprintln!("multiproc-bench: {name:?} has no {} side", side.name());
        return ExitCode::from(2);
    };
    match measure(reps) {
        Ok(samples) => {
            println!("{}", stats::to_json(&samples));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("multiproc-bench: {name} ({}): {e}", side.name());
            ExitCode::FAILURE
        }
    }
}
