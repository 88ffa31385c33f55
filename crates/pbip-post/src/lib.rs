//! # pbip-post
//!
//! Post-processing for PBIP whole-slide inference (pipeline stage 5).
//!
//! Everything here works on an *output-level grid* (for example 1/8 of level 0) and, where maps can
//! get large, block-wise with halos or row by row on maps kept in scratch files ([`plane`]), so no
//! slide-sized array is ever held in memory, at level 0 or at the output level:
//!
//! - [`plane`]: output-level planes in memory or in scratch files, read and written by rectangles;
//!   tile grids with halos.
//! - [`stitch`]: block-wise accumulation of per-patch class confidence maps (mean or Gaussian
//!   weighting, bilinear resampling) with a memory budget; finished blocks are emitted through a callback.
//! - [`crf`]: fully-connected dense CRF (Krähenbühl & Koltun 2011) with permutohedral-lattice message
//!   passing (Adams et al. 2010, as in pydensecrf), an O(N²) brute-force reference, and a block-wise
//!   driver with halos.
//! - [`morph`]: binary / label-map closing and opening, connected components, small-component removal,
//!   sequential relabelling, exact Euclidean distance transform, boundary refinement.
//! - [`components`]: streaming (row-by-row, union-find) connected components and small-component
//!   removal on planes.
//! - [`polygons`]: streaming polygon tracing of label maps (exteriors and holes per component).
//! - [`export`]: palette / RGB / overlay PNGs, QuPath-compatible GeoJSON polygons in level-0 pixels.
//! - [`postprocess`]: the config-driven chain (arg-max, CRF, closing/opening, small components,
//!   refinement) on planes, block-wise; identical to the whole-map functions.
//! - [`npz`]: `confidence_maps.npz` writer (float16 or u8-quantised arrays, stored zip, `.npy` v1.0).

pub mod components;
pub mod crf;
pub mod error;
pub mod export;
pub mod morph;
pub mod npz;
pub mod plane;
pub mod polygons;
pub mod postprocess;
pub mod score;
pub mod stitch;

pub use error::PostError;

/// Label value meaning "no class / background / no data" in label maps (matches the GT mask convention).
pub const NO_LABEL: u8 = 255;
