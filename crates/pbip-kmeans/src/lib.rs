//! Cosine (spherical) k-means for building PBIP prototypes (spec §7, `CosineSimilarityKMeans`).
//!
//! # Algorithm ([`fit`])
//!
//! 1. Every input row is L2-normalised. A row containing NaN/±inf, or with zero norm, is an
//!    error naming the row (and column). `k = 0`, fewer rows than `k`, a zero dimension or a
//!    buffer length other than `rows·dim` are errors too.
//! 2. Initial centres are `k` distinct input rows chosen by [`InitMethod`]:
//!    * `numpy_legacy` (default, upstream): `np.random.seed(seed)` then
//!      `np.random.choice(n, k, replace=False)`, reproduced bit-exactly by
//!      [`numpy_legacy::LegacyRandomState`] (MT19937 `init_genrand`, legacy Fisher–Yates
//!      permutation with masked rejection sampling). With `n_init > 1`, restart r uses the
//!      (r+1)-th `choice` call after the single seed.
//!    * `random`: k distinct rows uniformly at random (ChaCha8 seeded with `seed`).
//!    * `kmeans++`: k-means++ with cosine distance `1 − cos` (on unit vectors this is half the
//!      squared Euclidean distance, so it is standard k-means++ on the sphere).
//! 3. Lloyd iterations, at most `max_iter` (100):
//!    * assignment: each row goes to the centre of **maximum cosine similarity** (dot product of
//!      unit vectors); ties go to the **lowest** centre index (like `np.argmax`);
//!    * update: centre = mean of its members, L2-normalised. A cluster without members keeps
//!      its centre ([`EmptyClusterPolicy::Keep`], upstream) or, with
//!      [`EmptyClusterPolicy::ReseedFarthest`], receives the row least similar to its own centre
//!      (taken from a cluster with ≥ 2 members). A member mean of zero norm (members cancel out)
//!      keeps the old centre and logs a warning;
//!    * stop when the centres stop moving, with `np.allclose(old, new)` semantics:
//!      `|old − new| <= atol + rtol·|new|` element-wise, `atol = 1e-8`, `rtol = 1e-5`.
//! 4. Final assignment of every row to the returned centres (same rule). Upstream returns the
//!    labels of its last assignment step, made *before* the last centre update; the two agree
//!    whenever the run converged (up to exact ties).
//! 5. Objective = Σ_i cos(x_i, centre(x_i)) (maximised). With `n_init` runs, the run of the
//!    largest objective is kept (first one on ties).
//! 6. Prototypes: the centres (upstream code), or with `nearest_members = Some(N_K)` the paper's
//!    variant: the L2-normalised mean of the `N_K` members most similar to each centre (all
//!    members if fewer; an empty cluster keeps its centre).
//!
//! Computation is in `f64` ([`fit_f32`] converts). Upstream ran in float32 with BLAS, so
//! centres agree with upstream to float32 precision, and assignments agree except for points
//! within float32 rounding of a tie.

pub mod bank;
mod error;
mod kmeans;
pub mod numpy_legacy;

pub use bank::{Conditioner, ConditioningKind, Separability, separability};
pub use error::KMeansError;
pub use kmeans::{
    EmptyClusterPolicy, InitMethod, KMeansConfig, KMeansResult, fit, fit_f32, normalize_rows,
};
