//! read_pth against checkpoints written by torch (testdata/make_testdata.py) and bad inputs.

use std::io::Write;
use std::path::PathBuf;

use pbip_weights::{WeightsError, read_pth};

fn td(name: &str) -> PathBuf {
    pbip_testdata::crate_dir().join("testdata").join(name)
}

#[test]
fn dtypes_and_views_match_torch() {
    let got = read_pth(&td("dtypes.pth")).unwrap();
    let text = std::fs::read_to_string(td("dtypes.expected.json")).unwrap();
    let exp: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exp = exp.as_object().unwrap();
    assert_eq!(
        got.len(),
        exp.len(),
        "got {:?}",
        got.keys().collect::<Vec<_>>()
    );
    for (name, e) in exp {
        let t = got.get(name).unwrap_or_else(|| panic!("{name} missing"));
        let shape: Vec<usize> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let data: Vec<f32> = e["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(t.shape, shape, "{name}");
        assert_eq!(t.data, data, "{name}");
    }
    // a few spot checks independent of the JSON
    assert_eq!(got["model.bool"].data, vec![1.0, 0.0, 1.0]);
    assert_eq!(got["model.i64"].data, vec![-3.0, 0.0, 7.0, 123456.0]);
    assert_eq!(got["model.scalar"].shape, Vec::<usize>::new());
    assert_eq!(got["model.empty"].shape, vec![0, 3]);
}

#[test]
fn legacy_format_is_rejected_clearly() {
    let e = read_pth(&td("dtypes.legacy.pth")).unwrap_err().to_string();
    assert!(e.contains("legacy") && e.contains("torch>=1.6"), "{e}");
    assert!(e.contains("dtypes.legacy.pth"), "{e}");
}

#[test]
fn foreign_global_is_rejected() {
    let e = read_pth(&td("foreign_global.pth")).unwrap_err().to_string();
    assert!(e.contains("Foo") && e.contains("does not allow"), "{e}");
}

#[test]
fn truncated_and_corrupt_files_are_errors() {
    let bytes = std::fs::read(td("dtypes.pth")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.pth");
    for cut in [
        0,
        3,
        4,
        30,
        100,
        1000,
        bytes.len() / 2,
        bytes.len() - 22,
        bytes.len() - 1,
    ] {
        std::fs::File::create(&p)
            .unwrap()
            .write_all(&bytes[..cut])
            .unwrap();
        match read_pth(&p) {
            Err(WeightsError::Format { path, .. }) => assert_eq!(path, p),
            Err(other) => panic!("cut {cut}: unexpected error kind {other}"),
            Ok(_) => panic!("cut {cut}: truncated file accepted"),
        }
    }
    // flip bytes all over the file: must never panic (errors or, rarely, a still-valid read)
    for i in (0..bytes.len()).step_by(37) {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        std::fs::File::create(&p).unwrap().write_all(&b).unwrap();
        let _ = read_pth(&p);
    }
    // not a checkpoint at all
    std::fs::File::create(&p)
        .unwrap()
        .write_all(b"hello world")
        .unwrap();
    assert!(
        read_pth(&p)
            .unwrap_err()
            .to_string()
            .contains("not a PyTorch")
    );
    assert!(matches!(
        read_pth(&dir.path().join("absent.pth")),
        Err(WeightsError::Io { .. })
    ));
}

fn expected_tensor(file: &str) -> (Vec<usize>, Vec<f32>) {
    let text = std::fs::read_to_string(td("tile_features.expected.json")).unwrap();
    let exp: serde_json::Value = serde_json::from_str(&text).unwrap();
    let e = &exp[file];
    let shape = e["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let data = e["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_f64().unwrap() as f32)
        .collect();
    (shape, data)
}

#[test]
fn single_tensor_files_match_torch() {
    // slide2vec's tile embeddings: torch.save(features) of an fp16 [N, D] tensor
    for file in ["tile_features_f16.pt", "tile_features_view.pt"] {
        let t = pbip_weights::read_pth_tensor(&td(file)).unwrap();
        let (shape, data) = expected_tensor(file);
        assert_eq!(t.shape, shape, "{file}");
        assert_eq!(t.data, data, "{file}");
    }
    // the transposed view is materialised in its own (row-major) order: row 0 = column 0 of
    // arange(12).reshape(4, 3) / 3 - 2
    let v = pbip_weights::read_pth_tensor(&td("tile_features_view.pt")).unwrap();
    assert_eq!(&v.data[..4], &[-2.0, -1.0, 0.0, 1.0]);
}

#[test]
fn single_tensor_reader_refuses_other_payloads() {
    let e = pbip_weights::read_pth_tensor(&td("dict_not_tensor.pt"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dict_not_tensor.pt") && e.contains("features") && e.contains("dict"),
        "{e}"
    );
    // read_pth reads that dict, and refuses a bare tensor (it has no name)
    assert!(
        read_pth(&td("dict_not_tensor.pt"))
            .unwrap()
            .contains_key("features")
    );
    let e = read_pth(&td("tile_features_f16.pt"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("single tensor"), "{e}");
    let e = pbip_weights::read_pth_tensor(&td("dtypes.legacy.pth"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("legacy"), "{e}");
}
