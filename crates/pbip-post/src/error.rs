//! Error type of the crate.

use std::path::PathBuf;

/// Errors of pbip-post. Every variant says what is wrong and, for files, which file.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// A parameter or input array is invalid (message names the parameter and the value).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An I/O error on a file.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// File concerned.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// PNG encoding failed.
    #[error("PNG encoding of {path} failed: {source}")]
    Png {
        /// File concerned.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: png::EncodingError,
    },
    /// The stitcher would need more memory than its budget allows.
    #[error(
        "stitching memory budget exceeded: {needed_bytes} bytes needed for {live_blocks} live blocks, budget {budget_bytes} bytes (feed patches in raster order, see Stitcher::raster_order, or raise the budget / shrink blocks)"
    )]
    BudgetExceeded {
        /// Bytes that would be live.
        needed_bytes: u64,
        /// Budget in bytes.
        budget_bytes: u64,
        /// Number of blocks that would be live.
        live_blocks: usize,
    },
    /// A file is malformed or of an unsupported layout (message says which and why).
    #[error("{path}: {message}")]
    Format {
        /// File concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An error returned by a user callback (block sink).
    #[error("block sink failed: {0}")]
    Sink(String),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, PostError>;

pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(PostError::InvalidArgument(msg.into()))
}
