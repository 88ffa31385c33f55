//! Pooling of many scores into one: pixels of a similarity map into an image logit (the head's
//! `cls`), and patch logits of a bag or a slide into a slide logit (multiple-instance learning).
//!
//! Upstream PBIP uses the spatial mean ([`Pooling::Mean`], `adaptive_avg_pool2d`). The two other
//! poolings let a few strongly positive instances decide, which is what a slide label ("this class
//! is present somewhere") says:
//!
//! * [`Pooling::TopK`]: the mean of the `k = ceil(fraction · n)` largest values (at least 1);
//!   `fraction` 1 is the mean, `1/n` the maximum.
//! * [`Pooling::Lse`]: `(1/r) · ln( (1/n) · Σ exp(r · x) )`, a smooth maximum: `r → 0` is the mean,
//!   `r → ∞` the maximum.
//!
//! The same definitions are implemented on tensors (differentiable; [`pool_last_dim`]) and on host
//! numbers ([`pool_values`]), and tested against each other.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::ModelError;

/// How many values are pooled into one.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Pooling {
    /// The mean (upstream).
    #[default]
    Mean,
    /// Mean of the top `ceil(fraction · n)` values, `fraction` in (0, 1].
    TopK {
        /// Fraction of the values kept.
        fraction: f64,
    },
    /// Log-sum-exp smooth maximum with sharpness `r > 0`.
    Lse {
        /// Sharpness.
        r: f64,
    },
}

impl Pooling {
    /// Rejects a fraction outside (0, 1] and a non-positive or non-finite `r`.
    pub fn validate(&self) -> Result<(), ModelError> {
        match *self {
            Pooling::Mean => Ok(()),
            Pooling::TopK { fraction } if fraction > 0.0 && fraction <= 1.0 => Ok(()),
            Pooling::TopK { fraction } => Err(ModelError::Config(format!(
                "top-k pooling fraction must be in (0, 1], got {fraction}"
            ))),
            Pooling::Lse { r } if r.is_finite() && r > 0.0 => Ok(()),
            Pooling::Lse { r } => Err(ModelError::Config(format!(
                "log-sum-exp pooling sharpness r must be > 0, got {r}"
            ))),
        }
    }

    /// Number of values top-k keeps out of `n` (`n` for the other poolings).
    pub fn kept(&self, n: usize) -> usize {
        match *self {
            Pooling::TopK { fraction } => {
                ((fraction * n as f64).ceil() as usize).clamp(1, n.max(1))
            }
            _ => n,
        }
    }

    /// Whether this is the plain mean (upstream).
    pub fn is_mean(&self) -> bool {
        matches!(self, Pooling::Mean)
            || matches!(self, Pooling::TopK { fraction } if *fraction >= 1.0)
    }
}

/// Pools `x [B, M, n]` over its last dimension into `[B, M]` (differentiable).
pub fn pool_last_dim(x: Tensor<3>, pooling: Pooling) -> Tensor<2> {
    let [b, m, n] = x.dims();
    match pooling {
        _ if pooling.is_mean() => x.mean_dim(2).reshape([b, m]),
        Pooling::TopK { .. } => {
            let k = pooling.kept(n);
            // Indices from a detached copy; the gradient flows through the gather to the kept values.
            let (_, idx) = x.clone().detach().topk_with_indices(k, 2);
            x.gather(2, idx).mean_dim(2).reshape([b, m])
        }
        Pooling::Lse { r } => {
            // Stable: max + (1/r)·ln(mean(exp(r·(x − max)))), the max without gradient of its own.
            let mx = x.clone().detach().max_dim(2);
            let e = (x - mx.clone()).mul_scalar(r).exp().mean_dim(2);
            (mx + e.log().div_scalar(r)).reshape([b, m])
        }
        Pooling::Mean => x.mean_dim(2).reshape([b, m]),
    }
}

/// Pools host numbers with the same definition as [`pool_last_dim`] (`None` for no values).
pub fn pool_values(values: &[f64], pooling: Pooling) -> Option<f64> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    Some(match pooling {
        _ if pooling.is_mean() => values.iter().sum::<f64>() / n as f64,
        Pooling::TopK { .. } => {
            let k = pooling.kept(n);
            let mut v = values.to_vec();
            v.sort_by(|a, b| b.total_cmp(a));
            v[..k].iter().sum::<f64>() / k as f64
        }
        Pooling::Lse { r } => {
            let mx = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if !mx.is_finite() {
                return Some(mx);
            }
            let s = values.iter().map(|x| (r * (x - mx)).exp()).sum::<f64>() / n as f64;
            mx + s.ln() / r
        }
        Pooling::Mean => values.iter().sum::<f64>() / n as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t3(v: &[f32], shape: [usize; 3]) -> Tensor<3> {
        Tensor::from_data(TensorData::new(v.to_vec(), shape), &Device::flex())
    }

    #[test]
    fn hand_checked_values() {
        let v = [1.0, -2.0, 4.0, 0.5];
        assert_eq!(pool_values(&v, Pooling::Mean), Some(0.875));
        // top-k 0.5 of 4 -> k = 2: (4 + 1) / 2
        assert_eq!(pool_values(&v, Pooling::TopK { fraction: 0.5 }), Some(2.5));
        // fraction 0.3 of 4 -> ceil(1.2) = 2 as well; 0.2 -> 1 (the maximum)
        assert_eq!(pool_values(&v, Pooling::TopK { fraction: 0.3 }), Some(2.5));
        assert_eq!(pool_values(&v, Pooling::TopK { fraction: 0.2 }), Some(4.0));
        // LSE r = 1: ln((e^1 + e^-2 + e^4 + e^0.5) / 4)
        //   = ln((2.718282 + 0.135335 + 54.598150 + 1.648721) / 4) = ln(14.775122) = 2.692945
        let l = pool_values(&v, Pooling::Lse { r: 1.0 }).unwrap();
        assert!((l - 2.692_945).abs() < 1e-5, "{l}");
        // r large -> max, r small -> mean
        let hi = pool_values(&v, Pooling::Lse { r: 200.0 }).unwrap();
        assert!((hi - 4.0).abs() < 0.01, "{hi}");
        let lo = pool_values(&v, Pooling::Lse { r: 1e-4 }).unwrap();
        assert!((lo - 0.875).abs() < 1e-3, "{lo}");
        assert_eq!(pool_values(&[], Pooling::Mean), None);
    }

    #[test]
    fn tensor_matches_host_and_gradients_hit_the_kept_values() {
        let v: Vec<f32> = vec![1.0, -2.0, 4.0, 0.5, 3.0, 3.5, -1.0, 0.0];
        for p in [
            Pooling::Mean,
            Pooling::TopK { fraction: 0.25 },
            Pooling::TopK { fraction: 0.5 },
            Pooling::Lse { r: 2.0 },
        ] {
            let got = crate::util::to_vec(pool_last_dim(t3(&v, [2, 1, 4]), p)).unwrap();
            for (row, g) in got.iter().enumerate() {
                let want: Vec<f64> = v[row * 4..row * 4 + 4]
                    .iter()
                    .map(|&x| f64::from(x))
                    .collect();
                let w = pool_values(&want, p).unwrap();
                assert!(
                    (f64::from(*g) - w).abs() < 1e-5,
                    "{p:?} row {row}: {g} vs {w}"
                );
            }
        }
        // d/dx of top-2 mean: 1/2 on the two largest of each row, 0 elsewhere.
        let device = Device::flex().autodiff();
        let x: Tensor<3> =
            Tensor::from_data(TensorData::new(v.clone(), [2, 1, 4]), &device).require_grad();
        let y = pool_last_dim(x.clone(), Pooling::TopK { fraction: 0.5 }).sum();
        let g = crate::util::to_vec(x.grad(&y.backward()).unwrap()).unwrap();
        assert_eq!(g, vec![0.5, 0.0, 0.5, 0.0, 0.5, 0.5, 0.0, 0.0]);
        // LSE gradient = softmax(r·x) / ... : weights sum to 1 per row.
        let x: Tensor<3> = Tensor::from_data(TensorData::new(v, [2, 1, 4]), &device).require_grad();
        let y = pool_last_dim(x.clone(), Pooling::Lse { r: 2.0 }).sum();
        let g = crate::util::to_vec(x.grad(&y.backward()).unwrap()).unwrap();
        let s0: f32 = g[..4].iter().sum();
        assert!((s0 - 1.0).abs() < 1e-5, "{g:?}");
    }

    #[test]
    fn validation() {
        assert!(Pooling::TopK { fraction: 0.0 }.validate().is_err());
        assert!(Pooling::TopK { fraction: 1.5 }.validate().is_err());
        assert!(Pooling::Lse { r: 0.0 }.validate().is_err());
        assert!(Pooling::Lse { r: f64::NAN }.validate().is_err());
        assert!(Pooling::TopK { fraction: 1.0 }.validate().is_ok());
        assert_eq!(Pooling::TopK { fraction: 0.01 }.kept(10), 1);
        assert_eq!(Pooling::TopK { fraction: 0.25 }.kept(10), 3);
    }
}
