//! Synthetic histology-like dataset for the PBIP pipeline.
//!
//! [`generate`] writes into `opts.out_dir`:
//!
//! | path | content |
//! |---|---|
//! | `slides/<name>.tif` | tiled (256 px) JPEG pyramidal TIFF, levels /2 down to 256 px (NewSubfileType 1), mpp in X/YResolution (px/cm), optional Aperio-style description |
//! | `masks/<name>.png` | GT mask at level-0 size, 8-bit gray: 0 = benign tissue, 1 = tumour, 255 = background |
//! | `coordinates/<name>.npy` | hs2p 1.0 structured coordinates of 224 px level-0 tiles with >= 50 % tissue, x-major then y |
//! | `thumbnails/<name>.png` | RGB preview, longer side <= 512 px |
//! | `split.csv` | `train,val,test` columns of image names (no extension), blank cells padding |
//! | `labels.csv` | `image_name,label` with 0 = benign, 1 = tumor |
//! | `config.yaml` | seed, paths (relative to `out_dir`), class_order, patch_size, prototypes |
//!
//! Slides are named `slide_000` … Tissue is a few smooth random blobs (about 40–60 % of the
//! slide) on a white (240 ± 3) background. Benign tissue is wavy oriented pink stroma fibres with
//! sparse small round dark nuclei; tumour (only in slides labelled tumour, 25–50 % of their
//! tissue) is dense, clustered, large pleomorphic vesicular nuclei on pale cytoplasm. The two
//! textures have nearly the same mean colour (checked in tests), so a model must use texture.
//! The GT mask is the label function used to choose each pixel's texture, so it is exact.
//!
//! Every file is a deterministic function of the options: the same options give byte-identical
//! files. Slides are rendered band by band (nothing of slide size but the pyramid's one band per
//! level is held in memory, and PNG masks are streamed row by row).
//!
//! ```no_run
//! let opts = pbip_synth::SynthOptions {
//!     num_slides: 6,
//!     size_px: 1024,
//!     ..pbip_synth::SynthOptions::new("demo_data")
//! };
//! let summary = pbip_synth::generate(&opts)?;
//! for s in &summary.slides {
//!     println!("{} {} {} {} tiles", s.name, s.class_name, s.split.as_str(), s.num_coordinates);
//! }
//! # Ok::<(), pbip_synth::SynthError>(())
//! ```

mod texture;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use pbip_pyramid::{PyramidOptions, Region, TileCompression, aperio_description, write_pyramid};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use texture::SlideModel;
pub use texture::{LABEL_BACKGROUND, LABEL_BENIGN, LABEL_TUMOUR};

/// Class names in class-index order.
pub const CLASS_ORDER: [&str; 2] = ["benign", "tumor"];

/// Options of [`generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct SynthOptions {
    /// Output folder (created if missing; files of the same names are overwritten).
    pub out_dir: PathBuf,
    /// Number of slides, >= 4.
    pub num_slides: usize,
    /// Side of the square level-0 image in px, 512..=131072.
    pub size_px: u32,
    /// Seed of everything.
    pub seed: u64,
    /// Level-0 microns per pixel.
    pub mpp: f64,
    /// Objective magnification written into the Aperio-style description.
    pub app_mag: f64,
    /// JPEG quality of the slide tiles.
    pub jpeg_quality: u8,
    /// Pyramid tile side in px (multiple of 16).
    pub tile_size_px: u32,
    /// Coordinate tile side in level-0 px (also the config's patch_size).
    pub patch_size_px: u32,
    /// Minimum tissue fraction for a coordinate tile to be kept.
    pub min_tissue_fraction: f64,
    /// Write `thumbnails/<name>.png`.
    pub thumbnails: bool,
    /// Add an Aperio-style `ImageDescription` (`…|AppMag = 20|MPP = 0.5`). Off by default: the
    /// mpp is always in X/YResolution (px/cm), which OpenSlide 4 (generic-tiff), tifffile and
    /// pbip-slide read, while a description starting with "Aperio" makes tifffile/tiffslide
    /// parse the file as SVS and take IFD 1 for a thumbnail (OpenSlide and pbip-slide cope).
    pub aperio_description: bool,
}

impl SynthOptions {
    /// Demo defaults: 8 slides of 2048 px at 0.5 µm/px, seed 0, JPEG quality 85, 256 px tiles,
    /// 224 px coordinate tiles kept at >= 50 % tissue, thumbnails on, no Aperio description.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        Self {
            out_dir: out_dir.into(),
            num_slides: 8,
            size_px: 2048,
            seed: 0,
            mpp: 0.5,
            app_mag: 20.0,
            jpeg_quality: 85,
            tile_size_px: 256,
            patch_size_px: 224,
            min_tissue_fraction: 0.5,
            thumbnails: true,
            aperio_description: false,
        }
    }
}

/// Errors of [`generate`]; each names the file or the option that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// A bad option value.
    #[error("invalid synthetic-data option: {0}")]
    InvalidOptions(String),
    /// Creating a folder or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// File or folder.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a PNG failed.
    #[error("writing PNG {path}: {source}")]
    Png {
        /// File.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: png::EncodingError,
    },
    /// Writing a slide pyramid failed.
    #[error(transparent)]
    Pyramid(#[from] pbip_pyramid::PyramidError),
    /// Writing a coordinate file failed.
    #[error("writing coordinates {path}: {source}")]
    Coords {
        /// File.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: pbip_coords::CoordError,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Dataset split of a slide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// Training slide.
    Train,
    /// Validation slide.
    Val,
    /// Test slide.
    Test,
}

impl Split {
    /// Column name in `split.csv`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// One generated slide.
#[derive(Debug, Clone, PartialEq)]
pub struct SlideSummary {
    /// Image name without extension (as in the CSVs), e.g. `slide_003`.
    pub name: String,
    /// Slide file name, e.g. `slide_003.tif`.
    pub file_name: String,
    /// Class index (0 benign, 1 tumor).
    pub label: u8,
    /// Class name from [`CLASS_ORDER`].
    pub class_name: &'static str,
    /// Split.
    pub split: Split,
    /// Level-0 width in px.
    pub width_px: u32,
    /// Level-0 height in px.
    pub height_px: u32,
    /// Number of pyramid levels written.
    pub num_levels: usize,
    /// Number of coordinate tiles written.
    pub num_coordinates: usize,
    /// Fraction of slide pixels that are tissue.
    pub tissue_fraction: f64,
    /// Fraction of tissue pixels that are tumour (0 for benign slides).
    pub tumour_fraction: f64,
    /// Slide path.
    pub slide_path: PathBuf,
    /// GT mask path.
    pub mask_path: PathBuf,
    /// Coordinate file path.
    pub coordinates_path: PathBuf,
    /// Thumbnail path, when written.
    pub thumbnail_path: Option<PathBuf>,
    /// Slide file size.
    pub slide_bytes: u64,
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSummary {
    /// Output folder.
    pub out_dir: PathBuf,
    /// `config.yaml`.
    pub config_path: PathBuf,
    /// `split.csv`.
    pub split_csv: PathBuf,
    /// `labels.csv`.
    pub labels_csv: PathBuf,
    /// Slides in name order.
    pub slides: Vec<SlideSummary>,
    /// `prototypes.num_per_class` written to the config.
    pub num_per_class: usize,
    /// `prototypes.samples_per_wsi` written to the config.
    pub samples_per_wsi: usize,
}

/// Split / label plan for `n` slides (index = slide number).
///
/// * n = 4: train 2 (1 per class), val 1, test 1 (one benign, one tumour between them);
/// * n = 5: train 3, val 1, test 1;
/// * n >= 6: val and test each `max(2, round(0.2 n))` with at least one slide per class, the rest
///   train (both classes).
///
/// Within a split classes alternate benign, tumour, benign, …; the assignment of plan entries to
/// slide numbers is shuffled with the seed.
pub fn plan_splits(n: usize, seed: u64) -> Result<Vec<(Split, u8)>, SynthError> {
    if n < 4 {
        return Err(SynthError::InvalidOptions(format!(
            "num_slides {n} is too small: need at least 4 (both classes in train, one val and one test slide)"
        )));
    }
    let (n_val, n_test) = if n >= 6 {
        let k = ((n as f64 * 0.2).round() as usize).max(2);
        (k, k)
    } else {
        (1, 1)
    };
    let n_train = n - n_val - n_test;
    let mut plan = Vec::with_capacity(n);
    for i in 0..n_train {
        plan.push((Split::Train, (i % 2) as u8));
    }
    for i in 0..n_val {
        plan.push((Split::Val, (i % 2) as u8));
    }
    // With a single val and test slide, give them different classes.
    let test_offset = if n_val == 1 && n_test == 1 { 1 } else { 0 };
    for i in 0..n_test {
        plan.push((Split::Test, ((i + test_offset) % 2) as u8));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_5B17);
    plan.shuffle(&mut rng);
    Ok(plan)
}

fn validate(opts: &SynthOptions) -> Result<(), SynthError> {
    let bad = |m: String| Err(SynthError::InvalidOptions(m));
    if !(512..=131_072).contains(&opts.size_px) {
        return bad(format!("size_px {} not in 512..=131072", opts.size_px));
    }
    if opts.num_slides > 10_000 {
        return bad(format!("num_slides {} is more than 10000", opts.num_slides));
    }
    if !(opts.mpp.is_finite() && opts.mpp > 0.0) {
        return bad(format!("mpp {} must be finite and > 0", opts.mpp));
    }
    if !(opts.app_mag.is_finite() && opts.app_mag > 0.0) {
        return bad(format!("app_mag {} must be finite and > 0", opts.app_mag));
    }
    if !(1..=100).contains(&opts.jpeg_quality) {
        return bad(format!("jpeg_quality {} not in 1..=100", opts.jpeg_quality));
    }
    if opts.tile_size_px < 16 || !opts.tile_size_px.is_multiple_of(16) || opts.tile_size_px > 4096 {
        return bad(format!(
            "tile_size_px {} must be a multiple of 16 in 16..=4096",
            opts.tile_size_px
        ));
    }
    if opts.patch_size_px == 0 || opts.patch_size_px > opts.size_px {
        return bad(format!(
            "patch_size_px {} must be in 1..=size_px ({})",
            opts.patch_size_px, opts.size_px
        ));
    }
    if !(0.0..=1.0).contains(&opts.min_tissue_fraction) {
        return bad(format!(
            "min_tissue_fraction {} not in 0..=1",
            opts.min_tissue_fraction
        ));
    }
    Ok(())
}

/// Generates the whole dataset (see the crate docs). Deterministic in `opts`.
pub fn generate(opts: &SynthOptions) -> Result<SynthSummary, SynthError> {
    validate(opts)?;
    let plan = plan_splits(opts.num_slides, opts.seed)?;
    let out = &opts.out_dir;
    let dirs = ["slides", "masks", "coordinates"];
    for d in dirs.iter().chain(opts.thumbnails.then_some(&"thumbnails")) {
        let p = out.join(d);
        std::fs::create_dir_all(&p).map_err(io_err(&p))?;
    }

    let mut slides = Vec::with_capacity(plan.len());
    let mut seed_rng = ChaCha8Rng::seed_from_u64(opts.seed);
    for (i, &(split, label)) in plan.iter().enumerate() {
        let name = format!("slide_{i:03}");
        let slide_seed: u64 = seed_rng.random();
        let s = generate_slide(opts, &name, slide_seed, split, label)?;
        tracing::info!(
            slide = %s.name,
            class = s.class_name,
            split = split.as_str(),
            coordinates = s.num_coordinates,
            tumour_fraction = s.tumour_fraction,
            "wrote synthetic slide"
        );
        slides.push(s);
    }

    // split.csv
    let split_csv = out.join("split.csv");
    let cols: Vec<Vec<&str>> = [Split::Train, Split::Val, Split::Test]
        .iter()
        .map(|sp| {
            slides
                .iter()
                .filter(|s| s.split == *sp)
                .map(|s| s.name.as_str())
                .collect()
        })
        .collect();
    let rows = cols.iter().map(Vec::len).max().unwrap_or(0);
    let mut text = String::from("train,val,test\n");
    for r in 0..rows {
        let cells: Vec<&str> = cols
            .iter()
            .map(|c| c.get(r).copied().unwrap_or(""))
            .collect();
        text.push_str(&cells.join(","));
        text.push('\n');
    }
    write_text(&split_csv, &text)?;

    // labels.csv
    let labels_csv = out.join("labels.csv");
    let mut text = String::from("image_name,label\n");
    for s in &slides {
        text.push_str(&format!("{},{}\n", s.name, s.label));
    }
    write_text(&labels_csv, &text)?;

    // config.yaml — values sized for a CPU demo.
    let train_per_class = (0..2u8)
        .map(|c| {
            slides
                .iter()
                .filter(|s| s.split == Split::Train && s.label == c)
                .count()
        })
        .min()
        .unwrap_or(1)
        .max(1);
    let num_per_class = train_per_class.min(5);
    let samples_per_wsi = 16;
    let config_path = out.join("config.yaml");
    let config = format!(
        "# Synthetic PBIP dataset written by pbip-synth: {n} slides of {s}x{s} px at {mpp} um/px.\n\
         # Paths are relative to this file's folder.\n\
         seed: {seed}\n\
         paths:\n  split_csv: split.csv\n  labels_csv: labels.csv\n  wsi_dir: slides\n  \
         coordinates_dir: coordinates\n  coordinates_suffix: \".npy\"\n  gt_dir: masks\n  \
         gt_suffix: \".png\"\n  work_dir: work\n\
         class_order: [{c0}, {c1}]\n\
         patch_size: {patch}\n\
         prototypes:\n  num_per_class: {num_per_class}\n  samples_per_wsi: {samples_per_wsi}\n  \
         k_list: [3, 3]\n",
        n = slides.len(),
        s = opts.size_px,
        mpp = opts.mpp,
        seed = opts.seed,
        c0 = CLASS_ORDER[0],
        c1 = CLASS_ORDER[1],
        patch = opts.patch_size_px,
    );
    write_text(&config_path, &config)?;

    Ok(SynthSummary {
        out_dir: out.clone(),
        config_path,
        split_csv,
        labels_csv,
        slides,
        num_per_class,
        samples_per_wsi,
    })
}

fn write_text(path: &Path, text: &str) -> Result<(), SynthError> {
    std::fs::write(path, text).map_err(io_err(path))
}

/// Streaming per-slide accumulators, filled band by band.
struct Accum {
    width: u32,
    patch: u32,
    /// Tissue pixel counts per patch cell (cells_x * cells_y), partial edge cells included.
    tissue_per_cell: Vec<u32>,
    cells_x: u32,
    tissue_px: u64,
    tumour_px: u64,
    thumb_factor: u32,
    thumb_w: u32,
    thumb_sum: Vec<u32>,
    thumb_cnt: Vec<u32>,
}

fn generate_slide(
    opts: &SynthOptions,
    name: &str,
    seed: u64,
    split: Split,
    label: u8,
) -> Result<SlideSummary, SynthError> {
    let size = opts.size_px;
    let model = SlideModel::new(seed, size, label == LABEL_TUMOUR);
    let out = &opts.out_dir;
    let file_name = format!("{name}.tif");
    let slide_path = out.join("slides").join(&file_name);
    let mask_path = out.join("masks").join(format!("{name}.png"));
    let coordinates_path = out.join("coordinates").join(format!("{name}.npy"));

    // GT mask PNG, streamed row by row.
    let mask_file = File::create(&mask_path).map_err(io_err(&mask_path))?;
    let mut enc = png::Encoder::new(BufWriter::new(mask_file), size, size);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let png_err = |source| SynthError::Png {
        path: mask_path.clone(),
        source,
    };
    let mut mask_header = enc.write_header().map_err(png_err)?;
    let mut mask_writer = mask_header.stream_writer().map_err(png_err)?;

    let patch = opts.patch_size_px;
    let cells_x = size.div_ceil(patch);
    let thumb_factor = size.div_ceil(512).max(1);
    let thumb_w = size.div_ceil(thumb_factor);
    let mut acc = Accum {
        width: size,
        patch,
        tissue_per_cell: vec![0; (cells_x * cells_x) as usize],
        cells_x,
        tissue_px: 0,
        tumour_px: 0,
        thumb_factor,
        thumb_w,
        thumb_sum: vec![0; (thumb_w * thumb_w * 3) as usize],
        thumb_cnt: vec![0; (thumb_w * thumb_w) as usize],
    };

    let mut popts = PyramidOptions::rgb_jpeg(Some(opts.mpp));
    popts.compression = TileCompression::Jpeg {
        quality: opts.jpeg_quality,
    };
    popts.tile_size_px = opts.tile_size_px;
    popts.min_level_size_px = 256.min(size / 2);
    popts.description = opts.aperio_description.then(|| {
        aperio_description(
            size,
            size,
            opts.tile_size_px,
            opts.jpeg_quality,
            opts.app_mag,
            opts.mpp,
        )
    });
    // Classic TIFF up to ~3 GB of estimated JPEG data, BigTIFF beyond.
    popts.big_tiff = (size as u64) * (size as u64) * 3 / 4 > 3_000_000_000;

    let mut labels: Vec<u8> = Vec::new();
    let pyramid = write_pyramid(
        &slide_path,
        size,
        size,
        &popts,
        |r: &Region, buf: &mut [u8]| -> Result<(), pbip_pyramid::SourceError> {
            let w = r.width_px as usize;
            labels.resize(w * r.height_px as usize, 0);
            buf.par_chunks_mut(w * 3)
                .zip(labels.par_chunks_mut(w))
                .enumerate()
                .for_each(|(row, (rgb, lab))| {
                    let y = r.y_px + row as u32;
                    for x in 0..w {
                        let l = model.label(r.x_px + x as u32, y);
                        lab[x] = l;
                        let c = model.render(r.x_px + x as u32, y, l);
                        rgb[3 * x..3 * x + 3].copy_from_slice(&c);
                    }
                });
            mask_writer.write_all(&labels)?;
            acc.add_band(r, buf, &labels);
            Ok(())
        },
    )?;
    let Accum {
        tissue_per_cell,
        tissue_px,
        tumour_px,
        thumb_sum,
        thumb_cnt,
        ..
    } = acc;
    mask_writer.finish().map_err(png_err)?;
    mask_header.finish().map_err(png_err)?;

    // Coordinates: full 224 px tiles on the grid with step = patch, tissue >= threshold,
    // sorted x-major then y (hs2p order).
    let mut records = Vec::new();
    let full = size / patch;
    for cx in 0..full {
        for cy in 0..full {
            let t = tissue_per_cell[(cy * cells_x + cx) as usize] as f64 / (patch * patch) as f64;
            if t >= opts.min_tissue_fraction {
                records.push(pbip_coords::Hs2pV1Record {
                    x: (cx * patch) as i64,
                    y: (cy * patch) as i64,
                    tile_size_resized: patch as i64,
                    tile_level: 0,
                    resize_factor: 1.0,
                    tile_size_lv0: patch as i64,
                    target_spacing: opts.mpp,
                });
            }
        }
    }
    pbip_coords::write_hs2p_v1_npy(&coordinates_path, &records).map_err(|source| {
        SynthError::Coords {
            path: coordinates_path.clone(),
            source,
        }
    })?;

    let thumbnail_path = if opts.thumbnails {
        let p = out.join("thumbnails").join(format!("{name}.png"));
        let px: Vec<u8> = thumb_sum
            .chunks(3)
            .zip(&thumb_cnt)
            .flat_map(|(s, &n)| {
                let n = n.max(1);
                [s[0], s[1], s[2]].map(|v| ((v + n / 2) / n) as u8)
            })
            .collect();
        write_png(&p, thumb_w, thumb_w, png::ColorType::Rgb, &px)?;
        Some(p)
    } else {
        None
    };

    let total = size as f64 * size as f64;
    Ok(SlideSummary {
        name: name.to_string(),
        file_name,
        label,
        class_name: CLASS_ORDER[label as usize],
        split,
        width_px: size,
        height_px: size,
        num_levels: pyramid.levels.len(),
        num_coordinates: records.len(),
        tissue_fraction: tissue_px as f64 / total,
        tumour_fraction: if tissue_px > 0 {
            tumour_px as f64 / tissue_px as f64
        } else {
            0.0
        },
        slide_path,
        mask_path,
        coordinates_path,
        thumbnail_path,
        slide_bytes: pyramid.file_size_bytes,
    })
}

impl Accum {
    fn add_band(&mut self, r: &Region, rgb: &[u8], labels: &[u8]) {
        let w = self.width as usize;
        for row in 0..r.height_px as usize {
            let y = r.y_px as usize + row;
            let cy = y / self.patch as usize;
            let ty = y / self.thumb_factor as usize;
            let lab = &labels[row * w..(row + 1) * w];
            let px = &rgb[row * w * 3..(row + 1) * w * 3];
            for x in 0..w {
                let l = lab[x];
                if l != LABEL_BACKGROUND {
                    self.tissue_px += 1;
                    if l == LABEL_TUMOUR {
                        self.tumour_px += 1;
                    }
                    self.tissue_per_cell[cy * self.cells_x as usize + x / self.patch as usize] += 1;
                }
                let t = ty * self.thumb_w as usize + x / self.thumb_factor as usize;
                self.thumb_cnt[t] += 1;
                for c in 0..3 {
                    self.thumb_sum[3 * t + c] += px[3 * x + c] as u32;
                }
            }
        }
    }
}

fn write_png(
    path: &Path,
    width: u32,
    height: u32,
    color: png::ColorType,
    data: &[u8],
) -> Result<(), SynthError> {
    let f = File::create(path).map_err(io_err(path))?;
    let mut enc = png::Encoder::new(BufWriter::new(f), width, height);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    let png_err = |source| SynthError::Png {
        path: path.to_path_buf(),
        source,
    };
    let mut w = enc.write_header().map_err(png_err)?;
    w.write_image_data(data).map_err(png_err)?;
    w.finish().map_err(png_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_plan_rules() {
        for n in 4..=20usize {
            let plan = plan_splits(n, 3).unwrap();
            assert_eq!(plan.len(), n);
            let count = |sp: Split, c: u8| plan.iter().filter(|p| p.0 == sp && p.1 == c).count();
            assert!(
                count(Split::Train, 0) >= 1 && count(Split::Train, 1) >= 1,
                "n={n}"
            );
            let nv = plan.iter().filter(|p| p.0 == Split::Val).count();
            let nt = plan.iter().filter(|p| p.0 == Split::Test).count();
            assert!(nv >= 1 && nt >= 1, "n={n}");
            if n >= 6 {
                for sp in [Split::Val, Split::Test] {
                    assert!(count(sp, 0) >= 1 && count(sp, 1) >= 1, "n={n} {sp:?}");
                }
            } else {
                // One benign and one tumour slide between val and test.
                assert_eq!(count(Split::Val, 0) + count(Split::Test, 0), 1, "n={n}");
            }
        }
        assert!(plan_splits(3, 0).is_err());
    }

    #[test]
    fn bad_options_are_rejected() {
        let base = SynthOptions::new("/nonexistent/never_created");
        for o in [
            SynthOptions {
                size_px: 100,
                ..base.clone()
            },
            SynthOptions {
                num_slides: 2,
                ..base.clone()
            },
            SynthOptions {
                mpp: 0.0,
                ..base.clone()
            },
            SynthOptions {
                jpeg_quality: 0,
                ..base.clone()
            },
            SynthOptions {
                tile_size_px: 100,
                ..base.clone()
            },
            SynthOptions {
                min_tissue_fraction: 1.5,
                ..base.clone()
            },
        ] {
            assert!(
                matches!(generate(&o), Err(SynthError::InvalidOptions(_))),
                "{o:?}"
            );
        }
        assert!(!Path::new("/nonexistent/never_created").exists());
    }
}
