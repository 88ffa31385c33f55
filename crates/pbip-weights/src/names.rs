//! Name-mapping helpers.

use crate::{HostTensor, TensorMap, WeightsError};

/// Returns the tensors whose name starts with `prefix`, with the prefix removed (others are dropped).
/// `strip_prefix(&map, "model.")` turns an upstream `{"model": state_dict}` checkpoint into the state dict.
pub fn strip_prefix(map: &TensorMap, prefix: &str) -> TensorMap {
    map.iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone())))
        .collect()
}

/// Returns the first prefix of `candidates` under which `probe` (a name relative to the prefix) exists
/// in `map`, e.g. `select_prefix(&m, &["clip.vision_model.", "vision_model.", ""], "model.layernorm.weight")`.
pub fn select_prefix<'a>(map: &TensorMap, candidates: &[&'a str], probe: &str) -> Option<&'a str> {
    candidates
        .iter()
        .copied()
        .find(|p| map.contains_key(&format!("{p}{probe}")))
}

/// Checks `map` against `expected` (name, shape) pairs. Names for which `ignore(name)` is true are
/// neither required nor reported as unexpected. On any problem, returns one
/// [`WeightsError::NameMismatch`] listing every missing, unexpected and mis-shaped tensor.
pub fn check_tensors(
    map: &TensorMap,
    expected: &[(String, Vec<usize>)],
    ignore: &dyn Fn(&str) -> bool,
    context: &str,
) -> Result<(), WeightsError> {
    let mut missing = Vec::new();
    let mut mis_shaped = Vec::new();
    let want: std::collections::BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    for (name, shape) in expected {
        match map.get(name) {
            None => missing.push(name.clone()),
            Some(HostTensor { shape: s, .. }) if s != shape => {
                mis_shaped.push((name.clone(), shape.clone(), s.clone()))
            }
            Some(_) => {}
        }
    }
    let unexpected: Vec<String> = map
        .keys()
        .filter(|k| !want.contains(k.as_str()) && !ignore(k))
        .cloned()
        .collect();
    if missing.is_empty() && unexpected.is_empty() && mis_shaped.is_empty() {
        Ok(())
    } else {
        Err(WeightsError::NameMismatch {
            context: context.to_string(),
            missing,
            unexpected,
            mis_shaped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize]) -> HostTensor {
        HostTensor::new(shape.to_vec(), vec![0.0; shape.iter().product()]).unwrap()
    }

    #[test]
    fn prefix_ops() {
        let mut m = TensorMap::new();
        m.insert("model.a".into(), t(&[1]));
        m.insert("model.b.c".into(), t(&[2]));
        m.insert("iter".into(), t(&[]));
        let s = strip_prefix(&m, "model.");
        assert_eq!(s.keys().collect::<Vec<_>>(), vec!["a", "b.c"]);
        assert_eq!(select_prefix(&m, &["x.", "model."], "b.c"), Some("model."));
        assert_eq!(select_prefix(&m, &["x."], "b.c"), None);
    }

    #[test]
    fn mismatch_lists_everything() {
        let mut m = TensorMap::new();
        m.insert("a".into(), t(&[2, 3]));
        m.insert("b".into(), t(&[4]));
        m.insert("extra".into(), t(&[1]));
        m.insert("ignored.x".into(), t(&[1]));
        let exp = vec![
            ("a".to_string(), vec![3, 2]),
            ("b".to_string(), vec![4]),
            ("c".to_string(), vec![1]),
        ];
        let e = check_tensors(&m, &exp, &|n| n.starts_with("ignored."), "test").unwrap_err();
        match &e {
            WeightsError::NameMismatch {
                missing,
                unexpected,
                mis_shaped,
                ..
            } => {
                assert_eq!(missing, &vec!["c".to_string()]);
                assert_eq!(unexpected, &vec!["extra".to_string()]);
                assert_eq!(mis_shaped.len(), 1);
            }
            other => panic!("wrong error {other}"),
        }
        let s = e.to_string();
        assert!(s.contains("missing") && s.contains("extra") && s.contains("expected [3, 2]"));
        let exp_ok = vec![("a".to_string(), vec![2, 3]), ("b".to_string(), vec![4])];
        assert!(check_tensors(&m, &exp_ok, &|n| n != "a" && n != "b", "t").is_ok());
    }
}
