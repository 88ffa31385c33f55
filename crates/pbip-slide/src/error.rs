//! Error type of the slide layer.

use std::path::PathBuf;

/// Errors returned by every fallible function of this crate.
///
/// Every variant that concerns a file names that file.
#[derive(Debug, thiserror::Error)]
pub enum SlideError {
    /// The file could not be opened or read.
    #[error("{path}: I/O error: {source}")]
    Io {
        /// The slide file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a format this backend can read, or is malformed.
    #[error("{path}: {msg}")]
    Format {
        /// The slide file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The file uses a feature this backend does not implement (e.g. JPEG 2000 tiles).
    #[error("{path}: {msg}")]
    Unsupported {
        /// The slide file.
        path: PathBuf,
        /// What is unsupported (and what to do instead).
        msg: String,
    },
    /// A caller-supplied value is invalid (level out of range, zero-sized region, ...).
    #[error("{path}: invalid argument: {msg}")]
    InvalidArgument {
        /// The slide file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The OpenSlide library could not be loaded or reported an error.
    #[error("{path}: OpenSlide: {msg}")]
    OpenSlide {
        /// The slide file (empty when the library itself failed to load).
        path: PathBuf,
        /// The message from OpenSlide or the loader.
        msg: String,
    },
    /// `Backend::Auto` found no backend able to read the file.
    #[error("{path}: no backend can read this file; pure Rust: {rust}; OpenSlide: {openslide}")]
    NoBackend {
        /// The slide file.
        path: PathBuf,
        /// Why the pure-Rust backend refused the file.
        rust: String,
        /// Why OpenSlide refused the file (or could not be loaded).
        openslide: String,
    },
    /// Writing an output image failed.
    #[error("{path}: cannot write image: {msg}")]
    Write {
        /// The output path.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, SlideError>;

pub(crate) fn fmt_err(path: &std::path::Path, msg: impl Into<String>) -> SlideError {
    SlideError::Format {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

pub(crate) fn unsup_err(path: &std::path::Path, msg: impl Into<String>) -> SlideError {
    SlideError::Unsupported {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

pub(crate) fn arg_err(path: &std::path::Path, msg: impl Into<String>) -> SlideError {
    SlideError::InvalidArgument {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

pub(crate) fn io_err(path: &std::path::Path, source: std::io::Error) -> SlideError {
    SlideError::Io {
        path: path.to_path_buf(),
        source,
    }
}
