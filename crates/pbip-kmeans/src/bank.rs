//! The prototype bank around k-means: conditioning of the exemplar features before clustering, and
//! how separable the classes are under the bank.
//!
//! # Conditioning ([`Conditioner`])
//! Features of an encoder that was never trained on the data (a random Swin, say) are nearly
//! collinear: every exemplar has cosine ≈ 0.999 with every other, so the k-means centres of two
//! classes are almost the same vector. Conditioning removes what all exemplars share:
//! * [`ConditioningKind::Centre`]: `x ↦ normalise(x̂ − μ)`, `x̂ = x/‖x‖`, `μ` the class-balanced mean
//!   of the normalised exemplars (the mean of the per-class means);
//! * [`ConditioningKind::Whiten`]: `x ↦ normalise((x̂ − μ)·W)` with `W = Σ_s^{-1/2}` (symmetric, ZCA),
//!   `Σ_s = (1 − λ)·Σ + λ·(tr Σ / D)·I` the covariance of the centred exemplars shrunk towards a
//!   multiple of the identity (`λ` = [`WHITEN_SHRINKAGE`]; with fewer exemplars than dimensions Σ is
//!   singular).
//!
//! The same transform must be applied to any feature later compared with the bank (the FG/BG
//! encoder features of the contrastive loss), so it is returned as data (`mean`, `matrix`).
//!
//! # Separability ([`separability`])
//! Per bank: the smallest and largest cosine between prototypes of different classes, and the
//! nearest-prototype accuracy of the exemplars (each exemplar's nearest prototype by cosine
//! belongs to its own class), per class and balanced. A bank whose classes are collinear (largest
//! inter-class cosine ≥ [`COLLINEAR_COSINE`]) or that does not classify its own exemplars (balanced
//! accuracy below [`MIN_BALANCED_ACCURACY`]) cannot tell the classes apart by itself.

use nalgebra::{DMatrix, SymmetricEigen};
use serde::{Deserialize, Serialize};

use crate::KMeansError;

/// Shrinkage λ of the whitening covariance.
pub const WHITEN_SHRINKAGE: f64 = 0.1;
/// Largest inter-class prototype cosine above which a bank counts as collinear.
pub const COLLINEAR_COSINE: f64 = 0.99;
/// Balanced nearest-prototype accuracy below which a bank counts as not separating its classes.
pub const MIN_BALANCED_ACCURACY: f64 = 0.75;

/// Kind of conditioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConditioningKind {
    /// The features as they are (upstream).
    #[default]
    None,
    /// Subtract the class-balanced mean.
    Centre,
    /// Centre, then ZCA-whiten with a shrunk covariance.
    Whiten,
}

/// A fitted conditioning transform `x ↦ normalise((x/‖x‖ − mean)·matrix)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Conditioner {
    /// Kind.
    pub kind: ConditioningKind,
    /// Feature width D.
    pub dim: usize,
    /// `μ` (zeros for [`ConditioningKind::None`]).
    pub mean: Vec<f64>,
    /// `W`, `D×D` row-major (`None` = identity).
    pub matrix: Option<Vec<f64>>,
}

impl Conditioner {
    /// The identity transform (only normalisation).
    pub fn identity(dim: usize) -> Self {
        Self {
            kind: ConditioningKind::None,
            dim,
            mean: vec![0.0; dim],
            matrix: None,
        }
    }

    /// Fits the transform on `rows × dim` features with class `class_of[i]` per row.
    pub fn fit(
        kind: ConditioningKind,
        features: &[f64],
        rows: usize,
        dim: usize,
        class_of: &[usize],
    ) -> Result<Self, KMeansError> {
        let x = crate::normalize_rows(features, rows, dim)?;
        if class_of.len() != rows {
            return Err(KMeansError::BadShape {
                len: class_of.len(),
                rows,
                dim: 1,
                expected: rows,
            });
        }
        if kind == ConditioningKind::None {
            return Ok(Self::identity(dim));
        }
        // Class-balanced mean: mean over classes of the class means.
        let classes = class_of.iter().copied().max().map_or(0, |m| m + 1);
        let mut sums = vec![0.0; classes * dim];
        let mut counts = vec![0usize; classes];
        for (r, &c) in class_of.iter().enumerate() {
            counts[c] += 1;
            for j in 0..dim {
                sums[c * dim + j] += x[r * dim + j];
            }
        }
        let present: Vec<usize> = (0..classes).filter(|&c| counts[c] > 0).collect();
        let mut mean = vec![0.0; dim];
        for &c in &present {
            for j in 0..dim {
                mean[j] += sums[c * dim + j] / counts[c] as f64 / present.len() as f64;
            }
        }
        let matrix = if kind == ConditioningKind::Whiten {
            let centred = DMatrix::from_fn(rows, dim, |r, j| x[r * dim + j] - mean[j]);
            let denom = rows.saturating_sub(1).max(1) as f64;
            let cov = centred.transpose() * &centred / denom;
            let trace_per_dim = cov.trace() / dim as f64;
            let lambda = WHITEN_SHRINKAGE;
            let mut shrunk = cov * (1.0 - lambda);
            for j in 0..dim {
                shrunk[(j, j)] += lambda * trace_per_dim.max(f64::MIN_POSITIVE);
            }
            let eig = SymmetricEigen::new(shrunk);
            let inv_sqrt =
                DMatrix::from_diagonal(&eig.eigenvalues.map(|v| 1.0 / v.max(1e-12).sqrt()));
            let w = &eig.eigenvectors * inv_sqrt * eig.eigenvectors.transpose();
            Some((0..dim * dim).map(|i| w[(i / dim, i % dim)]).collect())
        } else {
            None
        };
        Ok(Self {
            kind,
            dim,
            mean,
            matrix,
        })
    }

    /// Applies the transform to `rows` feature rows (each normalised first, normalised after).
    pub fn apply(&self, features: &[f64], rows: usize) -> Result<Vec<f64>, KMeansError> {
        let d = self.dim;
        let x = crate::normalize_rows(features, rows, d)?;
        let mut out = vec![0.0; rows * d];
        for r in 0..rows {
            let c: Vec<f64> = (0..d).map(|j| x[r * d + j] - self.mean[j]).collect();
            let o = &mut out[r * d..(r + 1) * d];
            match &self.matrix {
                None => o.copy_from_slice(&c),
                Some(m) => {
                    for (i, ci) in c.iter().enumerate() {
                        if *ci == 0.0 {
                            continue;
                        }
                        let row = &m[i * d..(i + 1) * d];
                        for (oj, mij) in o.iter_mut().zip(row) {
                            *oj += ci * mij;
                        }
                    }
                }
            }
        }
        // A row equal to the mean has no direction left: an error naming it (normalize_rows).
        crate::normalize_rows(&out, rows, d)
    }
}

/// How separable the classes of a bank are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Separability {
    /// Smallest cosine between prototypes of different classes.
    pub min_inter_class_cosine: f64,
    /// Largest cosine between prototypes of different classes.
    pub max_inter_class_cosine: f64,
    /// Per class: fraction of its exemplars whose nearest prototype is one of its own.
    pub nearest_prototype_accuracy: Vec<f64>,
    /// Mean of the per-class accuracies.
    pub balanced_accuracy: f64,
}

impl Separability {
    /// Whether the bank cannot tell the classes apart (collinear or not classifying its exemplars).
    pub fn degenerate(&self) -> bool {
        self.max_inter_class_cosine >= COLLINEAR_COSINE
            || self.balanced_accuracy < MIN_BALANCED_ACCURACY
    }
}

/// Separability of `prototypes` (`ΣK × dim`, rows grouped by class per `k_list`) for exemplar
/// `features` (`rows × dim`, class `class_of[i]`). Needs at least two classes.
pub fn separability(
    prototypes: &[f64],
    k_list: &[usize],
    features: &[f64],
    rows: usize,
    dim: usize,
    class_of: &[usize],
) -> Result<Separability, KMeansError> {
    let total: usize = k_list.iter().sum();
    let p = crate::normalize_rows(prototypes, total, dim)?;
    let x = crate::normalize_rows(features, rows, dim)?;
    let owner: Vec<usize> = k_list
        .iter()
        .enumerate()
        .flat_map(|(c, &k)| std::iter::repeat_n(c, k))
        .collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(u, v)| u * v).sum::<f64>();
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for i in 0..total {
        for j in i + 1..total {
            if owner[i] != owner[j] {
                let c = dot(&p[i * dim..(i + 1) * dim], &p[j * dim..(j + 1) * dim]);
                lo = lo.min(c);
                hi = hi.max(c);
            }
        }
    }
    let n_classes = k_list.len();
    let mut hit = vec![0usize; n_classes];
    let mut count = vec![0usize; n_classes];
    for r in 0..rows {
        let c = class_of.get(r).copied().unwrap_or(usize::MAX);
        if c >= n_classes {
            continue;
        }
        let xr = &x[r * dim..(r + 1) * dim];
        let mut best = (f64::NEG_INFINITY, 0usize);
        for i in 0..total {
            let s = dot(xr, &p[i * dim..(i + 1) * dim]);
            if s > best.0 {
                best = (s, i);
            }
        }
        count[c] += 1;
        hit[c] += usize::from(owner[best.1] == c);
    }
    let acc: Vec<f64> = (0..n_classes)
        .map(|c| {
            if count[c] == 0 {
                0.0
            } else {
                hit[c] as f64 / count[c] as f64
            }
        })
        .collect();
    let balanced = acc.iter().sum::<f64>() / n_classes.max(1) as f64;
    Ok(Separability {
        min_inter_class_cosine: if lo.is_finite() { lo } else { 1.0 },
        max_inter_class_cosine: if hi.is_finite() { hi } else { 1.0 },
        nearest_prototype_accuracy: acc,
        balanced_accuracy: balanced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collinear_bank_is_degenerate_and_a_separated_one_is_not() {
        // Two classes of exemplars around the same direction e0, differing by ±0.01 in e1.
        let dim = 3;
        let feats = [
            1.0, 0.01, 0.0, 1.0, 0.012, 0.0, 1.0, -0.01, 0.0, 1.0, -0.012, 0.0,
        ];
        let class_of = [0, 0, 1, 1];
        let protos = [1.0, 0.011, 0.0, 1.0, -0.011, 0.0];
        let s = separability(&protos, &[1, 1], &feats, 4, dim, &class_of).unwrap();
        // cos between (1, .011) and (1, -.011) = (1 - .000121) / (1 + .000121) = 0.999758
        assert!((s.max_inter_class_cosine - 0.999_758).abs() < 1e-5, "{s:?}");
        assert_eq!(s.nearest_prototype_accuracy, vec![1.0, 1.0]);
        assert!(s.degenerate(), "collinear");
        // Centring removes the shared direction: the prototypes become opposite.
        let c = Conditioner::fit(ConditioningKind::Centre, &feats, 4, dim, &class_of).unwrap();
        let fx = c.apply(&feats, 4).unwrap();
        let fp = c.apply(&protos, 2).unwrap();
        let s2 = separability(&fp, &[1, 1], &fx, 4, dim, &class_of).unwrap();
        assert!(s2.max_inter_class_cosine < -0.99, "{s2:?}");
        assert!(!s2.degenerate());
        // Exemplars that do not follow their prototypes: accuracy 0.5.
        let s3 = separability(&protos, &[1, 1], &feats, 4, dim, &[0, 1, 0, 1]).unwrap();
        assert_eq!(s3.balanced_accuracy, 0.5);
    }

    #[test]
    fn whitening_equalises_the_variance() {
        // 2-D data with variances 4 and 0.01 along the axes (after centring); whitening makes the
        // projected directions comparable, so the tiny axis is no longer negligible.
        let dim = 2;
        let mut feats = Vec::new();
        let mut class_of = Vec::new();
        for (i, (a, b)) in [(10.0, 2.0), (10.0, -2.0), (10.0, 0.1), (10.0, -0.1)]
            .iter()
            .enumerate()
        {
            feats.extend_from_slice(&[*a, *b]);
            class_of.push(i % 2);
        }
        let w = Conditioner::fit(ConditioningKind::Whiten, &feats, 4, dim, &class_of).unwrap();
        let m = w.matrix.as_ref().unwrap();
        assert_eq!(m.len(), 4);
        // W is symmetric.
        assert!((m[1] - m[2]).abs() < 1e-12);
        let out = w.apply(&feats, 4).unwrap();
        for r in 0..4 {
            let n: f64 = out[r * 2..r * 2 + 2].iter().map(|v| v * v).sum();
            assert!((n - 1.0).abs() < 1e-9);
        }
        // identity: only normalisation
        let id = Conditioner::fit(ConditioningKind::None, &feats, 4, dim, &class_of).unwrap();
        let o = id.apply(&[3.0, 4.0], 1).unwrap();
        assert!((o[0] - 0.6).abs() < 1e-12 && (o[1] - 0.8).abs() < 1e-12);
    }
}
