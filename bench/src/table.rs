//! The results table, printed as Markdown so it can go straight into BENCHMARKS.md.

use std::fmt::Write as _;

use crate::stats::{Summary, fmt_secs};

/// The result of one cell.
#[derive(Clone, Debug)]
pub(crate) enum Cell {
    /// Measured.
    Done(Summary),
    /// Not measured, and that is fine (no python3, a CPU that is not there).
    Skipped(String),
    /// It should have run and did not.
    Failed(String),
    /// The case has no such side.
    Absent,
}

impl Cell {
    /// A cell from a measurement.
    pub(crate) fn from_samples(result: Result<Vec<f64>, String>) -> Self {
        match result {
            Ok(samples) => match Summary::of(&samples) {
                Some(s) => Cell::Done(s),
                None => Cell::Failed("no samples".to_owned()),
            },
            Err(e) => Cell::Failed(e),
        }
    }

    fn median(&self) -> Option<f64> {
        match self {
            Cell::Done(s) => Some(s.median),
            _ => None,
        }
    }

    fn render(&self) -> String {
        match self {
            Cell::Done(s) => format!(
                "{} [{}, {}] n={}",
                fmt_secs(s.median),
                fmt_secs(s.min),
                fmt_secs(s.max),
                s.n
            ),
            Cell::Skipped(_) => "skipped".to_owned(),
            Cell::Failed(_) => "FAILED".to_owned(),
            Cell::Absent => "—".to_owned(),
        }
    }
}

/// One line of the table: a case on one CPU set.
pub(crate) struct Row {
    /// The case's name.
    pub(crate) case: &'static str,
    /// The CPUs the run was pinned to.
    pub(crate) cpus: &'static [usize],
    /// multiproc.
    pub(crate) lib: Cell,
    /// CPython.
    pub(crate) python: Cell,
    /// What the floor is, if the case has one.
    pub(crate) floor_name: Option<&'static str>,
    /// The floor.
    pub(crate) floor: Cell,
}

fn ratio(num: &Cell, den: &Cell) -> String {
    match (num.median(), den.median()) {
        (Some(n), Some(d)) if d > 0.0 => format!("{:.2}x", n / d),
        _ => "—".to_owned(),
    }
}

fn cpu_list(cpus: &[usize]) -> String {
    let ids: Vec<String> = cpus.iter().map(ToString::to_string).collect();
    format!("{{{}}}", ids.join(","))
}

/// The table, one row per case and CPU set, followed by the reasons for every cell that was
/// skipped or failed.
pub(crate) fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| workload | CPUs | multiproc | CPython | OS floor | floor is | multiproc / floor | CPython / multiproc |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.case,
            cpu_list(r.cpus),
            r.lib.render(),
            r.python.render(),
            r.floor.render(),
            r.floor_name.unwrap_or("—"),
            ratio(&r.lib, &r.floor),
            ratio(&r.python, &r.lib),
        );
    }
    out.push_str(
        "\nEach cell: median [min, max] over n timed repetitions. The three sides of a row take \
         turns in rounds, each in a fresh process that first does one untimed repetition; the \
         \"first start\" rows instead time the first repetition of a fresh process, one process \
         per repetition. Ratios are of medians.\n",
    );
    // Each reason once, with the rows it applies to (a missing python3 skips every row).
    let mut notes: Vec<(String, Vec<String>)> = Vec::new();
    for r in rows {
        for (side, cell) in [
            ("multiproc", &r.lib),
            ("CPython", &r.python),
            ("floor", &r.floor),
        ] {
            if let Cell::Skipped(why) | Cell::Failed(why) = cell {
                let reason = format!("{side}: {why}");
                let at = format!("{} on {}", r.case, cpu_list(r.cpus));
                match notes.iter_mut().find(|(w, _)| *w == reason) {
                    Some((_, ats)) => ats.push(at),
                    None => notes.push((reason, vec![at])),
                }
            }
        }
    }
    if !notes.is_empty() {
        out.push_str("\nNot measured:\n");
        for (reason, ats) in notes {
            let _ = writeln!(out, "- {reason} ({})", ats.join("; "));
        }
    }
    out
}
