//! Where pbip's tests find the shared fixtures and data (the `shared/` folder next to the
//! checkout: `shared/fixtures`, reference outputs of independent software; `shared/data`, real
//! slides), found at run time so that a test binary does not carry a path baked in at compile time:
//!
//! 1. `PBIP_SHARED_DIR`, when set;
//! 2. else the first folder that has a `shared/fixtures` subfolder, walking up from the current
//!    directory (cargo runs a test in its crate's folder), then from the test executable.
//!
//! It also holds the helpers the test files share: running the real binary ([`run`], [`run_ok`])
//! and reading a run's outputs ([`output_files`]); and [`rel_err`], the measure of the parity tests.

use std::path::{Path, PathBuf};

mod cli;
pub use cli::{assert_geojson_valid, expect_ok, output_files, path_str, run, run_ok, text};

/// Environment variable naming the shared folder.
pub const SHARED_DIR_ENV: &str = "PBIP_SHARED_DIR";

fn has_shared(dir: &Path) -> Option<PathBuf> {
    let s = dir.join("shared");
    s.join("fixtures").is_dir().then_some(s)
}

/// The shared folder. Panics, naming what was searched and how to point at it, when there is none.
pub fn shared_dir() -> PathBuf {
    if let Ok(d) = std::env::var(SHARED_DIR_ENV)
        && !d.is_empty()
    {
        return PathBuf::from(d);
    }
    let starts: Vec<PathBuf> = [
        std::env::current_dir().ok(),
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf)),
    ]
    .into_iter()
    .flatten()
    .collect();
    for start in &starts {
        if let Some(found) = start.ancestors().find_map(has_shared) {
            return found;
        }
    }
    panic!(
        "no shared/fixtures folder above {starts:?}: set {SHARED_DIR_ENV} to the folder that holds \
         fixtures/ and data/"
    )
}

/// The folder of the crate whose test is running, read at run time from `CARGO_MANIFEST_DIR`
/// (cargo sets it for every test process), else the current directory (cargo runs tests in the
/// crate's folder). Unlike `env!("CARGO_MANIFEST_DIR")` it is never a stale path baked into a test
/// binary that cargo reuses from a build of the same sources in another checkout.
pub fn crate_dir() -> PathBuf {
    match std::env::var_os("CARGO_MANIFEST_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
    }
}

/// Relative L2 error `‖a − b‖ / ‖b‖` of `a` against the reference `b` (the absolute error when
/// `b` is all zeros), the measure of every parity test. Panics when the lengths differ.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum::<f64>().sqrt();
    if den == 0.0 { num } else { num / den }
}

/// Environment variable naming the PyTorch parity fixture (see [`parity_fixture_stem`]).
pub const PARITY_FIXTURE_ENV: &str = "PBIP_PARITY_FIXTURE";

/// The stem of the PyTorch parity fixture of the model and encoder parity tests: from
/// `PBIP_PARITY_FIXTURE` (with or without `.safetensors`; default the shared
/// `upstream-mit_b0-seed1`), naming `<stem>.safetensors`, `<stem>.classnet.pth`,
/// `<stem>.vision.pth`.
pub fn parity_fixture_stem() -> String {
    let p = std::env::var(PARITY_FIXTURE_ENV).unwrap_or_else(|_| {
        fixtures_dir()
            .join("upstream-mit_b0-seed1")
            .to_string_lossy()
            .into_owned()
    });
    p.strip_suffix(".safetensors")
        .map(str::to_string)
        .unwrap_or(p)
}

/// `shared/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    shared_dir().join("fixtures")
}

/// `shared/data`.
pub fn data_dir() -> PathBuf {
    shared_dir().join("data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_shared_folder_above_a_start_directory() {
        let root = std::env::temp_dir().join(format!("pbip-testdata-{}", std::process::id()));
        let deep = root.join("repo/crates/x");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(deep.ancestors().find_map(has_shared), None);
        std::fs::create_dir_all(root.join("shared/fixtures")).unwrap();
        assert_eq!(
            deep.ancestors().find_map(has_shared),
            Some(root.join("shared"))
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
