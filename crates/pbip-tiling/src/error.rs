//! Error type of the crate.

use pbip_coords::CoordError;

/// Errors from tissue detection and tiling.
#[derive(Debug, thiserror::Error)]
pub enum TilingError {
    /// An image / mask buffer does not match its stated size.
    #[error("{what}: buffer has {got} bytes, expected {expected} ({width}x{height}x{channels})")]
    BufferSize {
        /// Which buffer (e.g. "RGB image", "tissue mask").
        what: &'static str,
        /// Stated width (px).
        width: u32,
        /// Stated height (px).
        height: u32,
        /// Channels per pixel.
        channels: usize,
        /// Expected byte count.
        expected: usize,
        /// Actual byte count.
        got: usize,
    },
    /// A parameter value is out of range or inconsistent.
    #[error("invalid {name}: {msg}")]
    InvalidParam {
        /// Parameter name.
        name: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// Writing the hs2p artifact failed.
    #[error(transparent)]
    Coords(#[from] CoordError),
}

impl TilingError {
    pub(crate) fn param(name: &'static str, msg: impl Into<String>) -> Self {
        TilingError::InvalidParam {
            name,
            msg: msg.into(),
        }
    }
}

/// Checks that `buf` holds exactly `width * height * channels` bytes.
pub(crate) fn check_buffer(
    what: &'static str,
    width: u32,
    height: u32,
    channels: usize,
    buf: &[u8],
) -> Result<usize, TilingError> {
    let n = (width as usize)
        .checked_mul(height as usize)
        .and_then(|p| p.checked_mul(channels));
    match n {
        Some(expected) if expected == buf.len() => Ok(expected / channels.max(1)),
        Some(expected) => Err(TilingError::BufferSize {
            what,
            width,
            height,
            channels,
            expected,
            got: buf.len(),
        }),
        None => Err(TilingError::param(
            "image size",
            format!("{width}x{height}x{channels} overflows usize"),
        )),
    }
}
