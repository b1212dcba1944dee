//! What the tests that run a Python reference share: where it is installed, and running one of
//! `scripts/fixtures/*.py` into a temporary folder.

use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) fn tutti_home() -> PathBuf {
    std::env::var_os("TUTTI_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/tutti")
        })
}

/// Runs `scripts/fixtures/<script>` into a fresh temporary folder with the venv's python and the
/// references scripts/setup installs (`$TUTTI_HOME/pyref`); `None`, with the reason printed,
/// when the reference package `needs` is not installed.
pub(crate) fn run_fixture(script: &str, needs: &str) -> anyhow::Result<Option<tempfile::TempDir>> {
    let home = tutti_home();
    let pyref = home.join("pyref");
    let python = std::env::var_os("VIRTUAL_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join("venv"))
        .join("bin/python");
    if !pyref.join(needs).is_dir() || !python.exists() {
        println!(
            "SKIPPED: the Python reference ({needs} in {}, {}) is not installed (run scripts/setup)",
            pyref.display(),
            python.display()
        );
        return Ok(None);
    }
    let out = tempfile::tempdir()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/fixtures")
        .join(script);
    let run = Command::new(&python)
        .arg(&script)
        .arg(out.path())
        .env("PYTHONPATH", &pyref)
        .output()?;
    anyhow::ensure!(
        run.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    Ok(Some(out))
}
