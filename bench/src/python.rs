//! The CPython side: runs the scripts in `bench/python/` with `python3` and reads the
//! timings they print.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::stats;
use crate::workload::{Python, Reps};

/// Where the scripts are: next to this package's sources.
fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// A CPython interpreter that answered.
pub(crate) struct Interpreter {
    exe: String,
    /// As `python3 --version` says it (`Python 3.11.7`).
    pub(crate) version: String,
}

impl Interpreter {
    /// Finds `exe`; the error says why it cannot be used.
    pub(crate) fn find(exe: &str) -> Result<Self, String> {
        let out = Command::new(exe)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{exe} not found ({e})"))?;
        if !out.status.success() {
            return Err(format!("{exe} --version failed ({})", out.status));
        }
        let mut version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if version.is_empty() {
            version = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        }
        Ok(Self {
            exe: exe.to_owned(),
            version,
        })
    }

    /// Runs one cell: the script with its arguments and the repetition counts. The script's
    /// standard error goes to ours.
    pub(crate) fn run(&self, py: &Python, reps: &Reps) -> Result<Vec<f64>, String> {
        let script = scripts_dir().join(py.script);
        let out = Command::new(&self.exe)
            .arg(&script)
            .args(py.args)
            .args(reps.to_args())
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.exe))?;
        if !out.status.success() {
            return Err(format!(
                "{} {} failed ({})",
                self.exe, py.script, out.status
            ));
        }
        stats::parse_json(&String::from_utf8_lossy(&out.stdout))
    }
}
