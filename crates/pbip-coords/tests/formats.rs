//! Reads every numpy-written test file (testdata/make_testdata.py) and compares with the values
//! numpy's script recorded in testdata/expected.json; checks writer output bytes against files
//! numpy wrote for the same records.

use std::io::Read;
use std::path::{Path, PathBuf};

use pbip_coords::{
    CoordError, CoordFormat, Coordinates, Hs2pV1Record, PrototypeRecord, ReadOptions, TileGeometry,
    TilingMeta, encode_hs2p_v1_npy, encode_prototype_npy, hs2p_meta_path, write_hs2p_npz,
    write_hs2p_v1_npy, write_prototype_npy,
};
use serde_json::Value;

fn testdata() -> PathBuf {
    pbip_testdata::crate_dir().join("testdata")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(testdata().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn format_name(f: CoordFormat) -> String {
    format!("{f:?}")
}

fn as_i64s(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn as_f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn check_field(name: &str, file: &str, c: &Coordinates, want: &Value) {
    let u32s = |o: &Option<Vec<u32>>| -> Vec<i64> {
        o.as_ref()
            .unwrap_or_else(|| panic!("{file}: field {name} missing"))
            .iter()
            .map(|&v| v as i64)
            .collect()
    };
    let f64s = |o: &Option<Vec<f64>>| -> Vec<f64> {
        o.clone()
            .unwrap_or_else(|| panic!("{file}: field {name} missing"))
    };
    match name {
        "tile_level" => assert_eq!(u32s(&c.tile_level), as_i64s(want), "{file} {name}"),
        "tile_size_resized" => {
            assert_eq!(u32s(&c.tile_size_resized), as_i64s(want), "{file} {name}")
        }
        "tile_size_lv0" => assert_eq!(u32s(&c.tile_size_lv0), as_i64s(want), "{file} {name}"),
        "target_tile_size" => assert_eq!(u32s(&c.target_tile_size), as_i64s(want), "{file} {name}"),
        "resize_factor" => assert_eq!(f64s(&c.resize_factor), as_f64s(want), "{file} {name}"),
        "target_spacing" => assert_eq!(f64s(&c.target_spacing), as_f64s(want), "{file} {name}"),
        "tissue_fraction" => assert_eq!(f64s(&c.tissue_fraction), as_f64s(want), "{file} {name}"),
        "contour_index" => assert_eq!(
            c.contour_index.clone().unwrap(),
            as_i64s(want),
            "{file} {name}"
        ),
        "tile_index" => assert_eq!(
            c.tile_index.clone().unwrap(),
            as_i64s(want),
            "{file} {name}"
        ),
        "wsi_name" => {
            let want: Vec<String> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect();
            assert_eq!(c.wsi_name.clone().unwrap(), want, "{file} {name}");
        }
        other => panic!("test does not know field {other}"),
    }
}

#[test]
fn every_numpy_file_reads_as_numpy_says() {
    let exp = expected();
    let files = exp["files"].as_object().unwrap();
    assert!(
        files.len() >= 30,
        "expected.json lists {} files",
        files.len()
    );
    let mut checked = 0;
    for (name, e) in files {
        let path = testdata().join(name);
        let res = Coordinates::read(&path);
        if let Some(err) = e.get("error") {
            let err = err.as_str().unwrap();
            let msg = match res {
                Ok(c) => panic!(
                    "{name}: expected an error containing '{err}', got {} rows",
                    c.len()
                ),
                Err(e) => e.to_string(),
            };
            assert!(
                msg.contains(err),
                "{name}: error '{msg}' does not contain '{err}'"
            );
            assert!(
                msg.contains(name.as_str()),
                "{name}: error '{msg}' does not name the file"
            );
            checked += 1;
            continue;
        }
        let c = res.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.x, as_i64s(&e["x"]), "{name}: x");
        assert_eq!(c.y, as_i64s(&e["y"]), "{name}: y");
        assert_eq!(
            format_name(c.source),
            e["format"].as_str().unwrap(),
            "{name}: format"
        );
        for (k, v) in e.as_object().unwrap() {
            if [
                "x",
                "y",
                "format",
                "error",
                "allow_negative_x",
                "allow_negative_y",
            ]
            .contains(&k.as_str())
            {
                continue;
            }
            check_field(k, name, &c, v);
        }
        checked += 1;
    }
    assert_eq!(checked, files.len());
}

#[test]
fn negative_coordinates_need_the_option() {
    let exp = expected();
    let e = &exp["files"]["plain_negative.npy"];
    let path = testdata().join("plain_negative.npy");
    match Coordinates::read(&path) {
        Err(CoordError::NegativeCoordinate { row, x_px, .. }) => {
            assert_eq!((row, x_px), (1, -5));
        }
        other => panic!("expected NegativeCoordinate, got {other:?}"),
    }
    let c = Coordinates::read_with(
        &path,
        &ReadOptions {
            allow_negative: true,
        },
    )
    .unwrap();
    assert_eq!(c.x, as_i64s(&e["allow_negative_x"]));
    assert_eq!(c.y, as_i64s(&e["allow_negative_y"]));
}

fn prototype_records() -> Vec<PrototypeRecord> {
    vec![
        PrototypeRecord::level0(0, 7, 224, "slide_0.tif"),
        PrototypeRecord {
            x: 1500,
            y: 2600,
            tile_level: 1,
            tile_size_resized: 112,
            tile_size: 224,
            tile_size_lv0: 448,
            resize_factor: 0.5,
            wsi_name: "rust_slide_0_é.svs".into(),
        },
        PrototypeRecord::level0(2147483647, 5, 224, format!("{}.tif", "n".repeat(60))),
    ]
}

#[test]
fn prototype_writer_matches_numpy_bytes() {
    let ours = encode_prototype_npy(Path::new("mem"), &prototype_records()).unwrap();
    let numpy = std::fs::read(testdata().join("ref_prototype.npy")).unwrap();
    assert_eq!(ours.len(), numpy.len());
    assert!(ours == numpy, "prototype .npy bytes differ from numpy's");
    let ours = encode_prototype_npy(Path::new("mem"), &[]).unwrap();
    let numpy = std::fs::read(testdata().join("ref_prototype_empty.npy")).unwrap();
    assert!(
        ours == numpy,
        "empty prototype .npy bytes differ from numpy's"
    );
}

#[test]
fn prototype_writer_round_trips_and_rejects_long_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proto.npy");
    write_prototype_npy(&path, &prototype_records()).unwrap();
    let c = Coordinates::read(&path).unwrap();
    assert_eq!(c.source, CoordFormat::PrototypeNpy);
    assert_eq!(c.x, vec![0, 1500, 2147483647]);
    assert_eq!(c.wsi_name.as_ref().unwrap()[1], "rust_slide_0_é.svs");
    assert_eq!(
        c.geometry(1, 224),
        TileGeometry {
            level: 1,
            read_size_px: 112,
            out_size_px: 224
        }
    );
    let too_long = vec![PrototypeRecord::level0(0, 0, 224, "é".repeat(65))];
    match write_prototype_npy(&path, &too_long) {
        Err(CoordError::InvalidRecord { row: 0, msg, .. }) => {
            assert!(msg.contains("65 characters"))
        }
        other => panic!("expected InvalidRecord, got {other:?}"),
    }
}

fn hs2p_v1_records() -> Vec<Hs2pV1Record> {
    let rec = |x, y, tsr, lvl, rf, lv0, ts| Hs2pV1Record {
        x,
        y,
        tile_size_resized: tsr,
        tile_level: lvl,
        resize_factor: rf,
        tile_size_lv0: lv0,
        target_spacing: ts,
    };
    vec![
        rec(12, 34, 444, 1, 1.9841269841269842, 888, 0.5),
        rec(1000000, 2000000, 444, 1, 1.9841269841269842, 888, 0.5),
        rec(0, 0, 224, 0, 1.0, 224, 0.25),
    ]
}

#[test]
fn hs2p_v1_writer_matches_numpy_bytes() {
    let ours = encode_hs2p_v1_npy(&hs2p_v1_records());
    let numpy = std::fs::read(testdata().join("ref_hs2p_v1.npy")).unwrap();
    assert!(ours == numpy, "hs2p v1 .npy bytes differ from numpy's");
    let numpy = std::fs::read(testdata().join("ref_hs2p_v1_empty.npy")).unwrap();
    assert!(
        encode_hs2p_v1_npy(&[]) == numpy,
        "empty hs2p v1 bytes differ"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.npy");
    write_hs2p_v1_npy(&path, &hs2p_v1_records()).unwrap();
    let c = Coordinates::read(&path).unwrap();
    assert_eq!(c.source, CoordFormat::Hs2pV1Npy);
    assert_eq!(
        c.geometry(0, 224),
        TileGeometry {
            level: 1,
            read_size_px: 444,
            out_size_px: 224
        }
    );
}

fn zip_member(path: &Path, name: &str) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let mut z = zip::ZipArchive::new(f).unwrap();
    let mut m = z.by_name(name).unwrap();
    let mut out = Vec::new();
    m.read_to_end(&mut out).unwrap();
    out
}

fn tiling_meta() -> TilingMeta {
    TilingMeta {
        sample_id: "s1".into(),
        image_path: "/data/s1.tif".into(),
        slide_dimensions_px: [4000, 3000],
        base_spacing_um: Some(0.25),
        level_downsamples: vec![1.0, 4.0],
        requested_tile_size_px: 224,
        requested_spacing_um: 0.5,
        read_level: 1,
        read_tile_size_px: 112,
        read_spacing_um: 1.0,
        tile_size_lv0: 448,
        step_px_lv0: 448,
        tolerance: 0.05,
        overlap: 0.0,
        min_tissue_fraction: 0.1,
        is_within_tolerance: false,
        backend: "pbip".into(),
        tissue_method: Some("hsv".into()),
    }
}

fn key_tree(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), key_tree(v))).collect())
        }
        _ => Value::Null,
    }
}

#[test]
fn hs2p_npz_writer_matches_numpy_members_and_schema() {
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("s1.coordinates.npz");
    let mut c = Coordinates::from_xy(vec![10, 20, 30], vec![40, 50, 60]);
    c.tissue_fraction = Some(vec![0.5, 1.0, 0.25]);
    let meta_path = write_hs2p_npz(&npz, &c, &tiling_meta()).unwrap();
    assert_eq!(meta_path, dir.path().join("s1.coordinates.meta.json"));
    assert_eq!(hs2p_meta_path(&npz), meta_path);

    let reference = testdata().join("ref_hs2p_write.npz");
    for member in ["tile_index.npy", "x.npy", "y.npy", "tissue_fractions.npy"] {
        assert!(
            zip_member(&npz, member) == zip_member(&reference, member),
            "npz member {member} differs from numpy's"
        );
    }
    // The meta JSON has exactly hs2p's sections and keys (reference written like hs2p does).
    let ours: Value = serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    let theirs: Value = serde_json::from_str(
        &std::fs::read_to_string(testdata().join("sample.coordinates.meta.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(key_tree(&ours), key_tree(&theirs));
    assert_eq!(ours["artifact"]["coordinate_space"], "level0_px");
    assert_eq!(ours["artifact"]["tile_order"], "x_then_y");
    assert_eq!(ours["tiling"]["n_tiles"], 3);

    let back = Coordinates::read(&npz).unwrap();
    assert_eq!(back.source, CoordFormat::Hs2pNpz);
    assert_eq!(back.x, vec![10, 20, 30]);
    assert_eq!(back.y, vec![40, 50, 60]);
    assert_eq!(back.tile_index, Some(vec![0, 1, 2]));
    assert_eq!(
        back.geometry(2, 256),
        TileGeometry {
            level: 1,
            read_size_px: 112,
            out_size_px: 224
        }
    );
    // Reading through the meta JSON path gives the same.
    assert_eq!(Coordinates::read(&meta_path).unwrap(), back);
}

#[test]
fn geometry_rules() {
    let plain = Coordinates::read(testdata().join("plain_i8.npy")).unwrap();
    assert_eq!(
        plain.geometry(0, 224),
        TileGeometry {
            level: 0,
            read_size_px: 224,
            out_size_px: 224
        }
    );
    assert_eq!(plain.get_geometry(99, 224), None);
    let v11 = Coordinates::read(testdata().join("hs2p_v11.npy")).unwrap();
    assert_eq!(
        v11.geometry(2, 256),
        TileGeometry {
            level: 1,
            read_size_px: 224,
            out_size_px: 224
        }
    );
    // Read size and level present, no target size: output = patch size.
    let v10 = Coordinates::read(testdata().join("hs2p_v10.npy")).unwrap();
    assert_eq!(
        v10.geometry(0, 224),
        TileGeometry {
            level: 0,
            read_size_px: 448,
            out_size_px: 224
        }
    );
    let sub = v10.select(&[3, 0, 17]);
    assert_eq!(sub.x, vec![3584, 0]);
    assert_eq!(sub.tile_size_resized, Some(vec![448, 448]));
}

#[test]
fn fork_pickled_file_converts_to_our_prototype_format() {
    let c = Coordinates::read(testdata().join("pbip_fork_pickled.npy")).unwrap();
    let recs = c.to_prototype_records(224, "unused.tif").unwrap();
    assert_eq!(recs[2].wsi_name, "slide_12_é.tif");
    assert_eq!(
        recs[1],
        PrototypeRecord::level0(1500, 2600, 224, "slide_0.tif")
    );
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

fn err_of(r: Result<Coordinates, CoordError>) -> String {
    match r {
        Ok(c) => panic!("expected an error, got {} rows", c.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_inputs_give_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(testdata().join("hs2p_v10.npy")).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.npy", vec![], "empty"),
        ("magic.npy", b"NOTNUMPY\x01\x00abcdefgh".to_vec(), "magic"),
        ("trunc.npy", good[..good.len() - 3].to_vec(), "truncated"),
        ("trunchdr.npy", good[..40].to_vec(), "truncated"),
        (
            "trailing.npy",
            [good.clone(), vec![0; 5]].concat(),
            "trailing",
        ),
        (
            "version.npy",
            [&good[..6], &[9, 0], &good[8..]].concat(),
            "version",
        ),
        (
            "hdr.npy",
            {
                let mut b = good.clone();
                b[20] = b'#';
                b
            },
            "malformed",
        ),
        (
            "shape.npy",
            {
                let mut b = std::fs::read(testdata().join("plain_i8.npy")).unwrap();
                let i = find_bytes(&b, b"(4, 2)");
                assert_eq!(b[i + 1], b'4');
                b[i + 1] = b'5';
                b
            },
            "truncated",
        ),
        ("zip.npz", b"PK\x03\x04garbage".to_vec(), "npz"),
        ("bin.dat", vec![0xff, 0xfe, 0x00, 0x80], "UTF-8"),
    ];
    for (name, bytes, want) in cases {
        let p = write(name, &bytes);
        let msg = err_of(Coordinates::read(&p));
        assert!(msg.contains(want), "{name}: '{msg}' lacks '{want}'");
        assert!(msg.contains(name), "{name}: '{msg}' does not name the file");
    }
    let missing = dir.path().join("missing.npy");
    assert!(err_of(Coordinates::read(&missing)).contains("missing.npy"));
}

#[test]
fn pickled_file_with_mismatched_shape_is_rejected() {
    let mut b = std::fs::read(testdata().join("pbip_fork_pickled.npy")).unwrap();
    let i = find_bytes(&b, b"'shape': (3,)");
    assert_eq!(b[i + 10], b'3');
    b[i + 10] = b'4';
    let msg = err_of(Coordinates::from_npy_bytes(
        "x.npy",
        &b,
        &ReadOptions::default(),
    ));
    assert!(msg.contains("shape mismatch"), "{msg}");
}
