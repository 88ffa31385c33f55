//! PBIP-fork prototype files with an object (`'O'`) field: numpy pickles the whole array.
//!
//! The pickle is parsed with `serde-pickle` (no code execution; unresolved globals such as
//! `numpy._core.multiarray._reconstruct` are replaced by `None`). What remains is the
//! `ndarray.__setstate__` state `(1, shape, dtype_state, is_fortran, [row tuples...])`, one tuple
//! per record in dtype field order. Only that shape is accepted.

use serde_pickle::{DeOptions, Value};

use crate::npy::{Column, Descr, NpyHeader, ScalarType};

/// Upper bound on pickled payload size we try to parse (1 GiB).
const MAX_PICKLE_BYTES: usize = 1 << 30;

fn describe(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::I64(_) | Value::Int(_) => "int",
        Value::F64(_) => "float",
        Value::Bytes(_) => "bytes",
        Value::String(_) => "str",
        Value::List(_) => "list",
        Value::Tuple(_) => "tuple",
        Value::Set(_) | Value::FrozenSet(_) => "set",
        Value::Dict(_) => "dict",
    }
}

/// Decodes the pickled record array that follows the header into named columns.
pub(crate) fn decode_pickled_records(
    header: &NpyHeader,
    data: &[u8],
) -> Result<Vec<(String, Column)>, String> {
    let Descr::Record { fields, .. } = &header.descr else {
        return Err("only structured arrays with an object field are supported (plain object arrays are not)".into());
    };
    if header.shape.len() != 1 {
        return Err(format!(
            "expected a 1-D record array, header shape is {:?}",
            header.shape
        ));
    }
    if data.is_empty() {
        return Err("truncated data: no pickle payload after the header".into());
    }
    if data.len() > MAX_PICKLE_BYTES {
        return Err(format!(
            "pickle payload of {} bytes is too large",
            data.len()
        ));
    }
    let value = serde_pickle::value_from_slice(data, DeOptions::new().replace_unresolved_globals())
        .map_err(|e| format!("cannot parse the pickle payload: {e}"))?;

    let Value::Tuple(state) = value else {
        return Err(format!(
            "unsupported pickle content: expected the numpy array state tuple, found a {}",
            describe(&value)
        ));
    };
    if state.len() != 5 {
        return Err(format!(
            "unsupported pickle content: numpy array state has {} items, expected 5",
            state.len()
        ));
    }
    if state[0] != Value::I64(1) {
        return Err("unsupported pickle content: unknown numpy array state version".into());
    }
    let Value::Tuple(shape) = &state[1] else {
        return Err("unsupported pickle content: array shape is not a tuple".into());
    };
    let n = match shape.as_slice() {
        [Value::I64(n)] if *n >= 0 => *n as usize,
        _ => {
            return Err(format!(
                "unsupported pickle content: expected a 1-D shape, found {shape:?}"
            ));
        }
    };
    if n != header.shape[0] {
        return Err(format!(
            "shape mismatch: header says {} records, pickle holds {n}",
            header.shape[0]
        ));
    }
    // The dtype state carries the field names at index 3: check they agree with the header.
    if let Value::Tuple(dt) = &state[2]
        && let Some(Value::Tuple(names)) = dt.get(3)
    {
        let pickled: Vec<&str> = names
            .iter()
            .filter_map(|v| {
                if let Value::String(s) = v {
                    Some(s.as_str())
                } else {
                    None
                }
            })
            .collect();
        let header_names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
        if pickled != header_names {
            return Err(format!(
                "field names in the pickle {pickled:?} differ from the header {header_names:?}"
            ));
        }
    }
    if !matches!(state[3], Value::Bool(false)) {
        return Err("unsupported pickle content: Fortran-ordered or malformed array state".into());
    }
    let Value::List(rows) = &state[4] else {
        return Err(format!(
            "unsupported pickle content: expected the record list, found {}",
            describe(&state[4])
        ));
    };
    if rows.len() != n {
        return Err(format!(
            "shape mismatch: shape says {n} records, the list holds {}",
            rows.len()
        ));
    }

    let mut cols: Vec<Column> = fields
        .iter()
        .map(|f| match f.ty {
            ScalarType::Float { .. } => Column::Float(Vec::with_capacity(n)),
            ScalarType::Int { .. } | ScalarType::Bool => Column::Int(Vec::with_capacity(n)),
            _ => Column::Str(Vec::with_capacity(n)),
        })
        .collect();
    for (row, r) in rows.iter().enumerate() {
        let Value::Tuple(items) = r else {
            return Err(format!(
                "record {row} is a {}, expected a tuple",
                describe(r)
            ));
        };
        if items.len() != fields.len() {
            return Err(format!(
                "record {row} has {} values, the dtype has {} fields",
                items.len(),
                fields.len()
            ));
        }
        for ((f, col), v) in fields.iter().zip(cols.iter_mut()).zip(items) {
            let bad = || {
                format!(
                    "record {row}, field '{}': unexpected {} value",
                    f.name,
                    describe(v)
                )
            };
            match col {
                Column::Int(out) => match v {
                    Value::I64(x) => out.push(*x),
                    Value::Bool(b) => out.push(i64::from(*b)),
                    _ => return Err(bad()),
                },
                Column::Float(out) => match v {
                    Value::F64(x) => out.push(*x),
                    Value::I64(x) => out.push(*x as f64),
                    _ => return Err(bad()),
                },
                Column::Str(out) => match v {
                    Value::String(s) => out.push(s.clone()),
                    Value::Bytes(b) => out.push(String::from_utf8(b.clone()).map_err(|_| {
                        format!("record {row}, field '{}': bytes are not UTF-8", f.name)
                    })?),
                    _ => return Err(bad()),
                },
            }
        }
    }
    Ok(fields
        .iter()
        .zip(cols)
        .filter(|(f, _)| !f.name.is_empty() && !matches!(f.ty, ScalarType::Void { .. }))
        .map(|(f, c)| (f.name.clone(), c))
        .collect())
}
