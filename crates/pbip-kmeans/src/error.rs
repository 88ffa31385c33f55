//! Error type of the crate.

/// Invalid input or configuration for [`crate::fit`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KMeansError {
    /// `k` is 0.
    #[error("k must be at least 1")]
    ZeroK,
    /// Fewer rows than clusters.
    #[error("cannot make {k} clusters from {rows} rows")]
    TooFewRows {
        /// Number of input rows.
        rows: usize,
        /// Requested clusters.
        k: usize,
    },
    /// The feature dimension is 0.
    #[error("feature dimension must be at least 1")]
    ZeroDim,
    /// The flat buffer length is not `rows * dim`.
    #[error("feature buffer has {len} values, expected {rows} rows x {dim} = {expected}")]
    BadShape {
        /// Buffer length.
        len: usize,
        /// Rows claimed.
        rows: usize,
        /// Dimension claimed.
        dim: usize,
        /// rows * dim (saturating).
        expected: usize,
    },
    /// A feature is NaN or infinite.
    #[error("feature row {row} column {col} is not finite ({value})")]
    NonFinite {
        /// Row index.
        row: usize,
        /// Column index.
        col: usize,
        /// The value.
        value: f64,
    },
    /// A row has zero L2 norm and cannot be normalised.
    #[error("feature row {row} has zero L2 norm (all zeros); cosine similarity is undefined")]
    ZeroNorm {
        /// Row index.
        row: usize,
    },
    /// The seed does not fit numpy's legacy seeding range `0..2^32`.
    #[error("numpy_legacy init needs a seed in 0..=4294967295, got {seed}")]
    SeedOutOfRange {
        /// The seed.
        seed: u64,
    },
    /// Some other configuration value is unusable.
    #[error("invalid k-means configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
}
