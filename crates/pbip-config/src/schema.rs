//! The configuration schema: one struct per YAML section.
//!
//! Every struct denies unknown fields and fills missing keys with the defaults documented in
//! `configs/default.yaml`. Keys that the seed pipeline document defines (training, inference) default
//! to the seed's values; `configs/pbip-upstream.yaml` sets the upstream PBIP code's values instead.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Histopathology normalisation mean used by upstream PBIP (applied after dividing by 255).
pub const HISTO_MEAN: [f64; 3] = [0.66791496, 0.47791372, 0.70623304];
/// Histopathology normalisation std used by upstream PBIP.
pub const HISTO_STD: [f64; 3] = [0.1736589, 0.22564577, 0.19820057];

/// The whole pipeline configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Global random seed (sampling, shuffling, initialisation).
    #[serde(default)]
    pub seed: u64,
    /// Compute device.
    #[serde(default)]
    pub device: Device,
    /// Input and output locations.
    pub paths: Paths,
    /// Class names; index i in this list is class index i in labels and masks.
    pub class_order: Vec<String>,
    /// A class present on every slide (e.g. benign tissue): added to every slide's label for
    /// training and validation, and, with `evaluation.maps: probability`, given to every pixel where
    /// no other class reaches the gate threshold. None = upstream (labels as in the CSV).
    #[serde(default)]
    pub background_class: Option<String>,
    /// Side of the square network input patch, in pixels.
    #[serde(default = "d_patch_size")]
    pub patch_size: u32,
    /// Slide reading options.
    #[serde(default)]
    pub slide: SlideSection,
    /// Prototype construction (stages 0–2).
    #[serde(default)]
    pub prototypes: Prototypes,
    /// Segmentation network.
    #[serde(default)]
    pub model: ModelSection,
    /// Training (stage 3).
    #[serde(default)]
    pub training: Training,
    /// Validation during training.
    #[serde(default)]
    pub validation: Validation,
    /// Evaluation (stage 4).
    #[serde(default)]
    pub evaluation: Evaluation,
    /// Inference on whole slides (stage 5).
    #[serde(default)]
    pub inference: Inference,
}

fn d_patch_size() -> u32 {
    224
}

/// Compute device, written `cpu`, `tch-cpu`, `cuda`, `cuda:N`, `wgpu`, `wgpu:N` (or `gpu`: the
/// first GPU of whichever GPU backend the build has).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    /// burn-flex on the CPU (every build).
    #[default]
    Cpu,
    /// libtorch's CPU kernels (a build with the `tch` feature).
    TchCpu,
    /// An NVIDIA GPU (`tch` or `cuda` feature); `None` = the first.
    Cuda(Option<usize>),
    /// A GPU through wgpu (`wgpu` feature); `None` = wgpu's default adapter.
    Wgpu(Option<usize>),
    /// The first GPU of the GPU backend compiled in (CUDA preferred, then wgpu).
    Gpu,
}

impl Device {
    /// The accepted spellings, for messages.
    pub const SPELLINGS: &'static str = "cpu, tch-cpu, cuda, cuda:N, wgpu, wgpu:N, gpu";
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        let (name, index) = match t.split_once(':') {
            Some((n, i)) => {
                let i: usize = i.trim().parse().map_err(|_| {
                    format!("device `{s}`: the index after `:` must be a number (e.g. cuda:0)")
                })?;
                (n.trim().to_string(), Some(i))
            }
            None => (t.clone(), None),
        };
        match (name.as_str(), index) {
            ("cpu", None) => Ok(Self::Cpu),
            ("tch-cpu" | "tch_cpu", None) => Ok(Self::TchCpu),
            ("cuda", i) => Ok(Self::Cuda(i)),
            ("wgpu", i) => Ok(Self::Wgpu(i)),
            ("gpu", None) => Ok(Self::Gpu),
            ("cpu" | "tch-cpu" | "tch_cpu" | "gpu", Some(_)) => Err(format!(
                "device `{s}`: only cuda and wgpu take an index (cuda:N, wgpu:N)"
            )),
            _ => Err(format!(
                "unknown device `{s}`: expected one of {}",
                Self::SPELLINGS
            )),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::TchCpu => f.write_str("tch-cpu"),
            Self::Cuda(None) => f.write_str("cuda"),
            Self::Cuda(Some(i)) => write!(f, "cuda:{i}"),
            Self::Wgpu(None) => f.write_str("wgpu"),
            Self::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            Self::Gpu => f.write_str("gpu"),
        }
    }
}

impl TryFrom<String> for Device {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Device> for String {
    fn from(d: Device) -> String {
        d.to_string()
    }
}

/// Input and output locations. Relative paths resolve against the config file's folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paths {
    /// CSV with columns train,val,test (one slide name per cell, blanks allowed).
    pub split_csv: PathBuf,
    /// CSV with image_name plus a label column (index or multi-hot string) or one column per class.
    pub labels_csv: PathBuf,
    /// Folder holding the slides, found by file stem with any supported extension.
    pub wsi_dir: PathBuf,
    /// Folder holding one coordinate file per slide.
    pub coordinates_dir: PathBuf,
    /// Coordinate file name = `<stem><coordinates_suffix>`.
    #[serde(default = "d_coord_suffix")]
    pub coordinates_suffix: String,
    /// Optional folder of ground-truth masks (val/test).
    #[serde(default)]
    pub gt_dir: Option<PathBuf>,
    /// GT mask file name = `<stem><gt_suffix>`.
    #[serde(default = "d_gt_suffix")]
    pub gt_suffix: String,
    /// Folder where every stage writes its outputs.
    #[serde(default = "d_work_dir")]
    pub work_dir: PathBuf,
}

fn d_coord_suffix() -> String {
    ".npy".into()
}
fn d_gt_suffix() -> String {
    ".png".into()
}
fn d_work_dir() -> PathBuf {
    PathBuf::from("work_dir")
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            split_csv: PathBuf::from("split.csv"),
            labels_csv: PathBuf::from("labels.csv"),
            wsi_dir: PathBuf::from("slides"),
            coordinates_dir: PathBuf::from("coordinates"),
            coordinates_suffix: d_coord_suffix(),
            gt_dir: None,
            gt_suffix: d_gt_suffix(),
            work_dir: d_work_dir(),
        }
    }
}

/// Slide reading backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlideBackend {
    /// Pure-Rust reader when it supports the file, else OpenSlide.
    #[default]
    Auto,
    /// Pure-Rust tiled TIFF/SVS reader only.
    Rust,
    /// OpenSlide (loaded at run time) only.
    Openslide,
}

impl SlideBackend {
    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SlideBackend::Auto => "auto",
            SlideBackend::Rust => "rust",
            SlideBackend::Openslide => "openslide",
        }
    }
}

/// Meaning of (x, y) in coordinate files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoordinateOrigin {
    /// Level-0 top-left corner of the tile (hs2p/slide2vec).
    #[default]
    TopLeft,
    /// Level-0 centre of the tile (the fork's reader); converted to top-left on input.
    Centre,
}

/// Slide reading options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlideSection {
    /// Reader backend.
    pub backend: SlideBackend,
    /// Decoded-tile cache size per slide, in MiB.
    pub cache_mb: u64,
    /// Meaning of (x, y) in the input coordinate files.
    pub coordinate_origin: CoordinateOrigin,
    /// RGB fill for pixels outside the slide or transparent.
    pub background: [u8; 3],
}

impl Default for SlideSection {
    fn default() -> Self {
        SlideSection {
            backend: SlideBackend::Auto,
            cache_mb: 256,
            coordinate_origin: CoordinateOrigin::TopLeft,
            background: [255, 255, 255],
        }
    }
}

/// Prototype construction (stages 0–2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Prototypes {
    /// Maximum number of training slides sampled per class.
    pub num_per_class: usize,
    /// Maximum number of coordinates sampled per slide.
    pub samples_per_wsi: usize,
    /// Number of k-means sub-classes per class (same length and order as class_order).
    pub k_list: Vec<usize>,
    /// Encoder batch size, in patches.
    pub batch_size: usize,
    /// Feature encoder.
    pub encoder: Encoder,
    /// Cosine k-means.
    pub kmeans: KMeans,
    /// Exemplar patches shown per prototype in the stage-2 PNG sheets.
    pub sheet_patches_per_cluster: usize,
    /// Conditioning of the prototype bank against the exemplar features (stage 2).
    pub conditioning: Conditioning,
    /// Tile embeddings slide2vec already wrote, used by stage 1 instead of running the encoder.
    pub precomputed_features: PrecomputedFeatures,
}

/// `prototypes.precomputed_features`: stage 1 takes the features of the prototype coordinates
/// from slide2vec's per-slide tile embeddings (matched by slide and level-0 coordinate) instead
/// of running `prototypes.encoder` on the patches. Off while `dir` is null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrecomputedFeatures {
    /// slide2vec output folder (holding `tile_embeddings/` or `features/`), or the folder of the
    /// per-slide feature files itself; none = stage 1 runs the encoder.
    pub dir: Option<PathBuf>,
    /// Feature file name = `<slide stem><suffix>`: `.pt` (torch.save of an `[N, D]` tensor,
    /// slide2vec's default), `.npz` (array `features`) or `.npy` (`[N, D]`).
    pub suffix: String,
    /// Folder of the tile coordinates the features belong to (hs2p / slide2vec
    /// `<slide>.coordinates.npz` or `<slide>.npy`); none = slide2vec's own (`tiles/` or
    /// `coordinates/` under `dir`, or the path its `.meta.json` records).
    pub coordinates_dir: Option<PathBuf>,
    /// Name of the model that made the features (slide2vec's `model.name` / `encoder_name`, e.g.
    /// `uni`); none = what slide2vec recorded. Must name the configured encoder.
    pub encoder: Option<String>,
    /// A prototype coordinate takes the nearest tile within this many level-0 px in x and in y;
    /// 0 = the exact coordinate only.
    pub tolerance_px: u32,
}

impl Default for PrecomputedFeatures {
    fn default() -> Self {
        PrecomputedFeatures {
            dir: None,
            suffix: ".pt".into(),
            coordinates_dir: None,
            encoder: None,
            tolerance_px: 0,
        }
    }
}

/// Conditioning of the prototype bank (stage 2), recorded in the bank's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conditioning {
    /// The k-means centres as they are (upstream).
    #[default]
    None,
    /// Subtract the mean exemplar feature from features and centres, then re-normalise.
    Centre,
    /// Centre, then whiten with the exemplar covariance (ZCA, shrunk), then re-normalise.
    Whiten,
}

impl Default for Prototypes {
    fn default() -> Self {
        Prototypes {
            num_per_class: 5,
            samples_per_wsi: 1000,
            k_list: vec![3, 3],
            batch_size: 32,
            encoder: Encoder::default(),
            kmeans: KMeans::default(),
            sheet_patches_per_cluster: 8,
            conditioning: Conditioning::None,
            precomputed_features: PrecomputedFeatures::default(),
        }
    }
}

/// Encoder kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncoderKind {
    /// MedCLIP vision tower as PBIP builds it (Swin-T + 768→512 projection).
    #[default]
    Medclip,
    /// Plain Hugging Face Swin pooled features (768-D).
    HfSwin,
    /// A timm-style ViT (`prototypes.encoder.vit`: UNI, Phikon, H-optimus-0, CONCH's trunk,
    /// Virchow or an explicit architecture); the feature width is the ViT's.
    Vit,
}

/// Input normalisation of a ViT encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VitNormalization {
    /// The preset model's own mean/std, RGB, no global min-max (`normalize` and `global_minmax`
    /// are not used).
    Preset,
    /// `normalize` and `global_minmax` as configured.
    Config,
}

/// `prototypes.encoder.vit`: the ViT of `kind: vit`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VitEncoder {
    /// Named architecture: `uni`, `phikon`, `h-optimus-0`, `conch`, `virchow`; none = `arch` only.
    pub preset: Option<String>,
    /// Architecture fields overriding the preset's, or the whole architecture without a preset
    /// (pbip-encoder `VitConfig` names: `embed_dim`, `depth`, `num_heads`, `patch_size`,
    /// `img_size`, `mlp_ratio`, `mlp`, `class_token`, `num_reg_tokens`, `no_embed_class`,
    /// `init_values`, `qkv_bias`, `layer_norm_eps`, `global_pool`, `final_norm`, `fc_norm`,
    /// `pos_embed_interp`).
    pub arch: Option<std::collections::BTreeMap<String, serde_yaml::Value>>,
    /// Input normalisation; none = `preset` with a preset, else `config`.
    pub normalization: Option<VitNormalization>,
}

/// Channel order fed to a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelOrder {
    /// Red, green, blue (as read from the slide).
    #[default]
    Rgb,
    /// Blue, green, red (upstream reads PNGs with OpenCV).
    Bgr,
}

/// Input normalisation: (pixel / 255 - mean) / std per channel, in `channel_order`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Normalize {
    /// Per-channel mean (after /255).
    pub mean: Vec<f64>,
    /// Per-channel standard deviation (after /255).
    pub std: Vec<f64>,
    /// Channel order of the tensor the mean/std apply to.
    pub channel_order: ChannelOrder,
}

impl Default for Normalize {
    fn default() -> Self {
        Normalize {
            mean: HISTO_MEAN.to_vec(),
            std: HISTO_STD.to_vec(),
            channel_order: ChannelOrder::Rgb,
        }
    }
}

/// Feature encoder for prototypes and FG/BG features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Encoder {
    /// Encoder kind.
    pub kind: EncoderKind,
    /// Swin weights (.pth or .safetensors); none = seeded random init.
    pub weights: Option<PathBuf>,
    /// 768→512 projection weights; none = seeded random init (as upstream).
    pub projection_weights: Option<PathBuf>,
    /// Seed for randomly initialised encoder parts.
    pub seed: u64,
    /// Swin embedding dimension.
    pub embed_dim: usize,
    /// Swin blocks per stage.
    pub depths: Vec<usize>,
    /// Swin attention heads per stage.
    pub heads: Vec<usize>,
    /// Swin window size, in tokens.
    pub window: usize,
    /// Input normalisation.
    pub normalize: Normalize,
    /// Global min-max of the normalised input to [0,1] (upstream quirk).
    pub global_minmax: bool,
    /// Random flips/rot90 on prototype patches (upstream quirk).
    pub augment: bool,
    /// The ViT of `kind: vit`.
    pub vit: VitEncoder,
    /// The encoder's name as other tools call it (slide2vec's `model.name`, e.g. `uni2`), compared
    /// with the name of precomputed features; none = `vit.preset`, else the kind.
    pub name: Option<String>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            kind: EncoderKind::Medclip,
            weights: None,
            projection_weights: None,
            seed: 42,
            embed_dim: 96,
            depths: vec![2, 2, 6, 2],
            heads: vec![3, 6, 12, 24],
            window: 7,
            normalize: Normalize::default(),
            global_minmax: true,
            augment: false,
            vit: VitEncoder::default(),
            name: None,
        }
    }
}

/// K-means initialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum KMeansInit {
    /// Uniform random distinct rows.
    #[serde(rename = "random")]
    Random,
    /// k-means++ seeding (cosine distance).
    #[default]
    #[serde(rename = "kmeans++")]
    KMeansPlusPlus,
    /// `np.random.seed(seed); np.random.choice(n, k, replace=False)` bit-exact (upstream).
    #[serde(rename = "numpy_legacy")]
    NumpyLegacy,
}

/// What to do with an empty cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmptyCluster {
    /// Keep the previous centre (upstream).
    Keep,
    /// Move it to the point farthest from its centre.
    #[default]
    ReseedFarthest,
}

/// Cosine k-means options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KMeans {
    /// Initialisation.
    pub init: KMeansInit,
    /// Number of restarts (best inertia kept).
    pub n_init: usize,
    /// Maximum iterations per run.
    pub max_iter: usize,
    /// Empty-cluster handling.
    pub empty_cluster: EmptyCluster,
    /// Seed; none = the top-level seed.
    pub seed: Option<u64>,
    /// Paper variant: prototype = mean of the nearest_k members of each centre; none = the centre.
    pub nearest_k: Option<usize>,
}

impl Default for KMeans {
    fn default() -> Self {
        KMeans {
            init: KMeansInit::KMeansPlusPlus,
            n_init: 10,
            max_iter: 100,
            empty_cluster: EmptyCluster::ReseedFarthest,
            seed: None,
            nearest_k: None,
        }
    }
}

/// MiT backbone variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backbone {
    /// MiT-B0.
    MitB0,
    /// MiT-B1 (upstream default).
    #[default]
    MitB1,
    /// MiT-B2.
    MitB2,
    /// MiT-B3.
    MitB3,
    /// MiT-B4.
    MitB4,
    /// MiT-B5.
    MitB5,
}

impl Backbone {
    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Backbone::MitB0 => "mit_b0",
            Backbone::MitB1 => "mit_b1",
            Backbone::MitB2 => "mit_b2",
            Backbone::MitB3 => "mit_b3",
            Backbone::MitB4 => "mit_b4",
            Backbone::MitB5 => "mit_b5",
        }
    }
}

/// Segmentation network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// MiT backbone variant.
    pub backbone: Backbone,
    /// Patch-embedding stride of each of the 4 stages.
    pub strides: Vec<u32>,
    /// Pretrained backbone weights (NVlabs mit_bX.pth or safetensors); none = random init.
    pub pretrained: Option<PathBuf>,
    /// Prototype head options (defaults = upstream's head).
    pub head: Head,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            backbone: Backbone::MitB1,
            strides: vec![4, 2, 2, 1],
            pretrained: None,
            head: Head::default(),
        }
    }
}

/// How many scores are pooled into one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    /// The mean (upstream's spatial pooling).
    #[default]
    Mean,
    /// Mean of the top `topk_fraction` of the values.
    Topk,
    /// Log-sum-exp smooth maximum with sharpness `lse_r`.
    Lse,
}

/// A pooling and its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pool {
    /// Kind of pooling.
    pub kind: PoolKind,
    /// Fraction of the values top-k keeps, in (0, 1].
    pub topk_fraction: f64,
    /// Sharpness of log-sum-exp, > 0.
    pub lse_r: f64,
}

impl Pool {
    /// Checks the parameter of the chosen kind; `key` names the section in the message.
    pub fn problems(&self, key: &str) -> Vec<(String, String)> {
        let mut v = Vec::new();
        match self.kind {
            PoolKind::Topk if !(self.topk_fraction > 0.0 && self.topk_fraction <= 1.0) => v.push((
                format!("{key}.topk_fraction"),
                format!("must be in (0, 1], got {}", self.topk_fraction),
            )),
            PoolKind::Lse if !(self.lse_r.is_finite() && self.lse_r > 0.0) => v.push((
                format!("{key}.lse_r"),
                format!("must be a finite number > 0, got {}", self.lse_r),
            )),
            _ => {}
        }
        v
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            kind: PoolKind::Mean,
            topk_fraction: 0.25,
            lse_r: 5.0,
        }
    }
}

/// Prototype head options.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Head {
    /// Learnable offsets added to the fixed prototype bank before the projections.
    pub prototype_offsets: bool,
    /// L2-normalise the projected prototypes (true cosine similarity maps).
    pub normalize_prototypes: bool,
    /// Learnable bias per subclass and scale on the maps.
    pub logit_bias: bool,
    /// Spatial pooling of the maps into image logits.
    pub pool: Pool,
}

/// Optimiser name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerName {
    /// AdamW (decoupled weight decay).
    #[default]
    Adamw,
}

/// Optimiser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Optimizer {
    /// Optimiser name.
    pub name: OptimizerName,
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Adam betas (beta1, beta2).
    pub betas: [f64; 2],
    /// Adam epsilon.
    pub eps: f64,
}

impl Default for Optimizer {
    fn default() -> Self {
        Optimizer {
            name: OptimizerName::Adamw,
            lr: 1e-3,
            weight_decay: 5e-4,
            betas: [0.9, 0.999],
            eps: 1e-8,
        }
    }
}

/// Learning-rate schedule type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerType {
    /// Linear warmup then cosine decay to 0.
    #[default]
    Cosine,
    /// Linear warmup then lr0·(1 − t/T)^power (upstream, power 1, no warmup).
    Poly,
    /// Linear warmup then constant.
    Constant,
}

/// Learning-rate schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scheduler {
    /// Schedule type.
    #[serde(rename = "type")]
    pub kind: SchedulerType,
    /// Linear warmup length, in epochs.
    pub warmup_epochs: f64,
    /// Exponent of the poly schedule.
    pub power: f64,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler {
            kind: SchedulerType::Cosine,
            warmup_epochs: 1.0,
            power: 1.0,
        }
    }
}

/// Loss weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossWeights {
    /// BCE weight of each of the 4 scales.
    pub scale_weights: Vec<f64>,
    /// Weight of (L_FG + L_BG).
    pub contrastive: f64,
    /// Weight of the CAM total-variation term (seed; upstream has none).
    pub cam_smooth: f64,
    /// Weight of the CAM L1 term (seed; upstream has none).
    pub cam_sparsity: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        LossWeights {
            scale_weights: vec![0.0, 0.1, 1.0, 1.0],
            contrastive: 0.1,
            cam_smooth: 0.1,
            cam_sparsity: 0.01,
        }
    }
}

/// Training-time augmentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Augment {
    /// Horizontal flip with p = 0.5.
    pub hflip: bool,
    /// Vertical flip with p = 0.5.
    pub vflip: bool,
    /// Random 90° rotation with p = 0.5.
    pub rot90: bool,
    /// Colour jitter strength (0 = off).
    pub color_jitter: f64,
    /// H&E stain jitter strength σ in HED space (0 = off).
    pub stain_jitter: f64,
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            hflip: true,
            vflip: true,
            rot90: true,
            color_jitter: 0.0,
            stain_jitter: 0.0,
        }
    }
}

/// Training (stage 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Training {
    /// Number of epochs.
    pub epochs: usize,
    /// Batch size, in patches.
    pub batch_size: usize,
    /// Optimiser.
    pub optimizer: Optimizer,
    /// Learning-rate schedule.
    pub scheduler: Scheduler,
    /// Loss weights.
    pub loss_weights: LossWeights,
    /// Validate every N iterations (batches).
    pub validation_interval: usize,
    /// Save a checkpoint every N iterations.
    pub checkpoint_interval: usize,
    /// Iterations per epoch; none = ceil(#train slides / batch_size) (one patch per slide).
    pub iterations_per_epoch: Option<usize>,
    /// Sample slides so every class is equally represented.
    pub balance_classes: bool,
    /// Clip the global gradient norm to this value; none = no clipping.
    pub grad_clip: Option<f64>,
    /// InfoNCE temperature τ.
    pub temperature: f64,
    /// FG/BG mask threshold δ (fraction of the per-sample CAM maximum).
    pub mask_threshold: f64,
    /// Weight of mean(cam4) inside the contrastive factor (upstream 0.0005).
    pub cam_mean_weight: f64,
    /// Abort after this many consecutive steps with a non-finite loss.
    pub max_nonfinite_steps: usize,
    /// Log every N iterations.
    pub log_interval: usize,
    /// Patch-reading worker threads (0 = number of cores).
    pub num_workers: usize,
    /// Batches prepared ahead of the training step.
    pub prefetch: usize,
    /// Augmentation.
    pub augment: Augment,
    /// Network input normalisation.
    pub normalize: Normalize,
    /// Multiple-instance learning: bags of patches from one slide carry the slide label.
    pub mil: Mil,
    /// Compute precision of the backbone: `f32`, or `bf16` mixed precision (bf16 products,
    /// f32 parameters, LayerNorm, softmax and losses; pays on GPUs).
    pub precision: Precision,
}

/// `training.precision` / `inference.precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bf16 mixed precision (autocast) of the MiT backbone.
    Bf16,
}

/// Multiple-instance learning options.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mil {
    /// Patches per bag, all from one slide; 1 = every patch carries its slide's label (upstream).
    /// `training.batch_size` must be a multiple of it.
    pub bag_size: usize,
    /// Pooling of the patch logits of a bag into the bag logit (also the slide score of
    /// validation, evaluation and inference when `bag_size` > 1).
    pub pool: Pool,
    /// Also a BCE on every patch of a bag for the classes its slide does not have (each patch of
    /// a benign slide is a clean negative for tumour).
    pub negative_instances: bool,
}

impl Default for Mil {
    fn default() -> Self {
        Mil {
            bag_size: 1,
            pool: Pool {
                kind: PoolKind::Topk,
                ..Pool::default()
            },
            negative_instances: true,
        }
    }
}

impl Default for Training {
    fn default() -> Self {
        Training {
            epochs: 8,
            batch_size: 10,
            optimizer: Optimizer::default(),
            scheduler: Scheduler::default(),
            loss_weights: LossWeights::default(),
            validation_interval: 100,
            checkpoint_interval: 1000,
            iterations_per_epoch: None,
            balance_classes: false,
            grad_clip: None,
            temperature: 1.0,
            mask_threshold: 0.15,
            cam_mean_weight: 0.0,
            max_nonfinite_steps: 10,
            log_interval: 100,
            num_workers: 0,
            prefetch: 2,
            augment: Augment::default(),
            normalize: Normalize::default(),
            mil: Mil::default(),
            precision: Precision::F32,
        }
    }
}

/// Validation during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Validation {
    /// Patches per validation slide: the first N coordinates, or `all`.
    pub patches_per_slide: PatchCount,
    /// Horizontal-flip × multiplier test-time augmentation.
    pub tta: bool,
}

impl Default for Validation {
    fn default() -> Self {
        Validation {
            patches_per_slide: PatchCount::All(AllKeyword::All),
            tta: false,
        }
    }
}

/// Number of patches per slide: a count or every coordinate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PatchCount {
    /// The first N coordinates.
    Count(usize),
    /// Every coordinate ("all").
    All(AllKeyword),
}

/// The literal string `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllKeyword {
    /// `all`.
    All,
}

/// Output downsample of stage 5: a factor or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OutputDownsample {
    /// Level-0 pixels per output pixel (>= 1).
    Factor(u32),
    /// `auto`: the smallest power of two >= 4 that keeps both output sides within
    /// `max_output_side_px`.
    Auto(AutoKeyword),
}

impl OutputDownsample {
    /// The factor for a slide of `width_px x height_px` level-0 pixels.
    pub fn resolve(self, width_px: u64, height_px: u64, max_output_side_px: u64) -> u32 {
        match self {
            OutputDownsample::Factor(f) => f.max(1),
            OutputDownsample::Auto(_) => {
                let side = width_px.max(height_px);
                let max_side = max_output_side_px.max(1);
                let mut f: u64 = 4;
                while side.div_ceil(f) > max_side && f < (1 << 30) {
                    f *= 2;
                }
                f as u32
            }
        }
    }
}

/// `inference.batch_size`: a number of patches per forward pass or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BatchSize {
    /// This many patches per forward pass (>= 1).
    Fixed(usize),
    /// `auto`: chosen at run time from the device's free memory.
    Auto(AutoKeyword),
}

impl BatchSize {
    /// The fixed size, or `None` for `auto`.
    pub fn fixed(self) -> Option<usize> {
        match self {
            BatchSize::Fixed(n) => Some(n),
            BatchSize::Auto(_) => None,
        }
    }
}

impl std::fmt::Display for BatchSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchSize::Fixed(n) => write!(f, "{n}"),
            BatchSize::Auto(_) => f.write_str("auto"),
        }
    }
}

/// The literal string `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoKeyword {
    /// `auto`.
    Auto,
}

/// Evaluation protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalProtocol {
    /// Predicted image labels only (no ground-truth image labels at test time).
    #[default]
    Deployable,
    /// Upstream: CAMs multiplied by the ground-truth image label (oracle).
    UpstreamOracle,
}

/// Evaluation (stage 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Evaluation {
    /// Patches per test slide: a number or `all`.
    pub patches_per_slide: PatchCount,
    /// Test-time augmentation.
    pub use_tta: bool,
    /// Evaluation protocol.
    pub protocol: EvalProtocol,
    /// Fusion weight of each of the 4 scales.
    pub fuse_weights: Vec<f64>,
    /// TTA logit-scale multipliers (each with and without hflip).
    pub tta_multipliers: Vec<f64>,
    /// Number of prediction sample images written.
    pub num_samples: usize,
    /// What the class maps are before fusion (validation, evaluation and inference).
    pub maps: MapKind,
}

/// Per-class maps of the evaluation path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapKind {
    /// Upstream: relu, then per-patch min-max of each class map.
    #[default]
    Minmax,
    /// Calibrated: sigmoid of the class logit map; with `background_class`, the background class
    /// gets the gate threshold as its score.
    Probability,
}

impl Default for Evaluation {
    fn default() -> Self {
        Evaluation {
            patches_per_slide: PatchCount::All(AllKeyword::All),
            use_tta: false,
            protocol: EvalProtocol::Deployable,
            fuse_weights: vec![0.0, 0.3, 0.3, 0.4],
            tta_multipliers: vec![0.9, 1.0, 1.1],
            num_samples: 8,
            maps: MapKind::Minmax,
        }
    }
}

/// Morphological operation applied to the stitched mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MorphOp {
    /// Dilation then erosion.
    #[default]
    Closing,
    /// Erosion then dilation.
    Opening,
    /// No morphology.
    None,
}

/// Post-processing of stitched masks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostProcessing {
    /// Morphological operation.
    pub morphological_op: MorphOp,
    /// Structuring element side, in output pixels.
    pub kernel_size: usize,
    /// Connected components smaller than this are removed, in output pixels.
    pub min_component_size: usize,
    /// Boundary refinement.
    pub edge_refinement: bool,
}

impl Default for PostProcessing {
    fn default() -> Self {
        PostProcessing {
            morphological_op: MorphOp::Closing,
            kernel_size: 3,
            min_component_size: 100,
            edge_refinement: true,
        }
    }
}

/// Stitching of overlapping patch predictions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stitch {
    /// Uniform average.
    Mean,
    /// Gaussian-weighted average (centre pixels weigh more).
    #[default]
    Gaussian,
}

/// Dense CRF parameters (pydensecrf conventions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Crf {
    /// Mean-field iterations.
    pub iterations: usize,
    /// Gaussian kernel spatial std, in pixels.
    pub sxy_gaussian: f64,
    /// Gaussian kernel weight.
    pub compat_gaussian: f64,
    /// Bilateral kernel spatial std, in pixels.
    pub sxy_bilateral: f64,
    /// Bilateral kernel colour std, in 0–255 intensity units.
    pub srgb: f64,
    /// Bilateral kernel weight.
    pub compat_bilateral: f64,
}

impl Default for Crf {
    fn default() -> Self {
        Crf {
            iterations: 5,
            sxy_gaussian: 3.0,
            compat_gaussian: 3.0,
            sxy_bilateral: 80.0,
            srgb: 13.0,
            compat_bilateral: 10.0,
        }
    }
}

/// Inference on whole slides (stage 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Inference {
    /// Patches per forward pass, or `auto`: from the free memory of the GPU the model runs on
    /// (measured with a probe batch), 32 on the CPU.
    pub batch_size: BatchSize,
    /// Dense CRF refinement.
    pub use_crf: bool,
    /// Test-time augmentation.
    pub use_tta: bool,
    /// Overlap between neighbouring tiles, as a fraction of the tile side, in [0, 1).
    pub overlap_ratio: f64,
    /// Post-processing.
    pub post_processing: PostProcessing,
    /// Network input side, in pixels; none = the top-level patch_size.
    pub patch_size: Option<u32>,
    /// Spacing of the network input when pbip tiles a slide itself, in µm per pixel; none = the
    /// slide's level-0 mpp (tiles of patch_size level-0 pixels).
    pub spacing_um: Option<f64>,
    /// Output mask downsample relative to level 0 (level-0 px per output px), or `auto`.
    pub output_downsample: OutputDownsample,
    /// Largest output side for `output_downsample: auto`, in output pixels.
    pub max_output_side_px: u64,
    /// Overlap stitching.
    pub stitch: Stitch,
    /// Memory budget of one slide's working buffers (stitching blocks, tiles), in MiB.
    pub memory_budget_mb: u64,
    /// Folder for the slide's scratch maps on disk; none = the slide's temporary output folder.
    pub scratch_dir: Option<PathBuf>,
    /// Dense CRF parameters.
    pub crf: Crf,
    /// If set, min component size in µm² (uses slide mpp), overriding post_processing.min_component_size.
    pub min_component_size_um2: Option<f64>,
    /// Label only tissue: output pixels outside the HSV tissue mask (computed at the output level) become "no label".
    pub restrict_to_tissue: bool,
    /// Compute precision of the backbone (stages 4 and 5): `f32`, or `bf16` mixed precision.
    pub precision: Precision,
}

impl Default for Inference {
    fn default() -> Self {
        Inference {
            batch_size: BatchSize::Fixed(32),
            use_crf: true,
            use_tta: false,
            overlap_ratio: 0.5,
            post_processing: PostProcessing::default(),
            patch_size: None,
            spacing_um: None,
            output_downsample: OutputDownsample::Auto(AutoKeyword::Auto),
            max_output_side_px: 16384,
            stitch: Stitch::Gaussian,
            memory_budget_mb: 1024,
            scratch_dir: None,
            crf: Crf::default(),
            min_component_size_um2: None,
            restrict_to_tissue: true,
            precision: Precision::F32,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 0,
            device: Device::Cpu,
            paths: Paths::default(),
            class_order: vec!["benign".into(), "tumor".into()],
            background_class: None,
            patch_size: d_patch_size(),
            slide: SlideSection::default(),
            prototypes: Prototypes::default(),
            model: ModelSection::default(),
            training: Training::default(),
            validation: Validation::default(),
            evaluation: Evaluation::default(),
            inference: Inference::default(),
        }
    }
}

#[cfg(test)]
mod device_tests {
    use super::Device;

    #[test]
    fn device_spellings_parse_and_print_back() {
        for (s, d) in [
            ("cpu", Device::Cpu),
            ("tch-cpu", Device::TchCpu),
            ("cuda", Device::Cuda(None)),
            ("cuda:1", Device::Cuda(Some(1))),
            ("wgpu", Device::Wgpu(None)),
            ("wgpu:0", Device::Wgpu(Some(0))),
            ("gpu", Device::Gpu),
        ] {
            assert_eq!(s.parse::<Device>(), Ok(d), "{s}");
            assert_eq!(d.to_string(), s);
        }
        assert_eq!(" CUDA:2 ".parse::<Device>(), Ok(Device::Cuda(Some(2))));
    }

    #[test]
    fn bad_devices_say_what_is_accepted() {
        let e = "tpu".parse::<Device>().unwrap_err();
        assert!(
            e.contains("tpu") && e.contains("tch-cpu") && e.contains("cuda:N"),
            "{e}"
        );
        let e = "cuda:x".parse::<Device>().unwrap_err();
        assert!(e.contains("number"), "{e}");
        let e = "cpu:1".parse::<Device>().unwrap_err();
        assert!(e.contains("only cuda and wgpu"), "{e}");
    }
}
