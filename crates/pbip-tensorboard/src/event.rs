//! The `Event` message: in-memory form, encoding and decoding.

use crate::proto::{
    Field, Fields, as_bytes, as_f32, as_f64, as_str, as_varint, put_bytes, put_f32, put_f64,
    put_int,
};

/// TensorFlow `DT_FLOAT`.
const DT_FLOAT: u64 = 1;
/// TensorFlow `DT_DOUBLE`.
const DT_DOUBLE: u64 = 2;
/// TensorFlow `DT_STRING`.
const DT_STRING: u64 = 7;

/// One TensorBoard event record.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Seconds since the Unix epoch when the event was written.
    pub wall_time_secs: f64,
    /// Global step (0 when absent from the record).
    pub step: i64,
    /// What the event carries.
    pub what: EventWhat,
}

/// The `what` oneof of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum EventWhat {
    /// `file_version` (the first event of every file, e.g. `"brain.Event:2"`).
    FileVersion(String),
    /// A summary with its values.
    Summary(Vec<SummaryValue>),
    /// A oneof member this crate does not decode (graph, log message, session log, ...):
    /// its field number.
    Other(u32),
    /// No `what` member at all.
    Empty,
}

/// One `Summary.Value`.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryValue {
    /// The tag (series name).
    pub tag: String,
    /// The value.
    pub value: Value,
    /// `metadata.plugin_data.plugin_name` when present (e.g. `"text"`, `"scalars"`).
    pub plugin_name: Option<String>,
}

/// The value of a summary entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `simple_value` (how PyTorch / tensorboardX write scalars).
    Simple(f32),
    /// A scalar tensor of float or double (how TF2 `tf.summary.scalar` writes scalars).
    TensorScalar(f64),
    /// A string tensor (text plugin); the first string.
    Text(String),
    /// Any other value kind (image, histogram, audio, other tensors).
    Other,
}

impl Event {
    /// The value as `f64` for scalar entries (`Simple` or `TensorScalar`) of the given tag.
    pub fn scalar(&self, tag: &str) -> Option<f64> {
        match &self.what {
            EventWhat::Summary(vals) => {
                vals.iter()
                    .find(|v| v.tag == tag)
                    .and_then(|v| match v.value {
                        Value::Simple(x) => Some(x as f64),
                        Value::TensorScalar(x) => Some(x),
                        _ => None,
                    })
            }
            _ => None,
        }
    }

    /// Encodes the event as protobuf bytes (proto3 canonical form, as the Python runtime writes).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        if self.wall_time_secs.to_bits() != 0 {
            put_f64(&mut out, 1, self.wall_time_secs);
        }
        if self.step != 0 {
            put_int(&mut out, 2, self.step);
        }
        match &self.what {
            EventWhat::FileVersion(s) => put_bytes(&mut out, 3, s.as_bytes()),
            EventWhat::Summary(vals) => {
                let mut summary = Vec::new();
                for v in vals {
                    put_bytes(&mut summary, 1, &encode_value(v));
                }
                put_bytes(&mut out, 5, &summary);
            }
            EventWhat::Other(_) | EventWhat::Empty => {}
        }
        out
    }

    /// Decodes one event; the error is a description of what is malformed.
    pub(crate) fn decode(buf: &[u8]) -> Result<Event, String> {
        let mut ev = Event {
            wall_time_secs: 0.0,
            step: 0,
            what: EventWhat::Empty,
        };
        let mut f = Fields::new(buf);
        while let Some((num, val)) = f.next_field()? {
            match num {
                1 => ev.wall_time_secs = as_f64(val, "Event.wall_time")?,
                2 => ev.step = as_varint(val, "Event.step")? as i64,
                3 => ev.what = EventWhat::FileVersion(as_str(val, "Event.file_version")?),
                5 => ev.what = EventWhat::Summary(decode_summary(as_bytes(val, "Event.summary")?)?),
                4 | 6..=10 => ev.what = EventWhat::Other(num),
                _ => {}
            }
        }
        Ok(ev)
    }
}

fn encode_value(v: &SummaryValue) -> Vec<u8> {
    let mut out = Vec::new();
    put_bytes(&mut out, 1, v.tag.as_bytes());
    match &v.value {
        Value::Simple(x) => put_f32(&mut out, 2, *x),
        Value::TensorScalar(x) => {
            let mut t = Vec::new();
            put_int(&mut t, 1, DT_DOUBLE as i64);
            put_bytes(&mut t, 2, &[]); // scalar shape: no dims
            put_f64_packed(&mut t, 6, *x);
            put_bytes(&mut out, 8, &t);
        }
        Value::Text(s) => {
            let mut t = Vec::new();
            put_int(&mut t, 1, DT_STRING as i64);
            let mut dim = Vec::new();
            put_int(&mut dim, 1, 1);
            let mut shape = Vec::new();
            put_bytes(&mut shape, 2, &dim);
            put_bytes(&mut t, 2, &shape);
            put_bytes(&mut t, 8, s.as_bytes());
            put_bytes(&mut out, 8, &t);
        }
        Value::Other => {}
    }
    if let Some(p) = &v.plugin_name {
        let mut pd = Vec::new();
        if !p.is_empty() {
            put_bytes(&mut pd, 1, p.as_bytes());
        }
        let mut md = Vec::new();
        put_bytes(&mut md, 1, &pd);
        put_bytes(&mut out, 9, &md);
    }
    out
}

fn put_f64_packed(out: &mut Vec<u8>, field: u32, x: f64) {
    put_bytes(out, field, &x.to_le_bytes());
}

fn decode_summary(buf: &[u8]) -> Result<Vec<SummaryValue>, String> {
    let mut vals = Vec::new();
    let mut f = Fields::new(buf);
    while let Some((num, val)) = f.next_field()? {
        if num == 1 {
            vals.push(decode_value(as_bytes(val, "Summary.value")?)?);
        }
    }
    Ok(vals)
}

fn decode_value(buf: &[u8]) -> Result<SummaryValue, String> {
    let mut tag = String::new();
    let mut value = Value::Other;
    let mut plugin_name = None;
    let mut f = Fields::new(buf);
    while let Some((num, val)) = f.next_field()? {
        match num {
            1 => tag = as_str(val, "Summary.Value.tag")?,
            2 => value = Value::Simple(as_f32(val, "Summary.Value.simple_value")?),
            8 => value = decode_tensor(as_bytes(val, "Summary.Value.tensor")?)?,
            9 => plugin_name = decode_metadata(as_bytes(val, "Summary.Value.metadata")?)?,
            3..=6 => value = Value::Other,
            _ => {}
        }
    }
    Ok(SummaryValue {
        tag,
        value,
        plugin_name,
    })
}

fn decode_metadata(buf: &[u8]) -> Result<Option<String>, String> {
    let mut name = None;
    let mut f = Fields::new(buf);
    while let Some((num, val)) = f.next_field()? {
        if num == 1 {
            let mut g = Fields::new(as_bytes(val, "SummaryMetadata.plugin_data")?);
            let mut n = String::new();
            while let Some((m, v)) = g.next_field()? {
                if m == 1 {
                    n = as_str(v, "PluginData.plugin_name")?;
                }
            }
            name = Some(n);
        }
    }
    Ok(name)
}

/// Collects repeated floats (packed or not) of one field into `out`.
fn push_floats(val: Field<'_>, width: usize, out: &mut Vec<f64>, name: &str) -> Result<(), String> {
    match (val, width) {
        (Field::I32(a), 4) => out.push(f32::from_le_bytes(a) as f64),
        (Field::I64(a), 8) => out.push(f64::from_le_bytes(a)),
        (Field::Len(b), w) => {
            if b.len() % w != 0 {
                return Err(format!(
                    "{name}: packed length {} not a multiple of {w}",
                    b.len()
                ));
            }
            for c in b.chunks_exact(w) {
                out.push(if w == 4 {
                    f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64
                } else {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                });
            }
        }
        _ => return Err(format!("{name}: unexpected wire type")),
    }
    Ok(())
}

fn decode_tensor(buf: &[u8]) -> Result<Value, String> {
    let mut dtype = 0u64;
    let mut content: &[u8] = &[];
    let mut floats = Vec::new();
    let mut strings: Vec<&[u8]> = Vec::new();
    let mut f = Fields::new(buf);
    while let Some((num, val)) = f.next_field()? {
        match num {
            1 => dtype = as_varint(val, "TensorProto.dtype")?,
            4 => content = as_bytes(val, "TensorProto.tensor_content")?,
            5 => push_floats(val, 4, &mut floats, "TensorProto.float_val")?,
            6 => push_floats(val, 8, &mut floats, "TensorProto.double_val")?,
            8 => strings.push(as_bytes(val, "TensorProto.string_val")?),
            _ => {}
        }
    }
    Ok(match dtype {
        DT_STRING => match strings.first() {
            Some(s) => Value::Text(
                String::from_utf8(s.to_vec())
                    .map_err(|_| "TensorProto.string_val: not UTF-8".to_string())?,
            ),
            None => Value::Other,
        },
        DT_FLOAT | DT_DOUBLE => {
            let w = if dtype == DT_FLOAT { 4 } else { 8 };
            if floats.is_empty() && !content.is_empty() {
                push_floats(
                    Field::Len(content),
                    w,
                    &mut floats,
                    "TensorProto.tensor_content",
                )?;
            }
            if floats.len() == 1 {
                Value::TensorScalar(floats[0])
            } else {
                Value::Other
            }
        }
        _ => Value::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_all_kinds() {
        let evs = [
            Event {
                wall_time_secs: 1.5,
                step: 0,
                what: EventWhat::FileVersion("brain.Event:2".into()),
            },
            Event {
                wall_time_secs: 2.0,
                step: -3,
                what: EventWhat::Summary(vec![
                    SummaryValue {
                        tag: "a".into(),
                        value: Value::Simple(0.25),
                        plugin_name: None,
                    },
                    SummaryValue {
                        tag: "b".into(),
                        value: Value::TensorScalar(-7.5),
                        plugin_name: Some("scalars".into()),
                    },
                    SummaryValue {
                        tag: "t".into(),
                        value: Value::Text("x<y".into()),
                        plugin_name: Some("text".into()),
                    },
                ]),
            },
        ];
        for e in evs {
            assert_eq!(Event::decode(&e.encode()).unwrap(), e);
        }
    }

    #[test]
    fn tf2_style_scalar_tensor_content() {
        // A TF2-style scalar: DT_FLOAT tensor with 4-byte tensor_content and empty shape.
        let mut t = Vec::new();
        put_int(&mut t, 1, 1);
        put_bytes(&mut t, 2, &[]);
        put_bytes(&mut t, 4, &3.5f32.to_le_bytes());
        let mut v = Vec::new();
        put_bytes(&mut v, 1, b"loss");
        put_bytes(&mut v, 8, &t);
        let mut s = Vec::new();
        put_bytes(&mut s, 1, &v);
        let mut e = Vec::new();
        put_f64(&mut e, 1, 10.0);
        put_int(&mut e, 2, 4);
        put_bytes(&mut e, 5, &s);
        let ev = Event::decode(&e).unwrap();
        assert_eq!(ev.step, 4);
        assert_eq!(ev.scalar("loss"), Some(3.5));
    }
}
