//! Error type of the viewer.

use std::path::PathBuf;

/// Errors of `pbip-view`. Every variant that concerns a file names it.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// A file or folder could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A slide could not be opened or read.
    #[error(transparent)]
    Slide(#[from] pbip_slide::SlideError),
    /// A prediction or GT mask could not be read (the message names the file).
    #[error(transparent)]
    Post(#[from] pbip_post::error::PostError),
    /// A prediction file is malformed or of an unsupported layout.
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A caller-supplied option or request value is invalid.
    #[error("{0}")]
    Invalid(String),
    /// Encoding a tile failed.
    #[error("encoding a tile: {0}")]
    Encode(String),
    /// The HTTP server could not start or failed.
    #[error("server: {0}")]
    Server(String),
}

/// Result alias of this crate.
pub type Result<T, E = ViewError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ViewError {
    let path = path.into();
    move |source| ViewError::Io { path, source }
}

pub(crate) fn format_err(path: impl Into<PathBuf>, msg: impl Into<String>) -> ViewError {
    ViewError::Format {
        path: path.into(),
        msg: msg.into(),
    }
}
