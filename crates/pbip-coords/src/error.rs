//! Error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong reading or writing a coordinate file.
///
/// Every variant names the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// The file could not be opened, read, created or written.
    #[error("{path}: I/O error: {source}")]
    Io {
        /// File concerned.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file content is malformed or of an unsupported kind.
    #[error("{path}: {msg}")]
    Format {
        /// File concerned.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A coordinate is negative and [`crate::ReadOptions::allow_negative`] is false.
    #[error(
        "{path}: negative coordinate at row {row} (x={x_px}, y={y_px}); level-0 top-left coordinates must be >= 0"
    )]
    NegativeCoordinate {
        /// File concerned.
        path: PathBuf,
        /// Row index (0-based).
        row: usize,
        /// x value (level-0 px).
        x_px: i64,
        /// y value (level-0 px).
        y_px: i64,
    },
    /// A record handed to a writer cannot be represented in the target format.
    #[error("{path}: cannot write row {row}: {msg}")]
    InvalidRecord {
        /// File concerned.
        path: PathBuf,
        /// Row index (0-based).
        row: usize,
        /// What is wrong.
        msg: String,
    },
}

impl CoordError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        CoordError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn format(path: &std::path::Path, msg: impl Into<String>) -> Self {
        CoordError::Format {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}
