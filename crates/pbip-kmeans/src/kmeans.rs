//! Cosine (spherical) k-means.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::KMeansError;
use crate::numpy_legacy::LegacyRandomState;

/// How the initial centres are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitMethod {
    /// Upstream: `np.random.seed(seed); np.random.choice(n, k, replace=False)` (bit-exact).
    /// Restart r (0-based) uses the (r+1)-th consecutive `choice` call after the single seed.
    NumpyLegacy,
    /// k distinct rows chosen uniformly (ChaCha8 RNG seeded with `seed`).
    Random,
    /// k-means++ with cosine distance: first centre uniform, then each next centre drawn with
    /// probability ∝ min_j (1 − cos(x, c_j)) (= squared Euclidean distance / 2 on the unit
    /// sphere, i.e. standard k-means++ there). ChaCha8 RNG seeded with `seed`.
    #[serde(rename = "kmeans++", alias = "kmeans_plus_plus")]
    KMeansPlusPlus,
}

/// What happens to a cluster that receives no point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmptyClusterPolicy {
    /// Upstream: the centre stays where it was.
    Keep,
    /// The centre moves onto the point farthest from (least cosine-similar to) its own
    /// centre, taken from a cluster with at least two members; the point is moved to the empty
    /// cluster before the means are computed.
    ReseedFarthest,
}

/// Parameters of [`fit`]. `Default` = upstream behaviour with k = 3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KMeansConfig {
    /// Number of clusters.
    pub k: usize,
    /// Maximum Lloyd iterations per run (upstream 100).
    pub max_iter: usize,
    /// Initialisation.
    pub init: InitMethod,
    /// Number of runs; the run with the largest objective is kept (ties: the earliest).
    pub n_init: usize,
    /// Seed (numpy_legacy needs `0..2^32`).
    pub seed: u64,
    /// Empty-cluster handling.
    pub empty_cluster: EmptyClusterPolicy,
    /// Paper variant: prototype = L2-normalised mean of the `N_K` members most similar to
    /// each centre (`None`: prototype = centre, as upstream code).
    pub nearest_members: Option<usize>,
    /// Convergence tolerance (np.allclose `rtol`).
    pub rtol: f64,
    /// Convergence tolerance (np.allclose `atol`).
    pub atol: f64,
}

impl Default for KMeansConfig {
    fn default() -> Self {
        Self {
            k: 3,
            max_iter: 100,
            init: InitMethod::NumpyLegacy,
            n_init: 1,
            seed: 42,
            empty_cluster: EmptyClusterPolicy::Keep,
            nearest_members: None,
            rtol: 1e-5,
            atol: 1e-8,
        }
    }
}

/// Output of [`fit`]. Matrices are row-major `[k, dim]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KMeansResult {
    /// Number of clusters.
    pub k: usize,
    /// Feature dimension.
    pub dim: usize,
    /// Final centres, unit L2 rows.
    pub centres: Vec<f64>,
    /// Prototypes: equal to `centres` unless `nearest_members` is set (paper variant).
    pub prototypes: Vec<f64>,
    /// Cluster of each input row (argmax cosine to the final centres, ties → lowest index).
    pub assignment: Vec<usize>,
    /// Members per cluster.
    pub cluster_sizes: Vec<usize>,
    /// Mean cosine similarity of the members to their centre (`None` for an empty cluster).
    pub mean_cosine: Vec<Option<f64>>,
    /// Σ_i cos(x_i, centre of x_i) (maximised).
    pub objective: f64,
    /// Lloyd iterations of the kept run.
    pub iterations: usize,
    /// Whether the kept run stopped because the centres stopped moving.
    pub converged: bool,
    /// Which run (0-based) was kept.
    pub best_run: usize,
    /// Input rows used as initial centres by the kept run.
    pub init_rows: Vec<usize>,
}

impl KMeansResult {
    /// Row `j` of the centres.
    pub fn centre(&self, j: usize) -> &[f64] {
        &self.centres[j * self.dim..(j + 1) * self.dim]
    }

    /// Centres as f32 (for writing tensors).
    pub fn centres_f32(&self) -> Vec<f32> {
        self.centres.iter().map(|&v| v as f32).collect()
    }

    /// Prototypes as f32.
    pub fn prototypes_f32(&self) -> Vec<f32> {
        self.prototypes.iter().map(|&v| v as f32).collect()
    }
}

/// [`fit`] for f32 features (computation in f64).
pub fn fit_f32(
    features: &[f32],
    rows: usize,
    dim: usize,
    cfg: &KMeansConfig,
) -> Result<KMeansResult, KMeansError> {
    let data: Vec<f64> = features.iter().map(|&v| f64::from(v)).collect();
    fit(&data, rows, dim, cfg)
}

/// L2-normalises every row; errors name the first non-finite value or zero-norm row.
pub fn normalize_rows(features: &[f64], rows: usize, dim: usize) -> Result<Vec<f64>, KMeansError> {
    if dim == 0 {
        return Err(KMeansError::ZeroDim);
    }
    let expected = rows.saturating_mul(dim);
    if features.len() != expected {
        return Err(KMeansError::BadShape {
            len: features.len(),
            rows,
            dim,
            expected,
        });
    }
    let mut out = features.to_vec();
    for (row, r) in out.chunks_mut(dim).enumerate() {
        if let Some((col, &value)) = r.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(KMeansError::NonFinite { row, col, value });
        }
        let norm = r.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 || !norm.is_finite() {
            return Err(KMeansError::ZeroNorm { row });
        }
        r.iter_mut().for_each(|v| *v /= norm);
    }
    Ok(out)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Cosine k-means of `rows` feature vectors of length `dim` (row-major `features`).
/// See the crate docs for the algorithm.
pub fn fit(
    features: &[f64],
    rows: usize,
    dim: usize,
    cfg: &KMeansConfig,
) -> Result<KMeansResult, KMeansError> {
    if cfg.k == 0 {
        return Err(KMeansError::ZeroK);
    }
    let x = normalize_rows(features, rows, dim)?;
    if rows < cfg.k {
        return Err(KMeansError::TooFewRows { rows, k: cfg.k });
    }
    if cfg.max_iter == 0 {
        return Err(KMeansError::InvalidConfig {
            reason: "max_iter must be at least 1".into(),
        });
    }
    if cfg.n_init == 0 {
        return Err(KMeansError::InvalidConfig {
            reason: "n_init must be at least 1".into(),
        });
    }
    if cfg.nearest_members == Some(0) {
        return Err(KMeansError::InvalidConfig {
            reason: "nearest_members must be at least 1".into(),
        });
    }
    if !(cfg.rtol >= 0.0 && cfg.atol >= 0.0) {
        return Err(KMeansError::InvalidConfig {
            reason: format!("rtol {} and atol {} must be >= 0", cfg.rtol, cfg.atol),
        });
    }
    let mut legacy = match cfg.init {
        InitMethod::NumpyLegacy => Some(LegacyRandomState::new(
            u32::try_from(cfg.seed).map_err(|_| KMeansError::SeedOutOfRange { seed: cfg.seed })?,
        )),
        _ => None,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut best: Option<KMeansResult> = None;
    for run in 0..cfg.n_init {
        let init_rows = match cfg.init {
            InitMethod::NumpyLegacy => match legacy
                .as_mut()
                .and_then(|st| st.choice_without_replacement(rows, cfg.k))
            {
                Some(v) => v,
                None => return Err(KMeansError::TooFewRows { rows, k: cfg.k }),
            },
            InitMethod::Random => rand::seq::index::sample(&mut rng, rows, cfg.k).into_vec(),
            InitMethod::KMeansPlusPlus => kmeans_pp(&x, rows, dim, cfg.k, &mut rng),
        };
        let mut res = lloyd(&x, rows, dim, cfg, &init_rows);
        res.best_run = run;
        tracing::debug!(
            run,
            objective = res.objective,
            iterations = res.iterations,
            converged = res.converged,
            "cosine k-means run"
        );
        if best.as_ref().is_none_or(|b| res.objective > b.objective) {
            best = Some(res);
        }
    }
    // n_init >= 1, so `best` is set.
    best.ok_or_else(|| KMeansError::InvalidConfig {
        reason: "no run was made".into(),
    })
}

fn kmeans_pp(x: &[f64], rows: usize, dim: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut chosen = vec![rng.random_range(0..rows)];
    let first = &x[chosen[0] * dim..(chosen[0] + 1) * dim];
    let mut d: Vec<f64> = x
        .chunks(dim)
        .map(|r| (1.0 - dot(r, first)).max(0.0))
        .collect();
    while chosen.len() < k {
        for &c in &chosen {
            d[c] = 0.0;
        }
        let total: f64 = d.iter().sum();
        let next = if total > 0.0 {
            let mut u = rng.random::<f64>() * total;
            let mut pick = None;
            for (i, &w) in d.iter().enumerate() {
                if w > 0.0 {
                    pick = Some(i);
                    if u < w {
                        break;
                    }
                    u -= w;
                }
            }
            // `pick` is the last positive-weight row if rounding ran past the end.
            pick.unwrap_or(0)
        } else {
            // Every row coincides with a chosen centre: take a uniformly random unchosen row.
            let free: Vec<usize> = (0..rows).filter(|i| !chosen.contains(i)).collect();
            free[rng.random_range(0..free.len())]
        };
        chosen.push(next);
        let c = &x[next * dim..(next + 1) * dim];
        for (di, r) in d.iter_mut().zip(x.chunks(dim)) {
            *di = di.min((1.0 - dot(r, c)).max(0.0));
        }
    }
    chosen
}

/// Argmax of cosine to the centres (ties → lowest index) and the similarity.
fn assign(x: &[f64], dim: usize, centres: &[f64], labels: &mut [usize], sims: &mut [f64]) {
    for (i, r) in x.chunks(dim).enumerate() {
        let mut best = 0;
        let mut best_s = f64::NEG_INFINITY;
        for (j, c) in centres.chunks(dim).enumerate() {
            let s = dot(r, c);
            if s > best_s {
                best_s = s;
                best = j;
            }
        }
        labels[i] = best;
        sims[i] = best_s;
    }
}

fn allclose(old: &[f64], new: &[f64], rtol: f64, atol: f64) -> bool {
    old.iter()
        .zip(new)
        .all(|(a, b)| (a - b).abs() <= atol + rtol * b.abs())
}

fn lloyd(
    x: &[f64],
    rows: usize,
    dim: usize,
    cfg: &KMeansConfig,
    init_rows: &[usize],
) -> KMeansResult {
    let k = cfg.k;
    let mut centres: Vec<f64> = init_rows
        .iter()
        .flat_map(|&i| x[i * dim..(i + 1) * dim].iter().copied())
        .collect();
    let mut labels = vec![0usize; rows];
    let mut sims = vec![0.0f64; rows];
    let mut iterations = 0;
    let mut converged = false;
    for it in 0..cfg.max_iter {
        iterations = it + 1;
        assign(x, dim, &centres, &mut labels, &mut sims);
        let mut counts = vec![0usize; k];
        for &l in &labels {
            counts[l] += 1;
        }
        if cfg.empty_cluster == EmptyClusterPolicy::ReseedFarthest {
            reseed_empty(&mut labels, &mut sims, &mut counts);
        }
        let mut sums = vec![0.0f64; k * dim];
        for (r, &l) in x.chunks(dim).zip(&labels) {
            for (s, v) in sums[l * dim..(l + 1) * dim].iter_mut().zip(r) {
                *s += v;
            }
        }
        let mut new_centres = centres.clone();
        for j in 0..k {
            if counts[j] == 0 {
                continue; // Keep: the old centre stays
            }
            let s = &sums[j * dim..(j + 1) * dim];
            let mean: Vec<f64> = s.iter().map(|v| v / counts[j] as f64).collect();
            let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm > 0.0 && norm.is_finite() {
                for (c, m) in new_centres[j * dim..(j + 1) * dim].iter_mut().zip(&mean) {
                    *c = m / norm;
                }
            } else {
                tracing::warn!(
                    cluster = j,
                    "member mean has zero norm; keeping the previous centre"
                );
            }
        }
        let done = allclose(&centres, &new_centres, cfg.rtol, cfg.atol);
        centres = new_centres;
        if done {
            converged = true;
            break;
        }
    }
    // Final assignment against the returned centres.
    assign(x, dim, &centres, &mut labels, &mut sims);
    let mut cluster_sizes = vec![0usize; k];
    let mut sim_sum = vec![0.0f64; k];
    for (&l, &s) in labels.iter().zip(&sims) {
        cluster_sizes[l] += 1;
        sim_sum[l] += s;
    }
    let objective = sims.iter().sum();
    let mean_cosine = (0..k)
        .map(|j| (cluster_sizes[j] > 0).then(|| sim_sum[j] / cluster_sizes[j] as f64))
        .collect();
    let prototypes = match cfg.nearest_members {
        None => centres.clone(),
        Some(nk) => nearest_member_prototypes(x, dim, &centres, &labels, &sims, k, nk),
    };
    KMeansResult {
        k,
        dim,
        centres,
        prototypes,
        assignment: labels,
        cluster_sizes,
        mean_cosine,
        objective,
        iterations,
        converged,
        best_run: 0,
        init_rows: init_rows.to_vec(),
    }
}

/// Moves, for each empty cluster, the point least similar to its centre (from clusters with
/// at least two members) into it.
fn reseed_empty(labels: &mut [usize], sims: &mut [f64], counts: &mut [usize]) {
    let k = counts.len();
    for j in 0..k {
        if counts[j] > 0 {
            continue;
        }
        let mut pick: Option<usize> = None;
        for i in 0..labels.len() {
            if counts[labels[i]] < 2 {
                continue;
            }
            if pick.is_none_or(|p| sims[i] < sims[p]) {
                pick = Some(i);
            }
        }
        let Some(i) = pick else {
            return; // nothing can be moved (every cluster has at most one member)
        };
        tracing::debug!(cluster = j, row = i, "re-seeding empty cluster");
        counts[labels[i]] -= 1;
        labels[i] = j;
        counts[j] = 1;
        sims[i] = 1.0; // it is now its cluster's only member and will be its centre
    }
}

fn nearest_member_prototypes(
    x: &[f64],
    dim: usize,
    centres: &[f64],
    labels: &[usize],
    sims: &[f64],
    k: usize,
    nk: usize,
) -> Vec<f64> {
    let mut out = centres.to_vec();
    for j in 0..k {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == j).collect();
        if members.is_empty() {
            continue;
        }
        // Most similar first; ties by row index.
        members.sort_by(|&a, &b| sims[b].total_cmp(&sims[a]).then(a.cmp(&b)));
        members.truncate(nk);
        let mut mean = vec![0.0f64; dim];
        for &i in &members {
            for (m, v) in mean.iter_mut().zip(&x[i * dim..(i + 1) * dim]) {
                *m += v;
            }
        }
        let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > 0.0 && norm.is_finite() {
            for (o, m) in out[j * dim..(j + 1) * dim].iter_mut().zip(&mean) {
                *o = m / norm;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(k: usize) -> KMeansConfig {
        KMeansConfig {
            k,
            ..KMeansConfig::default()
        }
    }

    #[test]
    fn input_errors() {
        let x = [1.0, 0.0, 0.0, 1.0];
        assert_eq!(fit(&x, 2, 2, &cfg(0)), Err(KMeansError::ZeroK));
        assert_eq!(
            fit(&x, 2, 2, &cfg(3)),
            Err(KMeansError::TooFewRows { rows: 2, k: 3 })
        );
        assert!(matches!(
            fit(&[1.0, 0.0, 0.0, f64::NAN], 2, 2, &cfg(1)),
            Err(KMeansError::NonFinite { row: 1, col: 1, .. })
        ));
        assert_eq!(
            fit(&[1.0, 0.0, 0.0, 0.0], 2, 2, &cfg(1)),
            Err(KMeansError::ZeroNorm { row: 1 })
        );
        assert!(matches!(
            fit(&x, 2, 3, &cfg(1)),
            Err(KMeansError::BadShape { .. })
        ));
        let big_seed = KMeansConfig {
            seed: 1 << 33,
            ..cfg(1)
        };
        assert_eq!(
            fit(&x, 2, 2, &big_seed),
            Err(KMeansError::SeedOutOfRange { seed: 1 << 33 })
        );
        assert!(
            fit(
                &x,
                2,
                2,
                &KMeansConfig {
                    n_init: 0,
                    ..cfg(1)
                }
            )
            .is_err()
        );
    }

    #[test]
    fn empty_cluster_keeps_its_centre() {
        // All rows identical: the second centre never wins a tie and stays empty.
        let x = [2.0, 0.0, 1.0, 0.0, 3.0, 0.0];
        let xn = normalize_rows(&x, 3, 2).unwrap();
        let keep = lloyd(&xn, 3, 2, &cfg(2), &[0, 1]);
        assert_eq!(keep.cluster_sizes, vec![3, 0]);
        assert_eq!(keep.centre(1), &[1.0, 0.0]);
        assert_eq!(keep.mean_cosine[1], None);
        assert_eq!(keep.mean_cosine[0], Some(1.0));
        assert!(keep.converged);
    }

    #[test]
    fn reseed_moves_least_similar_point() {
        // clusters: 0 has rows 0,1,2 (row 2 least similar); 1 has row 3; 2 is empty.
        let mut labels = vec![0, 0, 0, 1];
        let mut sims = vec![0.9, 0.8, 0.1, 0.05];
        let mut counts = vec![3, 1, 0];
        reseed_empty(&mut labels, &mut sims, &mut counts);
        // row 3 is less similar but its cluster has a single member
        assert_eq!(labels, vec![0, 0, 2, 1]);
        assert_eq!(counts, vec![2, 1, 1]);
        // and through Lloyd: duplicated init rows no longer leave a cluster empty
        let x = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.1, 1.0];
        let xn = normalize_rows(&x, 4, 2).unwrap();
        let re = lloyd(
            &xn,
            4,
            2,
            &KMeansConfig {
                empty_cluster: EmptyClusterPolicy::ReseedFarthest,
                ..cfg(2)
            },
            &[0, 1],
        );
        assert_eq!(re.assignment[0], re.assignment[1]);
        assert_eq!(re.assignment[2], re.assignment[3]);
        assert_ne!(re.assignment[0], re.assignment[2]);
    }

    #[test]
    fn config_names() {
        let c: KMeansConfig = serde_json::from_str(
            r#"{"k": 4, "init": "kmeans++", "empty_cluster": "reseed_farthest"}"#,
        )
        .unwrap();
        assert_eq!(c.init, InitMethod::KMeansPlusPlus);
        assert_eq!(c.empty_cluster, EmptyClusterPolicy::ReseedFarthest);
        assert_eq!(c.max_iter, 100);
        assert_eq!(c.seed, 42);
        let c: KMeansConfig = serde_json::from_str(r#"{"init": "numpy_legacy"}"#).unwrap();
        assert_eq!(c, KMeansConfig::default());
        assert!(serde_json::from_str::<KMeansConfig>(r#"{"kk": 4}"#).is_err());
    }

    #[test]
    fn nearest_members_variant() {
        // One cluster; the prototype from the 2 nearest members differs from the centre.
        let x = [1.0, 0.0, 1.0, 0.05, 0.0, 1.0];
        let r = fit(
            &x,
            3,
            2,
            &KMeansConfig {
                nearest_members: Some(2),
                ..cfg(1)
            },
        )
        .unwrap();
        let p = &r.prototypes;
        assert!((p[0] * p[0] + p[1] * p[1] - 1.0).abs() < 1e-12);
        assert!(p[1] < 0.1 && p[1] > 0.0, "{p:?}");
        assert!(r.centres[1] > 0.3);
    }
}
