//! Error type of the data layer.

use std::path::PathBuf;

/// Everything that can go wrong in this crate. Variants about a file name that file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Opening or reading a slide failed (the slide error names the file).
    #[error(transparent)]
    Slide(#[from] pbip_slide::SlideError),
    /// Reading a coordinate file failed (the coordinate error names the file).
    #[error(transparent)]
    Coords(#[from] pbip_coords::CoordError),
    /// A coordinate row lies outside its slide or asks for a level the slide does not have.
    #[error(
        "{path}: coordinate row {row} (x={x_lv0}, y={y_lv0}, level {level}) is outside the slide \
         ({width_lv0}x{height_lv0} px at level 0, {levels} levels): {msg}"
    )]
    CoordinateOutside {
        /// Coordinate file.
        path: PathBuf,
        /// Row in the coordinate file (0-based).
        row: usize,
        /// Level-0 top-left x of the read.
        x_lv0: i64,
        /// Level-0 top-left y of the read.
        y_lv0: i64,
        /// Requested pyramid level.
        level: u32,
        /// Slide level-0 width.
        width_lv0: u64,
        /// Slide level-0 height.
        height_lv0: u64,
        /// Number of pyramid levels of the slide.
        levels: usize,
        /// What exactly is wrong.
        msg: String,
    },
    /// A slide has no usable coordinate (empty file, or every row outside the slide).
    #[error(
        "{path}: no usable coordinates for slide {slide:?} ({total} rows, {outside} outside the slide)"
    )]
    NoUsableCoordinates {
        /// Coordinate file.
        path: PathBuf,
        /// Slide name.
        slide: String,
        /// Rows in the file.
        total: usize,
        /// Rows rejected as outside the slide.
        outside: usize,
    },
    /// A GT mask file could not be read or decoded.
    #[error("{path}: GT mask: {msg}")]
    Mask {
        /// Mask file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A GT mask does not have the size its slide (and declared downsample) implies.
    #[error(
        "{path}: GT mask is {width_px}x{height_px} px, expected {expected} (slide level 0 is \
         {slide_width_lv0}x{slide_height_lv0} px, declared mask downsample {downsample})"
    )]
    MaskSize {
        /// Mask file.
        path: PathBuf,
        /// Mask width.
        width_px: u64,
        /// Mask height.
        height_px: u64,
        /// Accepted size(s), in words.
        expected: String,
        /// Slide level-0 width.
        slide_width_lv0: u64,
        /// Slide level-0 height.
        slide_height_lv0: u64,
        /// Declared downsample of the mask relative to level 0.
        downsample: f64,
    },
    /// A GT mask holds a value that is neither a class index nor the ignore value.
    #[error(
        "{path}: GT mask value {value} at mask pixel ({x_px}, {y_px}) is not a class index \
         (0..{num_classes}) nor the ignore value {ignore}"
    )]
    MaskLabel {
        /// Mask file.
        path: PathBuf,
        /// The bad value.
        value: u8,
        /// Mask pixel x.
        x_px: u64,
        /// Mask pixel y.
        y_px: u64,
        /// Number of classes.
        num_classes: usize,
        /// Ignore / background value.
        ignore: u8,
    },
    /// A slide was asked for its GT mask but has none.
    #[error("slide {slide:?} has no GT mask")]
    NoMask {
        /// Slide name.
        slide: String,
    },
    /// An option or argument is invalid.
    #[error("invalid data option: {0}")]
    InvalidOption(String),
    /// A resumed sampler state does not belong to this dataset / options.
    #[error("sampler state does not match: {0}")]
    StateMismatch(String),
    /// A loader worker thread panicked (a bug); the message is the panic payload.
    #[error("data loader worker panicked: {0}")]
    WorkerPanicked(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, DataError>;
