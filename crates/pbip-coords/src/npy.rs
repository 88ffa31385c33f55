//! Minimal, generic `.npy` reader/writer: header parsing (versions 1, 2, 3), dtype descr
//! parsing (simple and structured), column decoding and numpy-identical header writing.
//!
//! Internal helpers return `Result<_, String>`; the caller wraps the message with the file path.

/// A Python literal as it appears in an `.npy` header.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PyLit {
    Str(String),
    Int(i64),
    Bool(bool),
    None,
    List(Vec<PyLit>),
    Tuple(Vec<PyLit>),
    Dict(Vec<(PyLit, PyLit)>),
}

/// Recursive-descent parser for the Python literal subset numpy writes in headers.
struct LitParser<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    depth: usize,
}

const MAX_LIT_DEPTH: usize = 32;

impl<'a> LitParser<'a> {
    fn new(s: &'a str) -> Self {
        LitParser {
            chars: s.chars().peekable(),
            depth: 0,
        }
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.chars.peek() {
            if c.is_whitespace() {
                self.chars.next();
            } else {
                break;
            }
        }
    }

    fn expect(&mut self, want: char) -> Result<(), String> {
        self.skip_ws();
        match self.chars.next() {
            Some(c) if c == want => Ok(()),
            Some(c) => Err(format!("expected '{want}' but found '{c}'")),
            None => Err(format!("expected '{want}' but the header ended")),
        }
    }

    fn value(&mut self) -> Result<PyLit, String> {
        self.skip_ws();
        self.depth += 1;
        if self.depth > MAX_LIT_DEPTH {
            return Err("header literal nested too deeply".into());
        }
        let out = match self.chars.peek().copied() {
            None => Err("header ended where a value was expected".into()),
            Some('\'') | Some('"') => self.string().map(PyLit::Str),
            Some('{') => self.dict(),
            Some('[') => self.seq('[', ']').map(|(v, _)| PyLit::List(v)),
            Some('(') => self.seq('(', ')').map(|(v, trailing_comma)| {
                // `(x)` is just x in Python; `(x,)` is a 1-tuple.
                if v.len() == 1 && !trailing_comma {
                    v.into_iter().next().unwrap_or(PyLit::None)
                } else {
                    PyLit::Tuple(v)
                }
            }),
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' => self.int(),
            Some(c) if c.is_alphabetic() => self.word(),
            Some(c) => Err(format!("unexpected character '{c}' in header")),
        };
        self.depth -= 1;
        out
    }

    fn string(&mut self) -> Result<String, String> {
        let quote = self.chars.next().ok_or("header ended inside a string")?;
        let mut s = String::new();
        loop {
            match self.chars.next() {
                None => return Err("unterminated string in header".into()),
                Some('\\') => match self.chars.next() {
                    Some('n') => s.push('\n'),
                    Some('t') => s.push('\t'),
                    Some('\\') => s.push('\\'),
                    Some('\'') => s.push('\''),
                    Some('"') => s.push('"'),
                    Some(c) => return Err(format!("unsupported escape '\\{c}' in header string")),
                    None => return Err("unterminated string in header".into()),
                },
                Some(c) if c == quote => return Ok(s),
                Some(c) => s.push(c),
            }
        }
    }

    fn int(&mut self) -> Result<PyLit, String> {
        let mut s = String::new();
        if let Some(&c) = self.chars.peek()
            && (c == '-' || c == '+')
        {
            s.push(c);
            self.chars.next();
        }
        while let Some(&c) = self.chars.peek() {
            if c.is_ascii_digit() {
                s.push(c);
                self.chars.next();
            } else {
                break;
            }
        }
        // numpy may write shapes as `3L` in very old (Python 2) files.
        if let Some(&'L') = self.chars.peek() {
            self.chars.next();
        }
        s.parse::<i64>()
            .map(PyLit::Int)
            .map_err(|_| format!("invalid integer '{s}' in header"))
    }

    fn word(&mut self) -> Result<PyLit, String> {
        let mut s = String::new();
        while let Some(&c) = self.chars.peek() {
            if c.is_alphanumeric() || c == '_' {
                s.push(c);
                self.chars.next();
            } else {
                break;
            }
        }
        match s.as_str() {
            "True" => Ok(PyLit::Bool(true)),
            "False" => Ok(PyLit::Bool(false)),
            "None" => Ok(PyLit::None),
            _ => Err(format!("unsupported word '{s}' in header")),
        }
    }

    /// Parses a comma separated sequence; returns the items and whether a trailing comma was seen.
    fn seq(&mut self, open: char, close: char) -> Result<(Vec<PyLit>, bool), String> {
        self.expect(open)?;
        let mut items = Vec::new();
        let mut trailing = false;
        loop {
            self.skip_ws();
            if self.chars.peek() == Some(&close) {
                self.chars.next();
                return Ok((items, trailing));
            }
            items.push(self.value()?);
            self.skip_ws();
            match self.chars.next() {
                Some(',') => trailing = true,
                Some(c) if c == close => return Ok((items, false)),
                Some(c) => return Err(format!("expected ',' or '{close}' but found '{c}'")),
                None => return Err(format!("header ended before '{close}'")),
            }
        }
    }

    fn dict(&mut self) -> Result<PyLit, String> {
        self.expect('{')?;
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.chars.peek() == Some(&'}') {
                self.chars.next();
                return Ok(PyLit::Dict(items));
            }
            let k = self.value()?;
            self.expect(':')?;
            let v = self.value()?;
            items.push((k, v));
            self.skip_ws();
            match self.chars.next() {
                Some(',') => {}
                Some('}') => return Ok(PyLit::Dict(items)),
                Some(c) => return Err(format!("expected ',' or '}}' but found '{c}'")),
                None => return Err("header ended inside the dict".into()),
            }
        }
    }
}

/// Parses a full Python literal (used for the header dict).
pub(crate) fn parse_py_literal(s: &str) -> Result<PyLit, String> {
    let mut p = LitParser::new(s);
    let v = p.value()?;
    p.skip_ws();
    if let Some(c) = p.chars.next() {
        return Err(format!(
            "unexpected trailing character '{c}' after the header dict"
        ));
    }
    Ok(v)
}

/// Element type of an array or of one structured field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ScalarType {
    /// Integer of `size` bytes.
    Int {
        size: usize,
        signed: bool,
        big_endian: bool,
    },
    /// IEEE float of `size` bytes (4 or 8).
    Float { size: usize, big_endian: bool },
    /// numpy bool (1 byte).
    Bool,
    /// Fixed-width unicode, `chars` UTF-32 code units.
    Unicode { chars: usize, big_endian: bool },
    /// Fixed-width bytes.
    Bytes { len: usize },
    /// Python object (pickled array).
    Object,
    /// Raw void bytes (padding).
    Void { len: usize },
}

impl ScalarType {
    pub(crate) fn size(&self) -> usize {
        match *self {
            ScalarType::Int { size, .. } | ScalarType::Float { size, .. } => size,
            ScalarType::Bool => 1,
            ScalarType::Unicode { chars, .. } => chars * 4,
            ScalarType::Bytes { len } | ScalarType::Void { len } => len,
            ScalarType::Object => 8,
        }
    }

    /// Parses a numpy type string such as `<i8`, `|u1`, `>f4`, `<U64`, `|S10`, `|O`.
    pub(crate) fn parse(s: &str) -> Result<ScalarType, String> {
        let mut chars = s.chars();
        let (order, rest) = match s.chars().next() {
            Some(c @ ('<' | '>' | '|' | '=')) => {
                chars.next();
                (c, chars.as_str())
            }
            _ => ('=', s),
        };
        let big_endian = order == '>';
        let mut rc = rest.chars();
        let kind = rc
            .next()
            .ok_or_else(|| format!("empty dtype string '{s}'"))?;
        let num = rc.as_str();
        let parse_num = |what: &str| -> Result<usize, String> {
            num.parse::<usize>()
                .map_err(|_| format!("unsupported dtype '{s}' (bad {what} '{num}')"))
        };
        match kind {
            'i' | 'u' => {
                let size = parse_num("size")?;
                if ![1, 2, 4, 8].contains(&size) {
                    return Err(format!("unsupported integer dtype '{s}'"));
                }
                Ok(ScalarType::Int {
                    size,
                    signed: kind == 'i',
                    big_endian,
                })
            }
            'f' => {
                let size = parse_num("size")?;
                if size != 4 && size != 8 {
                    return Err(format!(
                        "unsupported float dtype '{s}' (only 4- and 8-byte floats are supported)"
                    ));
                }
                Ok(ScalarType::Float { size, big_endian })
            }
            'b' => {
                if num.is_empty() || num == "1" {
                    Ok(ScalarType::Bool)
                } else {
                    Err(format!("unsupported bool dtype '{s}'"))
                }
            }
            'U' => {
                let chars = parse_num("length")?;
                if chars == 0 || chars > (1 << 20) {
                    return Err(format!("unsupported unicode width in dtype '{s}'"));
                }
                Ok(ScalarType::Unicode { chars, big_endian })
            }
            'S' | 'a' => {
                let len = parse_num("length")?;
                if len == 0 || len > (1 << 22) {
                    return Err(format!("unsupported bytes width in dtype '{s}'"));
                }
                Ok(ScalarType::Bytes { len })
            }
            'V' => {
                let len = parse_num("length")?;
                if len > (1 << 22) {
                    return Err(format!("unsupported void width in dtype '{s}'"));
                }
                Ok(ScalarType::Void { len })
            }
            'O' => {
                if num.is_empty() || num == "8" {
                    Ok(ScalarType::Object)
                } else {
                    Err(format!("unsupported object dtype '{s}'"))
                }
            }
            _ => Err(format!("unsupported dtype '{s}'")),
        }
    }
}

/// One field of a structured dtype.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Field {
    pub name: String,
    pub ty: ScalarType,
    pub offset: usize,
}

/// The `descr` entry of a header.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Descr {
    Simple(ScalarType),
    Record { fields: Vec<Field>, itemsize: usize },
}

impl Descr {
    pub(crate) fn has_object(&self) -> bool {
        match self {
            Descr::Simple(t) => *t == ScalarType::Object,
            Descr::Record { fields, .. } => fields.iter().any(|f| f.ty == ScalarType::Object),
        }
    }

    fn from_lit(lit: &PyLit) -> Result<Descr, String> {
        match lit {
            PyLit::Str(s) => Ok(Descr::Simple(ScalarType::parse(s)?)),
            PyLit::List(items) => {
                let mut fields = Vec::with_capacity(items.len());
                let mut offset = 0usize;
                for item in items {
                    let PyLit::Tuple(parts) = item else {
                        return Err(format!("structured dtype entry is not a tuple: {item:?}"));
                    };
                    if parts.len() < 2 || parts.len() > 3 {
                        return Err(format!(
                            "structured dtype entry must be (name, type[, shape]): {item:?}"
                        ));
                    }
                    let name = match &parts[0] {
                        PyLit::Str(s) => s.clone(),
                        // (title, name)
                        PyLit::Tuple(t) if t.len() == 2 => match &t[1] {
                            PyLit::Str(s) => s.clone(),
                            other => return Err(format!("invalid field name {other:?}")),
                        },
                        other => return Err(format!("invalid field name {other:?}")),
                    };
                    let ty = match &parts[1] {
                        PyLit::Str(s) => {
                            ScalarType::parse(s).map_err(|e| format!("field '{name}': {e}"))?
                        }
                        _ => {
                            return Err(format!(
                                "field '{name}': nested structured dtypes are not supported"
                            ));
                        }
                    };
                    if parts.len() == 3 {
                        match &parts[2] {
                            PyLit::Tuple(t) if t.is_empty() => {}
                            PyLit::Int(1) => {}
                            PyLit::Tuple(t) if t.len() == 1 && t[0] == PyLit::Int(1) => {}
                            _ => {
                                return Err(format!(
                                    "field '{name}': sub-array fields are not supported"
                                ));
                            }
                        }
                    }
                    if fields
                        .iter()
                        .any(|f: &Field| f.name == name && !name.is_empty())
                    {
                        return Err(format!("duplicate field name '{name}'"));
                    }
                    let size = ty.size();
                    fields.push(Field { name, ty, offset });
                    offset = offset
                        .checked_add(size)
                        .ok_or("structured dtype is too large")?;
                }
                if fields.is_empty() {
                    return Err("structured dtype has no fields".into());
                }
                Ok(Descr::Record {
                    fields,
                    itemsize: offset,
                })
            }
            other => Err(format!("unsupported 'descr' value {other:?}")),
        }
    }
}

/// A parsed `.npy` header.
#[derive(Debug, Clone)]
pub(crate) struct NpyHeader {
    pub descr: Descr,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    /// Byte offset of the array data from the start of the file.
    pub data_offset: usize,
}

impl NpyHeader {
    /// Number of elements (product of the shape), or an error on overflow.
    pub(crate) fn num_elements(&self) -> Result<usize, String> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("shape {:?} is too large", self.shape))
    }
}

/// The 6 magic bytes that start every `.npy` file.
pub(crate) const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Parses the header at the start of `bytes`.
pub(crate) fn parse_header(bytes: &[u8]) -> Result<NpyHeader, String> {
    if bytes.is_empty() {
        return Err("file is empty".into());
    }
    if bytes.len() < 10 || &bytes[..6] != NPY_MAGIC {
        return Err("not a .npy file (wrong magic bytes)".into());
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated .npy header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12usize,
            )
        }
        v => return Err(format!("unsupported .npy format version {v}.{}", bytes[7])),
    };
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| format!("truncated .npy header (declares {hlen} bytes)"))?;
    let raw = &bytes[start..end];
    let text: String = if major == 3 {
        std::str::from_utf8(raw)
            .map_err(|_| "header is not valid UTF-8".to_string())?
            .to_string()
    } else {
        raw.iter().map(|&b| b as char).collect()
    };
    let lit = parse_py_literal(text.trim_end_matches(['\n', ' ', '\0']))
        .map_err(|e| format!("malformed .npy header: {e}"))?;
    let PyLit::Dict(items) = lit else {
        return Err("malformed .npy header: not a dict".into());
    };
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    for (k, v) in &items {
        match k {
            PyLit::Str(k) if k == "descr" => descr = Some(Descr::from_lit(v)?),
            PyLit::Str(k) if k == "fortran_order" => match v {
                PyLit::Bool(b) => fortran = Some(*b),
                other => return Err(format!("'fortran_order' is not a bool: {other:?}")),
            },
            PyLit::Str(k) if k == "shape" => {
                let dims = match v {
                    PyLit::Tuple(t) => t.clone(),
                    PyLit::Int(_) => vec![v.clone()],
                    other => return Err(format!("'shape' is not a tuple: {other:?}")),
                };
                let mut out = Vec::with_capacity(dims.len());
                for d in dims {
                    match d {
                        PyLit::Int(n) if n >= 0 => out.push(n as usize),
                        other => return Err(format!("invalid dimension {other:?} in 'shape'")),
                    }
                }
                shape = Some(out);
            }
            other => return Err(format!("unexpected key {other:?} in .npy header")),
        }
    }
    Ok(NpyHeader {
        descr: descr.ok_or("header has no 'descr'")?,
        fortran_order: fortran.ok_or("header has no 'fortran_order'")?,
        shape: shape.ok_or("header has no 'shape'")?,
        data_offset: end,
    })
}

/// A decoded column of values.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Column {
    Int(Vec<i64>),
    Float(Vec<f64>),
    Str(Vec<String>),
}

impl Column {
    pub(crate) fn len(&self) -> usize {
        match self {
            Column::Int(v) => v.len(),
            Column::Float(v) => v.len(),
            Column::Str(v) => v.len(),
        }
    }
}

fn read_uint(b: &[u8], big_endian: bool) -> u64 {
    let mut v = 0u64;
    if big_endian {
        for &x in b {
            v = (v << 8) | x as u64;
        }
    } else {
        for &x in b.iter().rev() {
            v = (v << 8) | x as u64;
        }
    }
    v
}

/// Decodes one element of a numeric type. Returns `Ok(None)` for non-numeric types.
enum Scalar {
    Int(i64),
    Float(f64),
    Str(String),
}

fn decode_scalar(ty: ScalarType, b: &[u8]) -> Result<Scalar, String> {
    match ty {
        ScalarType::Int {
            size,
            signed,
            big_endian,
        } => {
            let u = read_uint(b, big_endian);
            if signed {
                let shift = 64 - 8 * size as u32;
                Ok(Scalar::Int(((u << shift) as i64) >> shift))
            } else {
                i64::try_from(u)
                    .map(Scalar::Int)
                    .map_err(|_| format!("unsigned value {u} does not fit in i64"))
            }
        }
        ScalarType::Float { size, big_endian } => {
            let u = read_uint(b, big_endian);
            Ok(Scalar::Float(if size == 4 {
                f32::from_bits(u as u32) as f64
            } else {
                f64::from_bits(u)
            }))
        }
        ScalarType::Bool => Ok(Scalar::Int(i64::from(b[0] != 0))),
        ScalarType::Unicode { big_endian, .. } => {
            let mut s = String::new();
            let mut units: Vec<u32> = b
                .chunks_exact(4)
                .map(|c| read_uint(c, big_endian) as u32)
                .collect();
            while units.last() == Some(&0) {
                units.pop();
            }
            for u in units {
                s.push(
                    char::from_u32(u)
                        .ok_or_else(|| format!("invalid unicode code point {u:#x}"))?,
                );
            }
            Ok(Scalar::Str(s))
        }
        ScalarType::Bytes { .. } => {
            let mut end = b.len();
            while end > 0 && b[end - 1] == 0 {
                end -= 1;
            }
            std::str::from_utf8(&b[..end])
                .map(|s| Scalar::Str(s.to_string()))
                .map_err(|_| "byte-string field is not valid UTF-8".to_string())
        }
        ScalarType::Object => Err("object fields cannot be decoded from raw bytes".into()),
        ScalarType::Void { .. } => Err("void fields cannot be decoded".into()),
    }
}

fn push_scalar(col: &mut Option<Column>, s: Scalar, n: usize) {
    match (col.as_mut(), s) {
        (Some(Column::Int(v)), Scalar::Int(x)) => v.push(x),
        (Some(Column::Float(v)), Scalar::Float(x)) => v.push(x),
        (Some(Column::Str(v)), Scalar::Str(x)) => v.push(x),
        (None, Scalar::Int(x)) => {
            let mut v = Vec::with_capacity(n);
            v.push(x);
            *col = Some(Column::Int(v));
        }
        (None, Scalar::Float(x)) => {
            let mut v = Vec::with_capacity(n);
            v.push(x);
            *col = Some(Column::Float(v));
        }
        (None, Scalar::Str(x)) => {
            let mut v = Vec::with_capacity(n);
            v.push(x);
            *col = Some(Column::Str(v));
        }
        // A column has a single scalar type, so mixed pushes cannot happen.
        _ => {}
    }
}

fn empty_column(ty: ScalarType) -> Column {
    match ty {
        ScalarType::Float { .. } => Column::Float(Vec::new()),
        ScalarType::Unicode { .. } | ScalarType::Bytes { .. } => Column::Str(Vec::new()),
        _ => Column::Int(Vec::new()),
    }
}

/// Checks that `data` holds exactly `n * itemsize` bytes.
fn check_data_len(data: &[u8], n: usize, itemsize: usize) -> Result<(), String> {
    let need = n.checked_mul(itemsize).ok_or("array data size overflows")?;
    if data.len() < need {
        return Err(format!(
            "truncated data: expected {need} bytes for {n} items of {itemsize} bytes, found {}",
            data.len()
        ));
    }
    if data.len() > need {
        return Err(format!(
            "unexpected {} trailing bytes after the array data ({n} items of {itemsize} bytes)",
            data.len() - need
        ));
    }
    Ok(())
}

/// Decodes every named field of a 1-D structured array into columns (in dtype order).
/// Void padding fields are skipped.
pub(crate) fn decode_record_columns(
    header: &NpyHeader,
    data: &[u8],
) -> Result<Vec<(String, Column)>, String> {
    let Descr::Record { fields, itemsize } = &header.descr else {
        return Err("not a structured array".into());
    };
    if header.shape.len() != 1 {
        return Err(format!(
            "structured coordinate array must be 1-D, found shape {:?}",
            header.shape
        ));
    }
    let n = header.shape[0];
    check_data_len(data, n, *itemsize)?;
    let mut out = Vec::new();
    for f in fields {
        if matches!(f.ty, ScalarType::Void { .. }) || f.name.is_empty() {
            continue;
        }
        let size = f.ty.size();
        let mut col = None;
        for i in 0..n {
            let start = i * itemsize + f.offset;
            let b = &data[start..start + size];
            let s =
                decode_scalar(f.ty, b).map_err(|e| format!("field '{}', row {i}: {e}", f.name))?;
            push_scalar(&mut col, s, n);
        }
        out.push((f.name.clone(), col.unwrap_or_else(|| empty_column(f.ty))));
    }
    Ok(out)
}

/// Decodes a plain (non-structured) numeric array in C order. Fortran order is converted to C order.
pub(crate) fn decode_plain(header: &NpyHeader, data: &[u8]) -> Result<Column, String> {
    let Descr::Simple(ty) = header.descr else {
        return Err("not a plain array".into());
    };
    if !matches!(
        ty,
        ScalarType::Int { .. } | ScalarType::Float { .. } | ScalarType::Bool
    ) {
        return Err(format!("plain array has a non-numeric dtype {ty:?}"));
    }
    let n = header.num_elements()?;
    let size = ty.size();
    check_data_len(data, n, size)?;
    let mut col = None;
    for i in 0..n {
        let s = decode_scalar(ty, &data[i * size..(i + 1) * size])?;
        push_scalar(&mut col, s, n);
    }
    let col = col.unwrap_or_else(|| empty_column(ty));
    if header.fortran_order && header.shape.len() >= 2 {
        if header.shape.len() != 2 {
            return Err(
                "Fortran-order arrays with more than 2 dimensions are not supported".into(),
            );
        }
        let (rows, cols) = (header.shape[0], header.shape[1]);
        let idx = |i: usize| (i % cols) * rows + i / cols;
        return Ok(match col {
            Column::Int(v) => Column::Int((0..n).map(|i| v[idx(i)]).collect()),
            Column::Float(v) => Column::Float((0..n).map(|i| v[idx(i)]).collect()),
            Column::Str(v) => Column::Str(v),
        });
    }
    Ok(col)
}

// ------------------------------------------------------------------------------------------
// Writing
// ------------------------------------------------------------------------------------------

/// numpy's `GROWTH_AXIS_MAX_DIGITS` (spare header space for in-place growth).
const GROWTH_AXIS_MAX_DIGITS: usize = 21;
const ARRAY_ALIGN: usize = 64;

/// Python `repr` of a shape tuple.
fn shape_repr(shape: &[usize]) -> String {
    match shape {
        [] => "()".to_string(),
        [a] => format!("({a},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Python `repr` of a structured descr, given (name, type string) pairs.
pub(crate) fn record_descr_repr(fields: &[(&str, String)]) -> String {
    let parts: Vec<String> = fields
        .iter()
        .map(|(n, t)| format!("('{n}', '{t}')"))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Builds a header byte-identical to what numpy (`np.save`, numpy >= 1.24) writes.
/// `descr_repr` is the Python repr of the descr (e.g. `'<i8'` with quotes, or a list).
pub(crate) fn build_header(descr_repr: &str, shape: &[usize]) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': {descr_repr}, 'fortran_order': False, 'shape': {}, }}",
        shape_repr(shape)
    );
    if let Some(first) = shape.first() {
        let digits = first.to_string().len();
        header.push_str(&" ".repeat(GROWTH_AXIS_MAX_DIGITS.saturating_sub(digits)));
    }
    let hlen = header.len() + 1;
    let pad_v1 = ARRAY_ALIGN - ((10 + hlen) % ARRAY_ALIGN);
    let mut out = Vec::with_capacity(hlen + 12 + ARRAY_ALIGN);
    out.extend_from_slice(NPY_MAGIC);
    let padlen = if hlen + pad_v1 <= u16::MAX as usize {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&((hlen + pad_v1) as u16).to_le_bytes());
        pad_v1
    } else {
        let pad_v2 = ARRAY_ALIGN - ((12 + hlen) % ARRAY_ALIGN);
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&((hlen + pad_v2) as u32).to_le_bytes());
        pad_v2
    };
    out.extend_from_slice(header.as_bytes());
    out.extend(std::iter::repeat_n(b' ', padlen));
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_parser_handles_numpy_headers() {
        let lit = parse_py_literal(
            "{'descr': [('x', '<i8'), ('y', '>i4')], 'fortran_order': False, 'shape': (3,), }",
        )
        .unwrap();
        let PyLit::Dict(items) = lit else { panic!() };
        assert_eq!(items.len(), 3);
        assert_eq!(items[2].1, PyLit::Tuple(vec![PyLit::Int(3)]));
        assert_eq!(parse_py_literal("(5)").unwrap(), PyLit::Int(5));
        assert_eq!(parse_py_literal("()").unwrap(), PyLit::Tuple(vec![]));
        assert!(parse_py_literal("{'a': 1").is_err());
        assert!(parse_py_literal("{'a': foo}").is_err());
        assert!(parse_py_literal(&"[".repeat(100)).is_err());
    }

    #[test]
    fn scalar_type_strings() {
        assert_eq!(
            ScalarType::parse(">u2").unwrap(),
            ScalarType::Int {
                size: 2,
                signed: false,
                big_endian: true
            }
        );
        assert_eq!(ScalarType::parse("<U64").unwrap().size(), 256);
        assert_eq!(ScalarType::parse("|O").unwrap(), ScalarType::Object);
        assert!(ScalarType::parse("<i3").is_err());
        assert!(ScalarType::parse("<f2").is_err());
        assert!(ScalarType::parse("<M8[ns]").is_err());
        assert!(ScalarType::parse("").is_err());
    }

    #[test]
    fn signed_and_big_endian_decoding() {
        let t = ScalarType::parse(">i2").unwrap();
        let Scalar::Int(v) = decode_scalar(t, &[0xff, 0xfe]).unwrap() else {
            panic!()
        };
        assert_eq!(v, -2);
        let t = ScalarType::parse("<i1").unwrap();
        let Scalar::Int(v) = decode_scalar(t, &[0x80]).unwrap() else {
            panic!()
        };
        assert_eq!(v, -128);
        let t = ScalarType::parse("<u8").unwrap();
        assert!(decode_scalar(t, &[0xff; 8]).is_err());
    }

    #[test]
    fn header_is_64_byte_aligned_and_parses_back() {
        let h = build_header(&record_descr_repr(&[("x", "<i4".into())]), &[7]);
        assert_eq!(h.len() % 64, 0);
        assert_eq!(*h.last().unwrap(), b'\n');
        let parsed = parse_header(&h).unwrap();
        assert_eq!(parsed.shape, vec![7]);
        assert_eq!(parsed.data_offset, h.len());
    }
}
