//! Finding CPython interpreters for the interop tests: `python3` (3.11 here, required) and
//! 3.12 / 3.13 from pyenv (skipped with a message when missing).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// One CPython interpreter.
#[derive(Debug, Clone)]
pub(crate) struct Python {
    pub(crate) exe: PathBuf,
    pub(crate) version: (u32, u32),
}

/// Runs `exe` to learn its absolute path and version.
pub(crate) fn probe(exe: &Path) -> Result<Python, String> {
    let out = Command::new(exe)
        .args([
            "-I",
            "-c",
            "import sys; print(sys.executable); print(*sys.version_info[:2])",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            exe.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let path = lines.next().unwrap_or_default();
    let version: Vec<u32> = lines
        .next()
        .unwrap_or_default()
        .split(' ')
        .filter_map(|v| v.parse().ok())
        .collect();
    match (path, version.as_slice()) {
        (path, &[major, minor]) if Path::new(path).is_absolute() => Ok(Python {
            exe: path.into(),
            version: (major, minor),
        }),
        _ => Err(format!("{} printed {text:?}", exe.display())),
    }
}

/// `python3` from the PATH (required), by its absolute path.
pub(crate) fn find_python3() -> Python {
    let py = probe(Path::new("python3")).unwrap_or_else(|e| {
        panic!("the interop tests need CPython 3.11 as `python3` on the PATH: {e}")
    });
    if py.version != (3, 11) {
        eprintln!(
            "note: python3 is {}.{}, not 3.11",
            py.version.0, py.version.1
        );
    }
    py
}

/// A pyenv version, or `None` (with a message) if pyenv or that version is missing.
pub(crate) fn find_pyenv(version: &str) -> Option<Python> {
    let prefix = match Command::new("pyenv")
        .args(["prefix", version])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(out) => {
            eprintln!(
                "skipping CPython {version}: `pyenv prefix {version}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Err(e) => {
            eprintln!("skipping CPython {version}: cannot run pyenv: {e}");
            return None;
        }
    };
    match probe(&Path::new(&prefix).join("bin/python3")) {
        Ok(py) => Some(py),
        Err(e) => {
            eprintln!("skipping CPython {version}: {e}");
            None
        }
    }
}

/// The interpreter for `"3.11"`, `"3.12"` or `"3.13"` (found once per test binary).
pub(crate) fn python(which: &str) -> Option<Python> {
    static PY311: OnceLock<Python> = OnceLock::new();
    static PY312: OnceLock<Option<Python>> = OnceLock::new();
    static PY313: OnceLock<Option<Python>> = OnceLock::new();
    let found = match which {
        "3.11" => Some(PY311.get_or_init(find_python3).clone()),
        "3.12" => PY312.get_or_init(|| find_pyenv("3.12.1")).clone(),
        "3.13" => PY313.get_or_init(|| find_pyenv("3.13.0")).clone(),
        _ => unreachable!("{which}"),
    };
    if found.is_none() {
        eprintln!("skipped: CPython {which} not found");
    }
    found
}
