//! hs2p-compatible tissue detection and tiling for PBIP ("pbip tiles the slide itself").
//!
//! Pipeline (mirrors hs2p 4.4.1, see `wsi-io-notes.md` §6):
//! 1. pick the segmentation level ([`select_level_for_downsample`], target 64) and read it
//!    whole as RGB8 (the caller does this, e.g. with `pbip-slide`);
//! 2. tissue mask: OpenCV-exact RGB->HSV + `inRange((90, 8, 103), (180, 255, 255))` + closing
//!    with a 4x4 kernel ([`tissue_mask_hsv`]), or the `otsu` / `threshold` methods
//!    ([`tissue_mask`]);
//! 3. drop small tissue components, fill small holes ([`filter_components`]);
//! 4. tile grid per component at the requested spacing, tissue fraction per tile, merge,
//!    dedupe, sort x-then-y ([`tile_from_mask`] / [`tile_from_seg_image`]), giving
//!    [`pbip_coords::Coordinates`] and an hs2p `.coordinates.npz` + `.meta.json`
//!    ([`Tiling::write_hs2p`]).
//!
//! Images are plain `(width, height, &[u8])` buffers: RGB8 row-major for images, one byte
//! per pixel for masks.

mod components;
pub mod cv;
mod error;
mod grid;
mod label;
mod levels;
mod mask;

pub use components::{
    BBox, FilterParams, Labels, TissueComponents, contour_areas, filter_components,
    label_components, scaled_ref_tile_area,
};
pub use error::TilingError;
pub use grid::{SlideLevels, Tiling, TilingParams, tile_from_mask, tile_from_seg_image};
pub use label::{Connectivity, RowLabeler, UnionFind, label_image};
pub use levels::{
    LevelSelection, TilePlan, plan_tiles, read_tile_size_px, select_level_for_downsample,
    select_level_for_spacing, step_lv0, step_lv0_via_read_level, tile_size_lv0,
};
pub use mask::{HsvParams, TissueMethod, blurred_saturation, tissue_mask, tissue_mask_hsv};
