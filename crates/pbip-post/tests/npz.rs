//! .npy bytes against numpy-written references, and .npz read-back with an independent zip reader.

use pbip_post::npz::{self, ConfidenceEncoding};
use std::io::Read;

fn testdata(name: &str) -> Vec<u8> {
    let p = pbip_testdata::crate_dir().join("testdata").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

#[test]
fn npy_bytes_equal_numpy_save() {
    // numpy: (np.arange(12, dtype=np.float32).reshape(3, 4) / 7).astype(np.float16)
    let vals: Vec<f32> = (0..12).map(|i| i as f32 / 7.0).collect();
    assert_eq!(
        npz::npy_bytes_f16(&[3, 4], &vals).unwrap(),
        testdata("npy_f16_ref.npy")
    );
    // numpy: np.arange(15, dtype=np.uint8).reshape(5, 3) * 17
    let vals: Vec<u8> = (0..15).map(|i| i * 17).collect();
    assert_eq!(
        npz::npy_bytes_u8(&[5, 3], &vals).unwrap(),
        testdata("npy_u8_ref.npy")
    );
}

/// Minimal .npy parser: returns (descr, shape, data bytes).
fn parse_npy(b: &[u8]) -> (String, Vec<usize>, Vec<u8>) {
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    assert_eq!((10 + hl) % 64, 0, "data not 64-byte aligned");
    let header = std::str::from_utf8(&b[10..10 + hl]).unwrap();
    assert!(header.ends_with('\n'));
    assert!(header.contains("'fortran_order': False"));
    let descr = header
        .split("'descr': '")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap()
        .to_string();
    let shape_s = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape = shape_s
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    (descr, shape, b[10 + hl..].to_vec())
}

fn read_npz(path: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let f = std::fs::File::open(path).unwrap();
    let mut z = zip::ZipArchive::new(f).unwrap();
    let mut out = Vec::new();
    for i in 0..z.len() {
        let mut e = z.by_index(i).unwrap();
        let mut buf = Vec::new();
        e.read_to_end(&mut buf).unwrap(); // verifies the CRC
        out.push((e.name().to_string(), buf));
    }
    out
}

#[test]
fn confidence_npz_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h, c) = (7usize, 5usize, 3usize);
    let conf: Vec<f32> = (0..c * w * h)
        .map(|i| ((i * 37) % 101) as f32 / 100.0)
        .collect();
    for enc in [ConfidenceEncoding::Float16, ConfidenceEncoding::U8] {
        let path = dir.path().join(format!("conf_{enc:?}.npz"));
        npz::write_confidence_maps(&path, &conf, c, w, h, enc).unwrap();
        let members = read_npz(&path);
        assert_eq!(members.len(), c);
        for (k, (name, bytes)) in members.iter().enumerate() {
            assert_eq!(name, &format!("class_{k}.npy"));
            let (descr, shape, data) = parse_npy(bytes);
            assert_eq!(shape, vec![h, w]);
            let want = &conf[k * w * h..(k + 1) * w * h];
            match enc {
                ConfidenceEncoding::Float16 => {
                    assert_eq!(descr, "<f2");
                    assert_eq!(data.len(), 2 * w * h);
                    for (i, ch) in data.chunks_exact(2).enumerate() {
                        let v = half::f16::from_le_bytes([ch[0], ch[1]]).to_f32();
                        assert!((v - want[i]).abs() <= 1e-3, "f16 {v} vs {}", want[i]);
                    }
                }
                ConfidenceEncoding::U8 => {
                    assert_eq!(descr, "|u1");
                    for (i, &q) in data.iter().enumerate() {
                        assert!((q as f32 / 255.0 - want[i]).abs() <= 1.0 / 510.0 + 1e-6);
                    }
                }
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.npz");
    assert!(npz::write_confidence_maps(&path, &[0.0; 5], 2, 2, 2, ConfidenceEncoding::U8).is_err());
    assert!(npz::npy_bytes_u8(&[2, 2], &[0; 3]).is_err());
    let mut w = npz::NpzWriter::create(&path).unwrap();
    w.add_u8("a", &[1], &[1]).unwrap();
    assert!(w.add_u8("a", &[1], &[1]).is_err());
    assert!(w.add_u8("a/b", &[1], &[1]).is_err());
    assert!(npz::NpzWriter::create(std::path::Path::new("/nonexistent_dir_pbip/x.npz")).is_err());
}

#[test]
fn streamed_members_and_zip64_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let vals: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let npy = npz::npy_bytes_u8(&[30, 100], &vals).unwrap();
    // ZIP64 records everywhere (threshold 0), and a plain archive, both with streamed members.
    for zip64_from in [0u64, u64::MAX] {
        let path = dir.path().join(format!("s{zip64_from}.npz"));
        let mut w = npz::NpzWriter::create(&path)
            .unwrap()
            .with_zip64_from(zip64_from);
        for key in ["a", "b"] {
            w.add_streamed(key, npy.len() as u64, |m| {
                for chunk in npy.chunks(333) {
                    m.write(chunk)?;
                }
                Ok(())
            })
            .unwrap();
        }
        // A member shorter than declared is an error.
        assert!(w.add_streamed("c", 10, |m| m.write(&[1, 2, 3])).is_err());
        drop(w);
        let mut w = npz::NpzWriter::create(&path)
            .unwrap()
            .with_zip64_from(zip64_from);
        for key in ["a", "b"] {
            w.add_streamed(key, npy.len() as u64, |m| m.write(&npy))
                .unwrap();
        }
        w.finish().unwrap();
        let members = read_npz(&path);
        assert_eq!(members.len(), 2);
        for (name, bytes) in &members {
            assert!(name == "a.npy" || name == "b.npy");
            assert_eq!(bytes, &npy, "{name} (zip64 from {zip64_from})");
        }
        let raw = std::fs::read(&path).unwrap();
        let has_zip64_eocd = raw.windows(4).any(|x| x == [0x50, 0x4b, 0x06, 0x06]);
        assert_eq!(has_zip64_eocd, zip64_from == 0);
    }
}
