//! Tensor files for pbip, without any deep-learning framework.
//!
//! * [`read_safetensors`] / [`write_safetensors_atomic`]: the Hugging Face safetensors format (with the
//!   `__metadata__` string map). Every floating/integer dtype is read and converted to `f32`.
//! * [`read_pth`]: PyTorch checkpoints written by `torch.save` (torch >= 1.6 zip format), decoded with a
//!   small **data-only** pickle interpreter: only tensor/storage rebuild functions and
//!   `collections.OrderedDict` are accepted, any other global is an error (no code is ever executed).
//!   [`read_pth_tensor`] reads a file holding one bare tensor (`torch.save(tensor, path)`).
//! * Name helpers: [`strip_prefix`], [`check_tensors`] (missing / unexpected / mis-shaped tensors are
//!   reported together in one [`WeightsError::NameMismatch`]).
//!
//! All tensors are returned as [`HostTensor`] (`f32` data, row-major / C-contiguous, with its shape).
//! Integer and bool tensors are converted to `f32` when the conversion is exact (|v| <= 2^24); a value
//! that would lose precision is an error naming the tensor.

mod names;
mod pickle;
mod pth;
mod st;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use names::{check_tensors, select_prefix, strip_prefix};
pub use pth::{read_pth, read_pth_tensor};
pub use st::{read_safetensors, write_safetensors_atomic};

/// A dense host tensor: row-major (C-contiguous) `f32` data and its shape.
///
/// Invariant (checked by [`HostTensor::new`]): `data.len() == shape.iter().product()`
/// (a 0-d tensor has `shape == []` and one element).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Elements in row-major order.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Builds a tensor, checking that `data.len()` equals the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, WeightsError> {
        let n = numel(&shape)
            .ok_or_else(|| WeightsError::Shape(format!("shape {shape:?} overflows")))?;
        if n != data.len() {
            return Err(WeightsError::Shape(format!(
                "shape {shape:?} needs {n} elements but {} were given",
                data.len()
            )));
        }
        Ok(Self { shape, data })
    }

    /// Number of elements (product of the shape; 1 for a 0-d tensor).
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// Tensors by name (sorted).
pub type TensorMap = BTreeMap<String, HostTensor>;

/// Product of a shape, `None` on overflow.
pub(crate) fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Errors of this crate. Every file error names the file.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// File concerned.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file content is not what its format requires.
    #[error("{path}: {msg}")]
    Format {
        /// File concerned.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// An in-memory tensor is inconsistent (shape vs data length).
    #[error("bad tensor: {0}")]
    Shape(String),
    /// Tensor names/shapes do not match what a model expects; every problem is listed.
    #[error("{context}: tensor names/shapes do not match:{}", describe_mismatch(.missing, .unexpected, .mis_shaped))]
    NameMismatch {
        /// What was being loaded (file and/or prefix).
        context: String,
        /// Expected names absent from the map.
        missing: Vec<String>,
        /// Names in the map that nothing expects.
        unexpected: Vec<String>,
        /// (name, expected shape, found shape).
        mis_shaped: Vec<(String, Vec<usize>, Vec<usize>)>,
    },
}

fn describe_mismatch(
    missing: &[String],
    unexpected: &[String],
    mis_shaped: &[(String, Vec<usize>, Vec<usize>)],
) -> String {
    let mut s = String::new();
    if !missing.is_empty() {
        s.push_str(&format!(
            "\n  missing ({}): {}",
            missing.len(),
            missing.join(", ")
        ));
    }
    if !unexpected.is_empty() {
        s.push_str(&format!(
            "\n  unexpected ({}): {}",
            unexpected.len(),
            unexpected.join(", ")
        ));
    }
    for (n, e, f) in mis_shaped {
        s.push_str(&format!("\n  mis-shaped: {n}: expected {e:?}, found {f:?}"));
    }
    s
}

impl WeightsError {
    pub(crate) fn format(path: &Path, msg: impl Into<String>) -> Self {
        WeightsError::Format {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        WeightsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Reads a tensor file by content: safetensors, or a PyTorch zip checkpoint (`.pth`/`.bin`/`.pt`).
/// Safetensors metadata is returned; a `.pth` gives an empty metadata map.
pub fn read_tensors(path: &Path) -> Result<(TensorMap, BTreeMap<String, String>), WeightsError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| WeightsError::io(path, e))?;
    let mut magic = [0u8; 9];
    let n = f.read(&mut magic).map_err(|e| WeightsError::io(path, e))?;
    drop(f);
    // safetensors: u64 header length, then the JSON header. Checked first: a header length of
    // 0x280..0x2ff starts with the bytes of a pickle protocol-2 opcode (0x80 0x02).
    let safetensors = n == 9 && magic[8] == b'{';
    if !safetensors && n >= 2 && (magic[..2] == *b"PK" || magic[0] == 0x80) {
        Ok((read_pth(path)?, BTreeMap::new()))
    } else {
        read_safetensors(path)
    }
}

/// Converts half-precision bits to f32 (exact).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if man == 0 {
            sign
        } else {
            // subnormal: value = man * 2^-24
            let v = man as f32 * f32::from_bits(0x3380_0000); // 2^-24
            return if sign != 0 { -v } else { v };
        }
    } else if exp == 0x1f {
        sign | 0x7f80_0000 | (man << 13)
    } else {
        sign | ((exp + 127 - 15) << 23) | (man << 13)
    };
    f32::from_bits(bits)
}

/// Converts bfloat16 bits to f32 (exact).
pub(crate) fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Element types found in tensor files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    pub(crate) fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }
}

const MAX_EXACT_INT: f64 = 16_777_216.0; // 2^24

/// Decodes `bytes` (a whole number of elements) to f32. `little` = byte order.
/// `what` names the tensor in errors (integer values that f32 cannot hold exactly).
pub(crate) fn decode(
    bytes: &[u8],
    dt: DType,
    little: bool,
    what: &str,
) -> Result<Vec<f32>, String> {
    let sz = dt.size();
    if !bytes.len().is_multiple_of(sz) {
        return Err(format!(
            "{what}: {} bytes is not a multiple of the element size {sz}",
            bytes.len()
        ));
    }
    let mut out = Vec::with_capacity(bytes.len() / sz);
    macro_rules! rd {
        ($t:ty, $c:expr) => {{
            let mut a = [0u8; std::mem::size_of::<$t>()];
            a.copy_from_slice($c);
            if little {
                <$t>::from_le_bytes(a)
            } else {
                <$t>::from_be_bytes(a)
            }
        }};
    }
    let check = |v: f64| -> Result<f32, String> {
        if v.abs() > MAX_EXACT_INT {
            Err(format!(
                "{what}: integer value {v} cannot be represented exactly as f32"
            ))
        } else {
            Ok(v as f32)
        }
    };
    for c in bytes.chunks_exact(sz) {
        let v = match dt {
            DType::F64 => rd!(f64, c) as f32,
            DType::F32 => rd!(f32, c),
            DType::F16 => f16_to_f32(rd!(u16, c)),
            DType::BF16 => bf16_to_f32(rd!(u16, c)),
            DType::I64 => check(rd!(i64, c) as f64)?,
            DType::I32 => check(rd!(i32, c) as f64)?,
            DType::I16 => rd!(i16, c) as f32,
            DType::I8 => c[0] as i8 as f32,
            DType::U8 => c[0] as f32,
            DType::Bool => {
                if c[0] != 0 {
                    1.0
                } else {
                    0.0
                }
            }
        };
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversions() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc040), -3.0);
    }

    #[test]
    fn host_tensor_checks_len() {
        assert!(HostTensor::new(vec![2, 3], vec![0.0; 6]).is_ok());
        assert!(HostTensor::new(vec![2, 3], vec![0.0; 5]).is_err());
        assert!(HostTensor::new(vec![], vec![1.0]).is_ok());
    }

    #[test]
    fn big_int_is_error() {
        let b = (1i64 << 40).to_le_bytes();
        assert!(decode(&b, DType::I64, true, "x").is_err());
        let b = 5i64.to_be_bytes();
        assert_eq!(decode(&b, DType::I64, false, "x").unwrap(), vec![5.0]);
    }
}

#[cfg(test)]
mod sniff_tests {
    #[test]
    fn safetensors_whose_header_length_looks_like_a_pickle_opcode() {
        // header length 640 = 0x280: first bytes 0x80 0x02, like a protocol-2 pickle
        let mut header = br#"{"__metadata__":{"k":"v"}}"#.to_vec();
        header.resize(640, b' ');
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        assert_eq!(&bytes[..2], &[0x80, 0x02]);
        bytes.extend_from_slice(&header);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let (tensors, meta) = super::read_tensors(&path).unwrap();
        assert!(tensors.is_empty());
        assert_eq!(meta.get("k").map(String::as_str), Some("v"));
    }
}
