//! PyTorch `torch.save` zip checkpoints.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::pickle::{TensorRef, Value, unpickle};
use crate::{HostTensor, TensorMap, WeightsError, decode, numel};

/// Largest `data.pkl` accepted (pickles of state dicts are small; this bounds memory on bad input).
const MAX_PICKLE_BYTES: u64 = 1 << 30;

/// Reads a PyTorch checkpoint written by `torch.save` (zip format, torch >= 1.6) into a flat map.
///
/// The pickle is interpreted without executing code (see the crate docs). Nested dicts (and lists) are
/// flattened with `.` joins: `{"cfg": None, "iter": 0, "model": state_dict}` gives `model.<param>` keys;
/// non-tensor leaves (`None`, numbers, strings) are skipped. Tensors may be strided/offset views of a
/// storage; they are materialised contiguously. f16/bf16/f64 become f32; integer tensors become f32 when
/// exact. The legacy (pre-1.6, non-zip) format is rejected with an explicit error.
pub fn read_pth(path: &Path) -> Result<TensorMap, WeightsError> {
    let (mut archive, value) = Archive::open(path)?;
    let mut leaves: Vec<(String, TensorRef)> = Vec::new();
    flatten(&value, "", &mut leaves, 0).map_err(|m| WeightsError::format(path, m))?;
    let mut out = TensorMap::new();
    for (name, t) in leaves {
        let tensor = archive.tensor(&name, &t)?;
        if out.insert(name.clone(), tensor).is_some() {
            return Err(WeightsError::format(
                path,
                format!("tensor name {name} occurs twice after flattening"),
            ));
        }
    }
    tracing::debug!(path = %path.display(), tensors = out.len(), "read torch checkpoint");
    Ok(out)
}

/// Reads a file holding one tensor, as `torch.save(tensor, path)` writes it (e.g. the per-slide
/// tile embeddings `[N, D]` of slide2vec), under the same rules as [`read_pth`]: zip format only, no
/// code executed, any dtype converted to `f32`, views materialised contiguously. A file whose
/// pickle is not a bare tensor (a dict, a list, a number) is an error saying what it holds.
pub fn read_pth_tensor(path: &Path) -> Result<HostTensor, WeightsError> {
    let (mut archive, value) = Archive::open(path)?;
    match &value {
        Value::Tensor(t) => {
            let out = archive.tensor("tensor", t)?;
            tracing::debug!(path = %path.display(), shape = ?out.shape, "read torch tensor");
            Ok(out)
        }
        Value::Dict(d) => {
            let keys: Vec<String> = d
                .borrow()
                .iter()
                .take(8)
                .map(|(k, _)| match k {
                    Value::Str(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .collect();
            Err(WeightsError::format(
                path,
                format!(
                    "holds a dict (keys {}), not a single tensor saved with torch.save(tensor, path); \
                     read it with read_pth",
                    keys.join(", ")
                ),
            ))
        }
        other => Err(WeightsError::format(
            path,
            format!(
                "holds {}, not a single tensor saved with torch.save(tensor, path)",
                describe_value(other)
            ),
        )),
    }
}

/// A short description of a non-tensor pickle value, for errors.
fn describe_value(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::Int(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Str(_) => "a string",
        Value::Bytes(_) => "bytes",
        Value::Tuple(_) => "a tuple",
        Value::List(_) => "a list",
        Value::Dict(_) => "a dict",
        Value::Global(_) => "a class",
        Value::Storage(_) => "a bare storage",
        Value::Tensor(_) => "a tensor",
    }
}

/// An opened `torch.save` zip archive: the storages are read on demand (each once).
struct Archive<'p> {
    path: &'p Path,
    zip: zip::ZipArchive<std::fs::File>,
    /// Archive root folder, with its trailing `/` (torch uses the file stem).
    root: String,
    little: bool,
    storages: HashMap<String, Vec<f32>>,
}

impl<'p> Archive<'p> {
    /// Opens the archive and runs its pickle (`data.pkl`).
    fn open(path: &'p Path) -> Result<(Self, Value), WeightsError> {
        let fmt = |m: String| WeightsError::format(path, m);
        let file = std::fs::File::open(path).map_err(|e| WeightsError::io(path, e))?;
        let mut head = [0u8; 4];
        {
            let mut f = &file;
            let n = f.read(&mut head).map_err(|e| WeightsError::io(path, e))?;
            if n < 4 || head != *b"PK\x03\x04" {
                if n >= 1 && head[0] == 0x80 {
                    return Err(fmt(
                        "unsupported legacy .pth format (pre-1.6 torch.save, not a zip archive); \
                         re-save it with torch>=1.6: torch.save(torch.load(old), new)"
                            .into(),
                    ));
                }
                return Err(fmt("not a PyTorch zip checkpoint (no zip signature)".into()));
            }
        }
        let file = std::fs::File::open(path).map_err(|e| WeightsError::io(path, e))?;
        let zip = zip::ZipArchive::new(file).map_err(|e| fmt(format!("bad zip archive: {e}")))?;

        // The archive root folder is arbitrary (torch uses the file stem): find `<root>/data.pkl`.
        let pkl_name = zip
            .file_names()
            .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .min_by_key(|n| n.len())
            .map(str::to_string)
            .ok_or_else(
                || fmt("zip archive has no data.pkl: not a torch.save checkpoint".into()),
            )?;
        if zip.file_names().any(|n| {
            n.ends_with("/constants.pkl") || n.starts_with("code/") || n.contains("/code/")
        }) {
            return Err(fmt(
                "this is a TorchScript archive (torch.jit.save), not a torch.save state dict"
                    .into(),
            ));
        }
        let root = pkl_name[..pkl_name.len() - "data.pkl".len()].to_string();
        let mut archive = Archive {
            path,
            zip,
            root,
            little: true,
            storages: HashMap::new(),
        };
        let byteorder = format!("{}byteorder", archive.root);
        if archive.zip.index_for_name(&byteorder).is_some() {
            let b = archive.entry(&byteorder, 64)?;
            archive.little = match std::str::from_utf8(&b).map(str::trim) {
                Ok("little") => true,
                Ok("big") => false,
                _ => {
                    return Err(fmt(format!(
                        "unknown byteorder {:?}",
                        String::from_utf8_lossy(&b)
                    )));
                }
            };
        }
        let pkl = archive.entry(&pkl_name, MAX_PICKLE_BYTES)?;
        let value = unpickle(&pkl).map_err(|m| fmt(format!("{pkl_name}: {m}")))?;
        Ok((archive, value))
    }

    /// The bytes of zip entry `name`, at most `limit` of them.
    fn entry(&mut self, name: &str, limit: u64) -> Result<Vec<u8>, WeightsError> {
        let fmt = |m: String| WeightsError::format(self.path, m);
        let mut e = self
            .zip
            .by_name(name)
            .map_err(|e| fmt(format!("zip entry {name}: {e}")))?;
        if e.size() > limit {
            return Err(fmt(format!(
                "zip entry {name} is {} bytes, larger than allowed",
                e.size()
            )));
        }
        let mut buf = Vec::with_capacity(e.size() as usize);
        e.read_to_end(&mut buf)
            .map_err(|er| fmt(format!("zip entry {name}: {er}")))?;
        Ok(buf)
    }

    /// The tensor `t` (named `name` in errors), its storage read and decoded on first use.
    fn tensor(&mut self, name: &str, t: &TensorRef) -> Result<HostTensor, WeightsError> {
        let path = self.path;
        let fmt = |m: String| WeightsError::format(path, m);
        if !self.storages.contains_key(&t.storage.key) {
            let entry = format!("{}data/{}", self.root, t.storage.key);
            let want = t
                .storage
                .numel
                .checked_mul(t.storage.dtype.size())
                .ok_or_else(|| fmt(format!("storage {} size overflows", t.storage.key)))?;
            let bytes = self.entry(&entry, want as u64)?;
            if bytes.len() != want {
                return Err(fmt(format!(
                    "storage {entry}: {} bytes, but the pickle declares {} elements of {} bytes",
                    bytes.len(),
                    t.storage.numel,
                    t.storage.dtype.size()
                )));
            }
            let vals = decode(&bytes, t.storage.dtype, self.little, &entry).map_err(fmt)?;
            self.storages.insert(t.storage.key.clone(), vals);
        }
        let st = self
            .storages
            .get(&t.storage.key)
            .ok_or_else(|| fmt(format!("storage {} was not read", t.storage.key)))?;
        let data = gather(st, t).map_err(|m| fmt(format!("tensor {name}: {m}")))?;
        Ok(HostTensor {
            shape: t.size.clone(),
            data,
        })
    }
}

/// Copies a strided view out of its storage, bounds-checked.
fn gather(st: &[f32], t: &TensorRef) -> Result<Vec<f32>, String> {
    let n = numel(&t.size).ok_or("shape overflows")?;
    if n == 0 {
        return Ok(Vec::new());
    }
    // largest index touched
    let mut max = t.offset;
    for (&s, &st_) in t.size.iter().zip(&t.stride) {
        max = (s - 1)
            .checked_mul(st_)
            .and_then(|x| max.checked_add(x))
            .ok_or("view overflows")?;
    }
    if max >= st.len() {
        return Err(format!(
            "view (offset {}, size {:?}, stride {:?}) reaches element {max} of a storage of {}",
            t.offset,
            t.size,
            t.stride,
            st.len()
        ));
    }
    let contiguous = {
        let mut exp = 1usize;
        let mut ok = true;
        for (&s, &sd) in t.size.iter().zip(&t.stride).rev() {
            if s != 1 && sd != exp {
                ok = false;
                break;
            }
            exp *= s;
        }
        ok
    };
    if contiguous {
        return Ok(st[t.offset..t.offset + n].to_vec());
    }
    let mut out = Vec::with_capacity(n);
    let rank = t.size.len();
    let mut idx = vec![0usize; rank];
    for _ in 0..n {
        let off: usize = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        out.push(st[off]);
        for d in (0..rank).rev() {
            idx[d] += 1;
            if idx[d] < t.size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

fn join(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

fn flatten(
    v: &Value,
    prefix: &str,
    out: &mut Vec<(String, TensorRef)>,
    depth: usize,
) -> Result<(), String> {
    if depth > 64 {
        return Err("checkpoint nesting deeper than 64 levels".into());
    }
    match v {
        Value::Tensor(t) => {
            if prefix.is_empty() {
                return Err(
                    "checkpoint is a single tensor, not a dict (no name to give it)".into(),
                );
            }
            out.push((prefix.to_string(), t.clone()));
        }
        Value::Dict(d) => {
            for (k, v) in d.borrow().iter() {
                let key = match k {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => {
                        tracing::debug!("skipping dict entry with non-string key {k:?}");
                        continue;
                    }
                };
                flatten(v, &join(prefix, &key), out, depth + 1)?;
            }
        }
        Value::List(l) => {
            for (i, v) in l.borrow().iter().enumerate() {
                flatten(v, &join(prefix, &i.to_string()), out, depth + 1)?;
            }
        }
        Value::Tuple(t) => {
            for (i, v) in t.iter().enumerate() {
                flatten(v, &join(prefix, &i.to_string()), out, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;
    use crate::pickle::StorageRef;

    #[test]
    fn gather_views() {
        let st: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let mk = |offset, size: Vec<usize>, stride: Vec<usize>| TensorRef {
            storage: StorageRef {
                key: "0".into(),
                dtype: DType::F32,
                numel: 12,
            },
            offset,
            size,
            stride,
        };
        // transpose of a 3x4 matrix
        assert_eq!(
            gather(&st, &mk(0, vec![4, 3], vec![1, 4])).unwrap(),
            vec![0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]
        );
        // row 1 (offset view)
        assert_eq!(
            gather(&st, &mk(4, vec![4], vec![1])).unwrap(),
            vec![4., 5., 6., 7.]
        );
        // column 2
        assert_eq!(
            gather(&st, &mk(2, vec![3], vec![4])).unwrap(),
            vec![2., 6., 10.]
        );
        // scalar, empty, out of bounds
        assert_eq!(gather(&st, &mk(11, vec![], vec![])).unwrap(), vec![11.]);
        assert!(
            gather(&st, &mk(0, vec![0, 5], vec![5, 1]))
                .unwrap()
                .is_empty()
        );
        assert!(gather(&st, &mk(1, vec![3, 4], vec![4, 1])).is_err());
    }
}
