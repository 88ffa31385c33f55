//! What the parity tests of this crate share: the `testdata/` folder written by
//! `testdata/make_expected.py`.

use std::io::Read;
use std::path::PathBuf;

pub fn testdata() -> PathBuf {
    pbip_testdata::crate_dir().join("testdata")
}

/// The bytes of the gzipped file `testdata/<name>`.
pub fn load_gz(name: &str) -> Vec<u8> {
    let path = testdata().join(name);
    let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    out
}
