//! Running the real binary in integration tests, and reading what it wrote.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the program `bin` (an integration test passes `env!("CARGO_BIN_EXE_pbip")`) with `args`.
pub fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().expect("run pbip")
}

/// Standard output and standard error of `o`, as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs `bin` with `args`, asserts that it succeeded (showing both streams when it did not) and
/// returns its standard output.
pub fn run_ok(bin: &str, args: &[&str]) -> String {
    expect_ok(&run(bin, args), args)
}

/// Asserts that the run `o` of `pbip args` succeeded (showing both streams when it did not) and
/// returns its standard output.
pub fn expect_ok(o: &Output, args: &[&str]) -> String {
    let (out, err) = text(o);
    assert!(
        o.status.success(),
        "pbip {args:?} failed\nstdout:\n{out}\nstderr:\n{err}"
    );
    out
}

/// `p` as UTF-8 (test paths are).
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Every file under `dir` (relative path -> bytes), for comparing the outputs of two runs: files
/// whose relative path starts with one of `skip_prefixes` are left out, and the run-dependent
/// fields of each `metadata.json` (`timestamp`, `processing_time_sec`) are nulled.
pub fn output_files(dir: &Path, skip_prefixes: &[&str]) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p
                .strip_prefix(dir)
                .expect("prefix")
                .to_string_lossy()
                .into_owned();
            if skip_prefixes.iter().any(|s| rel.starts_with(s)) {
                continue;
            }
            let mut bytes = std::fs::read(&p).expect("read");
            if rel.ends_with("metadata.json") {
                let mut v: serde_json::Value =
                    serde_json::from_slice(&bytes).expect("metadata json");
                v["timestamp"] = serde_json::Value::Null;
                v["processing_time_sec"] = serde_json::Value::Null;
                bytes = v.to_string().into_bytes();
            }
            m.insert(rel, bytes);
        }
    }
    m
}

/// Runs the repository's `testdata/check_geojson_valid.py` (shapely, an independent judge of OGC
/// validity) with `PBIP_PYTHON` (default `python3`) on `files`; fails with its report when a
/// geometry is invalid or shapely is missing.
pub fn assert_geojson_valid(files: &[PathBuf]) {
    let python = std::env::var("PBIP_PYTHON").unwrap_or_else(|_| "python3".into());
    let start = crate::crate_dir();
    let script = start
        .ancestors()
        .map(|d| d.join("testdata/check_geojson_valid.py"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no testdata/check_geojson_valid.py above {}",
                start.display()
            )
        });
    let o = Command::new(&python)
        .arg(&script)
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} (set PBIP_PYTHON): {e}"));
    assert!(
        o.status.success(),
        "GeoJSON not valid per shapely (or shapely missing):\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_files_skips_prefixes_and_nulls_run_dependent_metadata() {
        let dir = std::env::temp_dir().join(format!("pbip-testdata-files-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("s1")).unwrap();
        std::fs::write(dir.join("batch_results.csv"), "x").unwrap();
        std::fs::write(dir.join("s1/mask.png"), [1u8, 2]).unwrap();
        std::fs::write(
            dir.join("s1/metadata.json"),
            r#"{"timestamp":"now","processing_time_sec":3.5,"slide":"s1"}"#,
        )
        .unwrap();
        let m = output_files(&dir, &["batch_results"]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            m.keys().collect::<Vec<_>>(),
            ["s1/mask.png", "s1/metadata.json"]
        );
        assert_eq!(m["s1/mask.png"], [1u8, 2]);
        let meta: serde_json::Value = serde_json::from_slice(&m["s1/metadata.json"]).unwrap();
        assert_eq!(meta["timestamp"], serde_json::Value::Null);
        assert_eq!(meta["processing_time_sec"], serde_json::Value::Null);
        assert_eq!(meta["slide"], "s1");
    }
}
