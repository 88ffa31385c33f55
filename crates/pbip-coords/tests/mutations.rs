//! Mutated bytes of valid files must give `Ok` or `Err`, never a panic.

use std::path::PathBuf;
use std::sync::OnceLock;

use pbip_coords::{Coordinates, ReadOptions};
use proptest::prelude::*;

fn testdata() -> PathBuf {
    pbip_testdata::crate_dir().join("testdata")
}

const NPY_FILES: &[&str] = &[
    "plain_i8.npy",
    "plain_be_u2.npy",
    "plain_fortran_i4.npy",
    "legacy_hs2p_n6.npy",
    "hs2p_v10.npy",
    "hs2p_v11.npy",
    "permuted_mixed.npy",
    "pbip_fork_pickled.npy",
    "ref_prototype.npy",
    "prototype_be_u64.npy",
];

fn npy_files() -> &'static Vec<Vec<u8>> {
    static FILES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FILES.get_or_init(|| {
        NPY_FILES
            .iter()
            .map(|n| std::fs::read(testdata().join(n)).unwrap())
            .collect()
    })
}

fn mutate(mut b: Vec<u8>, edits: &[(usize, u8)], header_bias: bool, cut: Option<usize>) -> Vec<u8> {
    if b.is_empty() {
        return b;
    }
    for &(pos, val) in edits {
        let limit = if header_bias {
            b.len().min(160)
        } else {
            b.len()
        };
        let i = pos % limit;
        b[i] = val;
    }
    if let Some(c) = cut {
        let c = c % (b.len() + 1);
        b.truncate(c);
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_npy_never_panics(
        which in 0usize..NPY_FILES.len(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        header_bias in any::<bool>(),
        cut in prop::option::of(any::<usize>()),
    ) {
        let bytes = mutate(npy_files()[which].clone(), &edits, header_bias, cut);
        let _ = Coordinates::from_npy_bytes("mutated.npy", &bytes, &ReadOptions::default());
        let _ = Coordinates::from_npy_bytes("mutated.npy", &bytes, &ReadOptions { allow_negative: true });
    }

    #[test]
    fn arbitrary_text_never_panics(s in "[0-9xy#,; \t\n.eE+-]{0,80}") {
        let _ = Coordinates::from_text("t.txt", &s, &ReadOptions::default());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_npz_and_meta_never_panic(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        mutate_meta in any::<bool>(),
        cut in prop::option::of(any::<usize>()),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let npz = std::fs::read(testdata().join("sample.coordinates.npz")).unwrap();
        let meta = std::fs::read(testdata().join("sample.coordinates.meta.json")).unwrap();
        let (npz, meta) = if mutate_meta {
            (npz, mutate(meta, &edits, false, cut))
        } else {
            (mutate(npz, &edits, false, cut), meta)
        };
        let p = dir.path().join("m.coordinates.npz");
        std::fs::write(&p, &npz).unwrap();
        std::fs::write(dir.path().join("m.coordinates.meta.json"), &meta).unwrap();
        let _ = Coordinates::read(&p);
    }
}
