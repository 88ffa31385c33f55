//! Minimal protobuf wire-format encoding/decoding for the TensorBoard messages we use.
//!
//! Field numbers (tensorflow/core/util/event.proto, framework/summary.proto, tensor.proto):
//! `Event { double wall_time = 1; int64 step = 2; oneof what { string file_version = 3;
//! Summary summary = 5; ... } }`, `Summary { repeated Value value = 1; }`,
//! `Summary.Value { string tag = 1; float simple_value = 2; TensorProto tensor = 8;
//! SummaryMetadata metadata = 9; ... }`, `SummaryMetadata { PluginData plugin_data = 1; }`,
//! `PluginData { string plugin_name = 1; bytes content = 2; }`,
//! `TensorProto { DataType dtype = 1; TensorShapeProto tensor_shape = 2; bytes tensor_content = 4;
//! repeated float float_val = 5; repeated double double_val = 6; repeated bytes string_val = 8; }`,
//! `TensorShapeProto { repeated Dim dim = 2; } Dim { int64 size = 1; }`.
//!
//! Encoding follows proto3 (fields in field-number order, default-valued singular fields
//! omitted, oneof members always written), which is what the Python protobuf runtime does.

/// Wire type of a field.
pub(crate) const WT_VARINT: u8 = 0;
pub(crate) const WT_I64: u8 = 1;
pub(crate) const WT_LEN: u8 = 2;
pub(crate) const WT_I32: u8 = 5;

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_key(out: &mut Vec<u8>, field: u32, wt: u8) {
    put_varint(out, ((field as u64) << 3) | wt as u64);
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    put_key(out, field, WT_LEN);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

pub(crate) fn put_f64(out: &mut Vec<u8>, field: u32, v: f64) {
    put_key(out, field, WT_I64);
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_f32(out: &mut Vec<u8>, field: u32, v: f32) {
    put_key(out, field, WT_I32);
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_int(out: &mut Vec<u8>, field: u32, v: i64) {
    put_key(out, field, WT_VARINT);
    put_varint(out, v as u64);
}

/// A decoded field value.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Field<'a> {
    Varint(u64),
    I64([u8; 8]),
    Len(&'a [u8]),
    I32([u8; 4]),
}

/// Iterates over the fields of one message; every error is a message string.
pub(crate) struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(format!("varint truncated at byte {}", self.pos));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(format!("varint overflows 64 bits at byte {}", self.pos - 1));
            }
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("varint longer than 10 bytes at byte {}", self.pos))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "field of {n} bytes at byte {} runs past the end of a {}-byte message",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Next `(field number, value)`, `None` at the end of the message.
    pub(crate) fn next_field(&mut self) -> Result<Option<(u32, Field<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field =
            u32::try_from(key >> 3).map_err(|_| format!("field number {} too large", key >> 3))?;
        if field == 0 {
            return Err("field number 0".to_string());
        }
        let v = match (key & 7) as u8 {
            WT_VARINT => Field::Varint(self.varint()?),
            WT_I64 => {
                let s = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(s);
                Field::I64(a)
            }
            WT_LEN => {
                let n = self.varint()?;
                let n = usize::try_from(n).map_err(|_| format!("length {n} too large"))?;
                Field::Len(self.take(n)?)
            }
            WT_I32 => {
                let s = self.take(4)?;
                let mut a = [0u8; 4];
                a.copy_from_slice(s);
                Field::I32(a)
            }
            wt => return Err(format!("unsupported wire type {wt} for field {field}")),
        };
        Ok(Some((field, v)))
    }
}

pub(crate) fn as_f64(f: Field<'_>, name: &str) -> Result<f64, String> {
    match f {
        Field::I64(a) => Ok(f64::from_le_bytes(a)),
        _ => Err(format!("{name}: expected a 64-bit double")),
    }
}

pub(crate) fn as_f32(f: Field<'_>, name: &str) -> Result<f32, String> {
    match f {
        Field::I32(a) => Ok(f32::from_le_bytes(a)),
        _ => Err(format!("{name}: expected a 32-bit float")),
    }
}

pub(crate) fn as_varint(f: Field<'_>, name: &str) -> Result<u64, String> {
    match f {
        Field::Varint(v) => Ok(v),
        _ => Err(format!("{name}: expected a varint")),
    }
}

pub(crate) fn as_bytes<'a>(f: Field<'a>, name: &str) -> Result<&'a [u8], String> {
    match f {
        Field::Len(s) => Ok(s),
        _ => Err(format!("{name}: expected a length-delimited field")),
    }
}

pub(crate) fn as_str(f: Field<'_>, name: &str) -> Result<String, String> {
    let b = as_bytes(f, name)?;
    String::from_utf8(b.to_vec()).map_err(|_| format!("{name}: not valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_known_encodings() {
        // Examples from the protobuf encoding guide.
        let mut v = Vec::new();
        put_varint(&mut v, 150);
        assert_eq!(v, [0x96, 0x01]);
        let mut v = Vec::new();
        put_int(&mut v, 2, -1);
        assert_eq!(v.len(), 11); // key + 10 bytes
        let mut f = Fields::new(&v);
        let (n, val) = f.next_field().unwrap().unwrap();
        assert_eq!(n, 2);
        assert_eq!(as_varint(val, "x").unwrap() as i64, -1);
        assert!(f.next_field().unwrap().is_none());
    }

    #[test]
    fn truncated_and_bad_input_errors() {
        assert!(Fields::new(&[0x80]).next_field().is_err());
        assert!(Fields::new(&[0x0a, 0x05, 1, 2]).next_field().is_err());
        assert!(Fields::new(&[0x0b]).next_field().is_err()); // wire type 3 (group)
        assert!(Fields::new(&[0x00, 0x01]).next_field().is_err()); // field 0
        assert!(Fields::new(&[0x09, 1, 2, 3]).next_field().is_err()); // short double
    }
}
