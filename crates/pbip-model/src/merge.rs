//! Subclass → parent merging and label expansion (`utils/hierarchical_utils.py`).

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::util::index_tensor;

/// How the k subclass columns of a parent are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MergeMethod {
    /// mean(z) over the k subclasses (upstream `merge_train: mean`).
    Mean,
    /// Σ softmax(z)_j · z_j (upstream `merge_test: max`; per pixel for CAMs).
    #[serde(alias = "max", alias = "softmax_weighted")]
    SoftmaxWeighted,
}

impl MergeMethod {
    /// Parses `mean`, `softmax-weighted` / `softmax_weighted` / `max` (upstream's name).
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        match s {
            "mean" => Ok(Self::Mean),
            "softmax-weighted" | "softmax_weighted" | "max" => Ok(Self::SoftmaxWeighted),
            other => Err(ModelError::Config(format!(
                "unknown merge method `{other}` (expected mean or softmax-weighted)"
            ))),
        }
    }
}

/// Checks that `k_list` is non-empty, has no zero entry and sums to `total`.
pub fn check_k_list(k_list: &[usize], total: usize) -> Result<(), ModelError> {
    if k_list.is_empty() || k_list.contains(&0) {
        return Err(ModelError::Config(format!(
            "k_list {k_list:?} must be non-empty and positive"
        )));
    }
    let s: usize = k_list.iter().sum();
    if s != total {
        return Err(ModelError::Shape(format!(
            "k_list {k_list:?} sums to {s} but the tensor has {total} subclass channels"
        )));
    }
    Ok(())
}

/// Merges dim 1 (`ΣK` subclasses) of `x` (`[B,ΣK]` logits or `[B,ΣK,H,W]` CAMs) to `N =
/// k_list.len()` parents. A parent with k = 1 copies its column.
pub fn merge_subclasses<const D: usize>(
    x: Tensor<D>,
    k_list: &[usize],
    method: MergeMethod,
) -> Result<Tensor<D>, ModelError> {
    check_k_list(k_list, x.dims()[1])?;
    let mut parts = Vec::with_capacity(k_list.len());
    let mut start = 0;
    for &k in k_list {
        let z = x.clone().narrow(1, start, k);
        start += k;
        let merged = if k == 1 {
            z
        } else {
            match method {
                MergeMethod::Mean => z.mean_dim(1),
                MergeMethod::SoftmaxWeighted => (softmax(z.clone(), 1) * z).sum_dim(1),
            }
        };
        parts.push(merged);
    }
    Ok(Tensor::cat(parts, 1))
}

/// Repeats each parent column k times: `[B,N]` -> `[B,ΣK]`
/// (`expand_parent_to_subclass_labels`).
pub fn expand_to_subclasses(y: Tensor<2>, k_list: &[usize]) -> Result<Tensor<2>, ModelError> {
    let n = y.dims()[1];
    if n != k_list.len() {
        return Err(ModelError::Shape(format!(
            "labels have {n} classes but k_list {k_list:?} has {}",
            k_list.len()
        )));
    }
    let idx: Vec<usize> = k_list
        .iter()
        .enumerate()
        .flat_map(|(c, &k)| std::iter::repeat_n(c, k))
        .collect();
    let device = y.device();
    Ok(y.select(1, index_tensor(&idx, &device)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::to_vec;
    use burn::tensor::{Device, TensorData};

    fn t2(v: Vec<f32>, s: [usize; 2]) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v, s), &Device::flex())
    }

    #[test]
    fn mean_merge_with_uneven_k_list() {
        // k_list [2,1,3]: parents = mean(1,3)=2, copy 5, mean(0,3,6)=3
        let x = t2(vec![1., 3., 5., 0., 3., 6.], [1, 6]);
        let m = merge_subclasses(x, &[2, 1, 3], MergeMethod::Mean).unwrap();
        assert_eq!(to_vec(m).unwrap(), vec![2.0, 5.0, 3.0]);
    }

    #[test]
    fn softmax_weighted_merge_by_hand() {
        // z = (0, ln 3): softmax = (1/4, 3/4); value = 0.75 ln 3
        let l3 = 3f32.ln();
        let x = t2(vec![0.0, l3, 7.0], [1, 3]);
        let m =
            to_vec(merge_subclasses(x, &[2, 1], MergeMethod::SoftmaxWeighted).unwrap()).unwrap();
        assert!((m[0] - 0.75 * l3).abs() < 1e-6, "{m:?}");
        assert_eq!(m[1], 7.0);
    }

    #[test]
    fn softmax_weighted_merge_per_pixel() {
        // [1, 2 subclasses, 1, 2]: pixel 0 equal values -> value; pixel 1 (0, ln3) -> 0.75 ln3
        let l3 = 3f32.ln();
        let x: Tensor<4> = Tensor::from_data(
            TensorData::new(vec![2.0, 0.0, 2.0, l3], [1, 2, 1, 2]),
            &Device::flex(),
        );
        let m = to_vec(merge_subclasses(x, &[2], MergeMethod::SoftmaxWeighted).unwrap()).unwrap();
        assert!(
            (m[0] - 2.0).abs() < 1e-6 && (m[1] - 0.75 * l3).abs() < 1e-6,
            "{m:?}"
        );
    }

    #[test]
    fn expand_labels_repeats_columns() {
        let y = t2(vec![1., 0., 1., 0., 1., 1.], [2, 3]);
        let e = expand_to_subclasses(y, &[2, 1, 2]).unwrap();
        assert_eq!(e.dims(), [2, 5]);
        assert_eq!(
            to_vec(e).unwrap(),
            vec![1., 1., 0., 1., 1., 0., 0., 1., 1., 1.]
        );
    }

    #[test]
    fn bad_k_list_is_an_error() {
        let x = t2(vec![0.0; 4], [1, 4]);
        assert!(merge_subclasses(x.clone(), &[3, 3], MergeMethod::Mean).is_err());
        assert!(merge_subclasses(x, &[4, 0], MergeMethod::Mean).is_err());
        assert!(MergeMethod::parse("median").is_err());
        assert_eq!(
            MergeMethod::parse("max").unwrap(),
            MergeMethod::SoftmaxWeighted
        );
    }
}
