//! # pbip-view
//!
//! A local web viewer for whole-slide images and the outputs of `pbip infer` (`pbip view`).
//!
//! [`Viewer::bind`] finds the slides (files, or folders of them; id = file stem) and, with a
//! predictions folder, each slide's `predictions/<id>/` outputs and its row of
//! `batch_results.csv`; [`Viewer::serve`] then answers HTTP on the bound address (127.0.0.1 by
//! default) until the process ends:
//!
//! - the slide as a **DeepZoom** pyramid (`/slides/<id>.dzi`,
//!   `/slides/<id>_files/<level>/<col>_<row>.jpeg`), the layout OpenSeadragon and users of
//!   OpenSlide's deepzoom server expect, read through pbip-slide (every format pbip reads); tiles
//!   are JPEG (quality and tile size configurable), kept in a byte-budgeted LRU;
//! - **overlays** with the same geometry: the class mask (`mask`), the confidence heat map of each
//!   class (`confidence-<k>`) and an uncertainty map (`uncertainty`), as indexed PNGs with
//!   transparency (see [`server`]);
//! - a **page** ([`assets`]) built on OpenSeadragon (embedded, no CDN): slide list with
//!   inference status / error / tumour fraction and area / GT score, keyboard navigation, mask
//!   opacity and per-class toggles, heat maps, GeoJSON contours, legend, mini-map, scale bar.
//!
//! # Memory
//!
//! Nothing slide-sized is loaded: slides and `mask.tiff` are read by tiles, confidence maps by
//! the rows a tile samples (straight from the stored `.npz` members), and only small
//! `segmentation_mask.png` files (≤ 16 Mpx) are held when no `mask.tiff` exists. Memory is bounded
//! by the encoded-tile cache, the decoded-tile cache of each open slide times the number of slides
//! held open, and the tiles in flight ([`ViewOptions`]).
//!
//! # Security
//!
//! Only the given slides and the prediction files found for them are served, by id: no path from
//! a URL ever reaches the file system, there is no directory listing, and requests whose `Host`
//! is not the loopback server are refused (DNS rebinding). A file that cannot be read gives an
//! error (an error tile, with the reason in the `X-Pbip-Error` header), never a crash.

pub mod assets;
pub mod cache;
pub mod catalog;
pub mod dz;
pub mod error;
pub mod layers;
pub mod render;
pub mod score;
pub mod server;

pub use error::{Result, ViewError};
pub use server::{CatalogSummary, ViewOptions, Viewer};
