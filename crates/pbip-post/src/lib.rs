//! # pbip-post
//!
//! Post-processing for PBIP whole-slide inference (pipeline stage 5).
//!
//! Everything here works on an *output-level grid* (for example 1/16 of level 0) and, where maps can
//! get large, block-wise with halos, so nothing ever needs a level-0 slide-sized array:
//!
//! - [`stitch`]: block-wise accumulation of per-patch class confidence maps (mean or Gaussian
//!   weighting, bilinear resampling) with a memory budget; finished blocks are emitted through a callback.
//! - [`crf`]: fully-connected dense CRF (Krähenbühl & Koltun 2011) with permutohedral-lattice message
//!   passing (Adams et al. 2010, as in pydensecrf), an O(N²) brute-force reference, and a block-wise
//!   driver with halos.
//! - [`morph`]: binary / label-map closing and opening, connected components, small-component removal,
//!   sequential relabelling, exact Euclidean distance transform, boundary refinement.
//! - [`export`]: palette / RGB / overlay PNGs, QuPath-compatible GeoJSON polygons in level-0 pixels.
//! - [`postprocess`]: the config-driven chain (arg-max, closing/opening, small components, refinement).
//! - [`npz`]: `confidence_maps.npz` writer (float16 or u8-quantised arrays, stored zip, `.npy` v1.0).

pub mod crf;
pub mod error;
pub mod export;
pub mod morph;
pub mod npz;
pub mod postprocess;
pub mod stitch;

pub use error::PostError;

/// Label value meaning "no class / background / no data" in label maps (matches the GT mask convention).
pub const NO_LABEL: u8 = 255;
