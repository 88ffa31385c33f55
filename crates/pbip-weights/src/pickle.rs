//! A data-only pickle interpreter for `torch.save` payloads.
//!
//! Only a fixed set of callables is understood, and only as data constructors:
//! `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` / `_rebuild_tensor` /
//! `_rebuild_parameter`, and the typed storage classes (`torch.FloatStorage`, ...). Any other global
//! is an error: nothing is imported or executed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::DType;

/// A reference to a storage inside the archive (`data/<key>`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StorageRef {
    pub key: String,
    pub dtype: DType,
    /// Number of elements (from the pickle; the file size is checked when reading).
    pub numel: usize,
}

/// A strided view of a storage (what `_rebuild_tensor_v2` describes).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

/// Known callables (the only globals accepted).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Callable {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    Storage(DType),
}

/// Pickle values (payloads of scalars are kept for `Debug` in error messages). Dicts and lists are shared (memo entries alias the same object, as in Python).
#[derive(Debug, Clone)]
#[allow(dead_code)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Callable),
    Storage(StorageRef),
    Tensor(TensorRef),
}

fn global(module: &str, name: &str) -> Result<Callable, String> {
    let dt = |d| Ok(Callable::Storage(d));
    match (module, name) {
        ("collections", "OrderedDict") => Ok(Callable::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Ok(Callable::RebuildTensorV2),
        ("torch._utils", "_rebuild_tensor") => Ok(Callable::RebuildTensor),
        ("torch._utils", "_rebuild_parameter") => Ok(Callable::RebuildParameter),
        ("torch", "FloatStorage") => dt(DType::F32),
        ("torch", "DoubleStorage") => dt(DType::F64),
        ("torch", "HalfStorage") => dt(DType::F16),
        ("torch", "BFloat16Storage") => dt(DType::BF16),
        ("torch", "LongStorage") => dt(DType::I64),
        ("torch", "IntStorage") => dt(DType::I32),
        ("torch", "ShortStorage") => dt(DType::I16),
        ("torch", "CharStorage") => dt(DType::I8),
        ("torch", "ByteStorage") | ("torch", "UntypedStorage") => dt(DType::U8),
        ("torch", "BoolStorage") => dt(DType::Bool),
        _ => Err(format!(
            "pickle refers to the global {module}.{name}, which this data-only reader does not allow \
             (only tensors, storages and OrderedDict are supported; no code is executed)"
        )),
    }
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Vm<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "pickle truncated: need {n} bytes at offset {} of {}",
                    self.pos,
                    self.data.len()
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.data[self.pos..];
        let nl = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or("pickle truncated: missing newline")?;
        let s = std::str::from_utf8(&rest[..nl]).map_err(|_| "pickle: non-UTF-8 text argument")?;
        self.pos += nl + 1;
        Ok(s)
    }
    fn pop(&mut self) -> Result<Value, String> {
        self.stack
            .pop()
            .ok_or_else(|| format!("pickle stack underflow at offset {}", self.pos))
    }
    fn top(&mut self) -> Result<&mut Value, String> {
        let p = self.pos;
        self.stack
            .last_mut()
            .ok_or_else(|| format!("pickle stack underflow at offset {p}"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| format!("pickle: no MARK at offset {}", self.pos))?;
        if m > self.stack.len() {
            return Err("pickle: MARK above stack".into());
        }
        Ok(self.stack.split_off(m))
    }
    fn string(&mut self, n: usize) -> Result<Value, String> {
        let b = self.take(n)?;
        Ok(Value::Str(
            String::from_utf8(b.to_vec()).map_err(|_| "pickle: invalid UTF-8 string")?,
        ))
    }
    fn memo_get(&self, i: u32) -> Result<Value, String> {
        self.memo
            .get(&i)
            .cloned()
            .ok_or_else(|| format!("pickle: memo entry {i} missing"))
    }
    fn memo_put(&mut self, i: u32) -> Result<(), String> {
        let v = self
            .stack
            .last()
            .cloned()
            .ok_or("pickle: PUT on empty stack")?;
        self.memo.insert(i, v);
        Ok(())
    }
}

fn as_usize(v: &Value, what: &str) -> Result<usize, String> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        other => Err(format!(
            "{what}: expected a non-negative integer, found {other:?}"
        )),
    }
}

fn as_usize_tuple(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(t) => t.iter().map(|x| as_usize(x, what)).collect(),
        Value::List(l) => l.borrow().iter().map(|x| as_usize(x, what)).collect(),
        other => Err(format!(
            "{what}: expected a tuple of integers, found {other:?}"
        )),
    }
}

fn call(f: Callable, args: Vec<Value>) -> Result<Value, String> {
    match f {
        Callable::OrderedDict => {
            // OrderedDict() or OrderedDict([(k, v), ...])
            let mut items = Vec::new();
            let src: Vec<Value> = match args.first() {
                Some(Value::List(l)) => l.borrow().clone(),
                Some(Value::Tuple(t)) => t.clone(),
                _ => Vec::new(),
            };
            for kv in src {
                match kv {
                    Value::Tuple(mut p) if p.len() == 2 => {
                        let v = p.pop().unwrap_or(Value::None);
                        let k = p.pop().unwrap_or(Value::None);
                        items.push((k, v));
                    }
                    other => return Err(format!("OrderedDict item is not a pair: {other:?}")),
                }
            }
            Ok(Value::Dict(Rc::new(RefCell::new(items))))
        }
        Callable::RebuildTensorV2 | Callable::RebuildTensor => {
            if args.len() < 4 {
                return Err(format!(
                    "_rebuild_tensor: expected >= 4 arguments, got {}",
                    args.len()
                ));
            }
            let Value::Storage(storage) = &args[0] else {
                return Err(format!(
                    "_rebuild_tensor: first argument is not a storage: {:?}",
                    args[0]
                ));
            };
            let offset = as_usize(&args[1], "tensor storage offset")?;
            let size = as_usize_tuple(&args[2], "tensor size")?;
            let stride = as_usize_tuple(&args[3], "tensor stride")?;
            if size.len() != stride.len() {
                return Err(format!(
                    "tensor size {size:?} and stride {stride:?} differ in rank"
                ));
            }
            Ok(Value::Tensor(TensorRef {
                storage: storage.clone(),
                offset,
                size,
                stride,
            }))
        }
        Callable::RebuildParameter => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            other => Err(format!(
                "_rebuild_parameter: first argument is not a tensor: {other:?}"
            )),
        },
        Callable::Storage(_) => Err("a storage class cannot be called directly".into()),
    }
}

fn persistent_load(pid: Value) -> Result<Value, String> {
    // ('storage', storage_type, key, location, numel)
    let Value::Tuple(t) = pid else {
        return Err(format!("persistent id is not a tuple: {pid:?}"));
    };
    if t.len() < 5 || !matches!(&t[0], Value::Str(s) if s == "storage") {
        return Err(format!("unsupported persistent id {t:?}"));
    }
    let Value::Global(Callable::Storage(dtype)) = t[1] else {
        return Err(format!("persistent id: {:?} is not a storage type", t[1]));
    };
    let key = match &t[2] {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => return Err(format!("persistent id: bad storage key {other:?}")),
    };
    let numel = as_usize(&t[4], "storage size")?;
    Ok(Value::Storage(StorageRef { key, dtype, numel }))
}

/// Runs the pickle program and returns the value left by STOP.
pub(crate) fn unpickle(data: &[u8]) -> Result<Value, String> {
    let mut vm = Vm {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    loop {
        let at = vm.pos;
        let op = vm.u8()?;
        match op {
            0x80 => {
                // PROTO
                let p = vm.u8()?;
                if p > 5 {
                    return Err(format!("unsupported pickle protocol {p}"));
                }
            }
            0x95 => {
                vm.u64()?; // FRAME length: frames are just a hint
            }
            b'.' => return vm.pop(), // STOP
            b'(' => vm.marks.push(vm.stack.len()),
            b'0' => {
                vm.pop()?;
            }
            b'1' => {
                vm.pop_mark()?;
            }
            b'2' => {
                let v = vm.top()?.clone();
                vm.stack.push(v);
            }
            b'N' => vm.stack.push(Value::None),
            0x88 => vm.stack.push(Value::Bool(true)),
            0x89 => vm.stack.push(Value::Bool(false)),
            b'J' => {
                let v = vm.u32()? as i32;
                vm.stack.push(Value::Int(v as i64));
            }
            b'K' => {
                let v = vm.u8()?;
                vm.stack.push(Value::Int(v as i64));
            }
            b'M' => {
                let v = vm.u16()?;
                vm.stack.push(Value::Int(v as i64));
            }
            0x8a | 0x8b => {
                // LONG1 / LONG4: little-endian two's complement
                let n = if op == 0x8a {
                    vm.u8()? as usize
                } else {
                    vm.u32()? as usize
                };
                let b = vm.take(n)?;
                if n > 8 {
                    return Err(format!("pickle: integer of {n} bytes is too large"));
                }
                let mut v: i64 = 0;
                for (i, &x) in b.iter().enumerate() {
                    v |= (x as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                vm.stack.push(Value::Int(v));
            }
            b'I' => {
                let s = vm.line()?;
                let v = match s {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    _ => Value::Int(s.parse().map_err(|_| format!("pickle: bad INT {s:?}"))?),
                };
                vm.stack.push(v);
            }
            b'L' => {
                let s = vm.line()?.trim_end_matches('L');
                vm.stack.push(Value::Int(
                    s.parse().map_err(|_| format!("pickle: bad LONG {s:?}"))?,
                ));
            }
            b'G' => {
                let b = vm.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                vm.stack.push(Value::Float(f64::from_be_bytes(a)));
            }
            b'F' => {
                let s = vm.line()?;
                vm.stack.push(Value::Float(
                    s.parse().map_err(|_| format!("pickle: bad FLOAT {s:?}"))?,
                ));
            }
            b'X' => {
                let n = vm.u32()? as usize;
                let v = vm.string(n)?;
                vm.stack.push(v);
            }
            0x8c => {
                let n = vm.u8()? as usize;
                let v = vm.string(n)?;
                vm.stack.push(v);
            }
            0x8d => {
                let n = usize::try_from(vm.u64()?).map_err(|_| "pickle: string too long")?;
                let v = vm.string(n)?;
                vm.stack.push(v);
            }
            b'T' | b'U' => {
                // BINSTRING / SHORT_BINSTRING (py2 str): decode as latin-1
                let n = if op == b'T' {
                    vm.u32()? as usize
                } else {
                    vm.u8()? as usize
                };
                let b = vm.take(n)?;
                vm.stack
                    .push(Value::Str(b.iter().map(|&c| c as char).collect()));
            }
            b'B' | b'C' | 0x8e => {
                let n = match op {
                    b'B' => vm.u32()? as usize,
                    b'C' => vm.u8()? as usize,
                    _ => usize::try_from(vm.u64()?).map_err(|_| "pickle: bytes too long")?,
                };
                let b = vm.take(n)?.to_vec();
                vm.stack.push(Value::Bytes(b));
            }
            b')' => vm.stack.push(Value::Tuple(Vec::new())),
            b't' => {
                let items = vm.pop_mark()?;
                vm.stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if vm.stack.len() < n {
                    return Err(format!("pickle stack underflow at offset {at}"));
                }
                let items = vm.stack.split_off(vm.stack.len() - n);
                vm.stack.push(Value::Tuple(items));
            }
            b']' => vm
                .stack
                .push(Value::List(Rc::new(RefCell::new(Vec::new())))),
            b'l' => {
                let items = vm.pop_mark()?;
                vm.stack.push(Value::List(Rc::new(RefCell::new(items))));
            }
            b'}' => vm
                .stack
                .push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
            b'd' => {
                let items = vm.pop_mark()?;
                if items.len() % 2 != 0 {
                    return Err("pickle: DICT with odd number of items".into());
                }
                let mut it = items.into_iter();
                let mut kv = Vec::new();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    kv.push((k, v));
                }
                vm.stack.push(Value::Dict(Rc::new(RefCell::new(kv))));
            }
            b'a' => {
                let v = vm.pop()?;
                match vm.top()? {
                    Value::List(l) => l.borrow_mut().push(v),
                    other => return Err(format!("pickle: APPEND to non-list {other:?}")),
                }
            }
            b'e' => {
                let items = vm.pop_mark()?;
                match vm.top()? {
                    Value::List(l) => l.borrow_mut().extend(items),
                    other => return Err(format!("pickle: APPENDS to non-list {other:?}")),
                }
            }
            b's' => {
                let v = vm.pop()?;
                let k = vm.pop()?;
                match vm.top()? {
                    Value::Dict(d) => d.borrow_mut().push((k, v)),
                    other => return Err(format!("pickle: SETITEM on non-dict {other:?}")),
                }
            }
            b'u' => {
                let items = vm.pop_mark()?;
                if items.len() % 2 != 0 {
                    return Err("pickle: SETITEMS with odd number of items".into());
                }
                match vm.top()? {
                    Value::Dict(d) => {
                        let mut d = d.borrow_mut();
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.push((k, v));
                        }
                    }
                    other => return Err(format!("pickle: SETITEMS on non-dict {other:?}")),
                }
            }
            b'c' => {
                let module = vm.line()?.to_string();
                let name = vm.line()?.to_string();
                vm.stack.push(Value::Global(global(&module, &name)?));
            }
            0x93 => {
                let name = vm.pop()?;
                let module = vm.pop()?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => vm.stack.push(Value::Global(global(&m, &n)?)),
                    _ => return Err("pickle: STACK_GLOBAL needs two strings".into()),
                }
            }
            b'R' | 0x81 => {
                // REDUCE / NEWOBJ
                let args = vm.pop()?;
                let f = vm.pop()?;
                let Value::Tuple(args) = args else {
                    return Err(format!(
                        "pickle: call arguments are not a tuple at offset {at}"
                    ));
                };
                let Value::Global(f) = f else {
                    return Err(format!(
                        "pickle: call of a non-callable value at offset {at}"
                    ));
                };
                vm.stack.push(call(f, args)?);
            }
            b'b' => {
                // BUILD: state of an object. OrderedDict `_metadata` and tensor state are ignored.
                vm.pop()?;
                vm.top()?;
            }
            b'Q' => {
                let pid = vm.pop()?;
                vm.stack.push(persistent_load(pid)?);
            }
            b'P' => {
                let s = vm.line()?.to_string();
                return Err(format!("pickle: text persistent id {s:?} not supported"));
            }
            b'q' => {
                let i = vm.u8()? as u32;
                vm.memo_put(i)?;
            }
            b'r' => {
                let i = vm.u32()?;
                vm.memo_put(i)?;
            }
            b'p' => {
                let s = vm.line()?;
                let i = s.parse().map_err(|_| format!("pickle: bad PUT {s:?}"))?;
                vm.memo_put(i)?;
            }
            0x94 => {
                let i = vm.memo.len() as u32;
                vm.memo_put(i)?;
            }
            b'h' => {
                let i = vm.u8()? as u32;
                let v = vm.memo_get(i)?;
                vm.stack.push(v);
            }
            b'j' => {
                let i = vm.u32()?;
                let v = vm.memo_get(i)?;
                vm.stack.push(v);
            }
            b'g' => {
                let s = vm.line()?;
                let i = s.parse().map_err(|_| format!("pickle: bad GET {s:?}"))?;
                let v = vm.memo_get(i)?;
                vm.stack.push(v);
            }
            other => {
                return Err(format!(
                    "pickle: unsupported opcode 0x{other:02x} at offset {at}"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_dict() {
        // pickle.dumps({'a': 1, 'b': [2.5, None, True], 'c': (-3, 'x')}, protocol=2)
        let p: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02]q\x03(G@\x04\x00\x00\x00\x00\x00\x00N\x88eX\x01\x00\x00\x00cq\x04J\xfd\xff\xff\xffX\x01\x00\x00\x00xq\x05\x86q\x06u.";
        let v = unpickle(p).unwrap();
        let Value::Dict(d) = v else { panic!() };
        let d = d.borrow();
        assert_eq!(d.len(), 3);
        assert!(matches!(&d[0], (Value::Str(k), Value::Int(1)) if k == "a"));
        match &d[1].1 {
            Value::List(l) => {
                let l = l.borrow();
                assert!(matches!(l[0], Value::Float(f) if f == 2.5));
                assert!(matches!(l[1], Value::None));
                assert!(matches!(l[2], Value::Bool(true)));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&d[2].1, Value::Tuple(t) if matches!(t[0], Value::Int(-3))));
    }

    #[test]
    fn long1_negative() {
        // LONG1 with 2 bytes 0xff7f? -> 0x7fff positive; 0x00 0x80 -> -32768
        let p: &[u8] = b"\x80\x02\x8a\x02\x00\x80.";
        assert!(matches!(unpickle(p).unwrap(), Value::Int(-32768)));
        let p: &[u8] = b"\x80\x02\x8a\x02\xff\x7f.";
        assert!(matches!(unpickle(p).unwrap(), Value::Int(32767)));
    }

    #[test]
    fn forbidden_global() {
        // cos\nsystem\n(S'echo hi'\ntR.  (the classic exploit)
        let p: &[u8] = b"cos\nsystem\n(S'echo hi'\ntR.";
        let e = unpickle(p).unwrap_err();
        assert!(e.contains("os.system"), "{e}");
        let p: &[u8] = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.";
        assert!(unpickle(p).unwrap_err().contains("builtins.eval"));
    }

    #[test]
    fn garbage_is_error() {
        for p in [
            &b""[..],
            b"\x80",
            b"\x80\x02X\xff\xff\xff\xff",
            b"\x80\x02t.",
            b"\x80\x02h\x05.",
            b"\x80\x02\xff",
            b".",
        ] {
            assert!(unpickle(p).is_err(), "{p:?}");
        }
    }
}
