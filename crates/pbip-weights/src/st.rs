//! safetensors: 8-byte little-endian header length, JSON header, raw little-endian data.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value};

use crate::{DType, HostTensor, TensorMap, WeightsError, decode, numel};

/// Largest accepted JSON header (the reference implementation uses 100 MB).
const MAX_HEADER: u64 = 100_000_000;

fn parse_dtype(s: &str) -> Option<DType> {
    Some(match s {
        "F64" => DType::F64,
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "I16" => DType::I16,
        "I8" => DType::I8,
        "U8" => DType::U8,
        "BOOL" => DType::Bool,
        _ => return None,
    })
}

/// Reads a safetensors file: all tensors (converted to f32) and the `__metadata__` string map
/// (empty when absent).
///
/// Errors (naming the file): unreadable file, truncated header/data, malformed JSON, unknown dtype,
/// offsets that do not match the shape or lie outside the file, integers not exactly representable.
pub fn read_safetensors(
    path: &Path,
) -> Result<(TensorMap, BTreeMap<String, String>), WeightsError> {
    let bytes = std::fs::read(path).map_err(|e| WeightsError::io(path, e))?;
    parse_safetensors(&bytes).map_err(|m| WeightsError::format(path, format!("safetensors: {m}")))
}

pub(crate) fn parse_safetensors(
    bytes: &[u8],
) -> Result<(TensorMap, BTreeMap<String, String>), String> {
    if bytes.len() < 8 {
        return Err(format!(
            "file is {} bytes, shorter than the 8-byte header length",
            bytes.len()
        ));
    }
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(n8);
    if n > MAX_HEADER || n > (bytes.len() as u64 - 8) {
        return Err(format!(
            "header length {n} exceeds the file size {} (truncated or not safetensors)",
            bytes.len()
        ));
    }
    let n = n as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n])
        .map_err(|e| format!("header is not valid JSON: {e}"))?;
    let Value::Object(obj) = header else {
        return Err("header is not a JSON object".into());
    };
    let data = &bytes[8 + n..];
    let mut meta = BTreeMap::new();
    let mut map = TensorMap::new();
    for (name, v) in obj {
        if name == "__metadata__" {
            let Value::Object(m) = v else {
                return Err("__metadata__ is not an object".into());
            };
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        meta.insert(k, s);
                    }
                    other => {
                        return Err(format!(
                            "__metadata__ value for {k:?} is not a string: {other}"
                        ));
                    }
                }
            }
            continue;
        }
        let info = v
            .as_object()
            .ok_or_else(|| format!("tensor {name}: entry is not an object"))?;
        let dt_s = info
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("tensor {name}: no dtype"))?;
        let dt =
            parse_dtype(dt_s).ok_or_else(|| format!("tensor {name}: unsupported dtype {dt_s}"))?;
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("tensor {name}: no shape"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                format!("tensor {name}: shape is not a list of non-negative integers")
            })?;
        let offs: Vec<usize> = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("tensor {name}: no data_offsets"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("tensor {name}: data_offsets are not integers"))?;
        if offs.len() != 2 || offs[0] > offs[1] || offs[1] > data.len() {
            return Err(format!(
                "tensor {name}: data_offsets {offs:?} invalid for a data section of {} bytes (truncated file?)",
                data.len()
            ));
        }
        let count =
            numel(&shape).ok_or_else(|| format!("tensor {name}: shape {shape:?} overflows"))?;
        let want = count
            .checked_mul(dt.size())
            .ok_or_else(|| format!("tensor {name}: size overflows"))?;
        if offs[1] - offs[0] != want {
            return Err(format!(
                "tensor {name}: {} data bytes but shape {shape:?} of {dt_s} needs {want}",
                offs[1] - offs[0]
            ));
        }
        let vals = decode(&data[offs[0]..offs[1]], dt, true, &name)?;
        map.insert(name, HostTensor { shape, data: vals });
    }
    Ok((map, meta))
}

/// Serialises tensors (as F32) and metadata to safetensors bytes. Tensors are laid out in name order;
/// the header is padded with spaces to a multiple of 8 bytes.
pub(crate) fn to_safetensors_bytes(
    tensors: &TensorMap,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, WeightsError> {
    let mut header = Map::new();
    if !metadata.is_empty() {
        let m: Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".into(), Value::Object(m));
    }
    let mut off = 0usize;
    for (name, t) in tensors {
        if name == "__metadata__" {
            return Err(WeightsError::Shape(
                "a tensor may not be named __metadata__".into(),
            ));
        }
        let n = numel(&t.shape).unwrap_or(usize::MAX);
        if n != t.data.len() {
            return Err(WeightsError::Shape(format!(
                "tensor {name}: shape {:?} needs {n} elements, data has {}",
                t.shape,
                t.data.len()
            )));
        }
        let end = off + 4 * n;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.shape, "data_offsets": [off, end]}),
        );
        off = end;
    }
    let mut h = serde_json::to_vec(&Value::Object(header))
        .map_err(|e| WeightsError::Shape(format!("cannot encode header: {e}")))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + off);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for t in tensors.values() {
        for v in &t.data {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(out)
}

/// Writes `tensors` (F32) and `metadata` as a safetensors file, atomically: the bytes go to a temporary
/// file in the same folder, which is then renamed over `path`. A crash never leaves a partial file.
pub fn write_safetensors_atomic(
    path: &Path,
    tensors: &TensorMap,
    metadata: &BTreeMap<String, String>,
) -> Result<(), WeightsError> {
    let bytes = to_safetensors_bytes(tensors, metadata)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| WeightsError::io(path, e))?;
    tmp.write_all(&bytes)
        .map_err(|e| WeightsError::io(path, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| WeightsError::io(path, e))?;
    tmp.persist(path)
        .map_err(|e| WeightsError::io(path, e.error))?;
    tracing::debug!(path = %path.display(), tensors = tensors.len(), "wrote safetensors");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (TensorMap, BTreeMap<String, String>) {
        let mut m = TensorMap::new();
        m.insert(
            "a.weight".into(),
            HostTensor::new(vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, 1e-8, f32::MAX]).unwrap(),
        );
        m.insert("scalar".into(), HostTensor::new(vec![], vec![7.0]).unwrap());
        m.insert("empty".into(), HostTensor::new(vec![0, 4], vec![]).unwrap());
        let mut meta = BTreeMap::new();
        meta.insert("k".into(), "{\"x\": 1}".into());
        (m, meta)
    }

    #[test]
    fn roundtrip() {
        let (m, meta) = sample();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        write_safetensors_atomic(&p, &m, &meta).unwrap();
        let (m2, meta2) = read_safetensors(&p).unwrap();
        assert_eq!(m, m2);
        assert_eq!(meta, meta2);
        // overwrite works too
        write_safetensors_atomic(&p, &m, &BTreeMap::new()).unwrap();
        assert!(read_safetensors(&p).unwrap().1.is_empty());
    }

    #[test]
    fn header_layout() {
        let (m, meta) = sample();
        let b = to_safetensors_bytes(&m, &meta).unwrap();
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        assert_eq!(b.len(), 8 + n + 4 * 7);
    }

    #[test]
    fn other_dtypes() {
        // hand-built file: F16 [2] = [1, -2], I64 [1] = [3], BF16 [1] = [1]
        let h = br#"{"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"i":{"dtype":"I64","shape":[1],"data_offsets":[4,12]},"b":{"dtype":"BF16","shape":[1],"data_offsets":[12,14]}}"#;
        let mut f = (h.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(h);
        f.extend_from_slice(&0x3c00u16.to_le_bytes());
        f.extend_from_slice(&0xc000u16.to_le_bytes());
        f.extend_from_slice(&3i64.to_le_bytes());
        f.extend_from_slice(&0x3f80u16.to_le_bytes());
        let (m, _) = parse_safetensors(&f).unwrap();
        assert_eq!(m["h"].data, vec![1.0, -2.0]);
        assert_eq!(m["i"].data, vec![3.0]);
        assert_eq!(m["b"].data, vec![1.0]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let (m, meta) = sample();
        let b = to_safetensors_bytes(&m, &meta).unwrap();
        for cut in [0, 3, 8, 20, b.len() - 1] {
            assert!(parse_safetensors(&b[..cut]).is_err(), "cut {cut}");
        }
        let mut bad = b.clone();
        bad[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse_safetensors(&bad).is_err());
        let h = br#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        let mut f = (h.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(h);
        f.extend_from_slice(&[0u8; 12]);
        assert!(parse_safetensors(&f).unwrap_err().contains("needs 12"));
        let h = br#"{"x":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}"#;
        let mut f = (h.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(h);
        f.extend_from_slice(&[0u8; 8]);
        assert!(
            parse_safetensors(&f)
                .unwrap_err()
                .contains("unsupported dtype")
        );
        let e = read_safetensors(Path::new("/nonexistent/x.safetensors")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.safetensors"));
    }

    #[test]
    fn bad_tensor_is_write_error() {
        let mut m = TensorMap::new();
        m.insert(
            "x".into(),
            HostTensor {
                shape: vec![3],
                data: vec![1.0],
            },
        );
        assert!(to_safetensors_bytes(&m, &BTreeMap::new()).is_err());
    }
}
