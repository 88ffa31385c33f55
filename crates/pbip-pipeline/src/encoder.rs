//! The prototype encoder as configured (`prototypes.encoder`), its input preprocessing, and the
//! compute device. Stage 1 builds the encoder here and saves the exact weights it used next to the
//! features (`image_features/encoder.safetensors`); training loads that file, so prototypes and the
//! training-time FG/BG features always come from the very same encoder (upstream only gets this
//! right when torch's RNG happens to be in the same state).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use pbip_config::{ChannelOrder, Config, Encoder as EncoderCfg, EncoderKind, VitNormalization};
use pbip_encoder::{
    EncoderError, MedClipVision, SwinConfig, Vit, VitConfig, VitPreset, vit_preset,
};
use pbip_weights::{HostTensor, TensorMap};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::PipelineError;

/// Metadata key under which pbip stores its JSON description in safetensors files.
pub const META_KEY: &str = "pbip";

/// Where the encoder weights came from (stored in every output that depends on them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderIdentity {
    /// `medclip`, `hf_swin` or `vit`.
    pub kind: String,
    /// Human-readable source: `random, seed S` or `file <path>`.
    pub source: String,
    /// SHA-256 of the weights file(s) (`swin[+projection]`), `None` for random weights.
    pub sha256: Option<String>,
    /// True when any part was randomly initialised (no pretrained weights).
    pub random: bool,
    /// Swin architecture.
    pub swin: SwinConfig,
    /// ViT architecture (`kind: vit`; `swin` is then unused). Absent in files of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vit: Option<VitConfig>,
}

/// The YAML spelling of an encoder kind (`medclip`, `hf_swin`, `vit`), as recorded in
/// [`EncoderIdentity::kind`].
pub fn kind_name(kind: EncoderKind) -> &'static str {
    match kind {
        EncoderKind::Medclip => "medclip",
        EncoderKind::HfSwin => "hf_swin",
        EncoderKind::Vit => "vit",
    }
}

/// The configured encoder's name as other tools (slide2vec) call the model: `prototypes.encoder.name`,
/// else the ViT preset (its canonical spelling), else the kind.
pub fn model_name(enc: &EncoderCfg) -> String {
    if let Some(n) = &enc.name {
        return n.trim().to_string();
    }
    if enc.kind == EncoderKind::Vit
        && let Some(p) = &enc.vit.preset
    {
        return vit_preset(p).map_or_else(|_| p.trim().to_string(), |v| v.name.to_string());
    }
    kind_name(enc.kind).to_string()
}

/// How the configured encoder is described in messages: its name plus how it is configured
/// (`uni (kind vit, vit.preset uni)`).
pub fn describe(enc: &EncoderCfg) -> String {
    let name = model_name(enc);
    let mut how = vec![format!("kind {}", kind_name(enc.kind))];
    if enc.kind == EncoderKind::Vit {
        match &enc.vit.preset {
            Some(p) => how.push(format!("vit.preset {p}")),
            None => how.push("vit.arch".into()),
        }
    }
    if let Some(n) = &enc.name {
        how.push(format!("name {n}"));
    }
    format!("`{name}` ({})", how.join(", "))
}

/// Whether two model names mean the same model: compared ignoring case and any character other
/// than letters and digits (`H-optimus-0` = `h_optimus_0`, but `uni` ≠ `uni2`).
pub fn same_model_name(a: &str, b: &str) -> bool {
    let key = |s: &str| -> String {
        s.chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let (ka, kb) = (key(a), key(b));
    !ka.is_empty() && ka == kb
}

/// The Swin architecture of the config.
pub fn swin_config(enc: &EncoderCfg) -> SwinConfig {
    SwinConfig {
        embed_dim: enc.embed_dim,
        depths: enc.depths.clone(),
        num_heads: enc.heads.clone(),
        window_size: enc.window,
        ..SwinConfig::swin_tiny()
    }
}

/// The prototype / FG-BG encoder: the MedCLIP Swin tower (`medclip`, `hf_swin`) or a ViT (`vit`).
/// Stages 1 and 3 use it through these methods whatever it is.
#[derive(Debug)]
pub enum EncoderModel {
    /// The MedCLIP vision tower (Swin + projection).
    Swin(MedClipVision),
    /// A timm-style ViT.
    Vit(Vit),
}

impl EncoderModel {
    /// Normalised images `[B, 3, H, W]` → features: the projected MedCLIP features, or the ViT's
    /// pooled features. Differentiable w.r.t. the images.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Self::Swin(m) => m.forward(images),
            Self::Vit(m) => m.forward(images),
        }
    }

    /// The Swin pooled features before the projection (`hf_swin`); a ViT's pooled features.
    pub fn pooled(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Self::Swin(m) => m.pooled(images),
            Self::Vit(m) => m.forward(images),
        }
    }

    /// [`EncoderModel::forward`] with the input shape checked first.
    pub fn try_forward(&self, images: Tensor<4>) -> Result<Tensor<2>, EncoderError> {
        match self {
            Self::Swin(m) => m.try_forward(images),
            Self::Vit(m) => m.try_forward(images),
        }
    }

    /// The same encoder with its parameters frozen (gradients still reach the images).
    pub fn frozen(self) -> Self {
        match self {
            Self::Swin(m) => Self::Swin(m.frozen()),
            Self::Vit(m) => Self::Vit(m.frozen()),
        }
    }

    /// The exact weights in use (Swin: `model.*` + `projection_head.weight`; ViT: timm names).
    pub fn to_tensor_map(&self) -> Result<TensorMap, EncoderError> {
        match self {
            Self::Swin(m) => m.to_tensor_map(""),
            Self::Vit(m) => m.to_tensor_map(""),
        }
    }
}

fn vit_err(message: impl std::fmt::Display) -> PipelineError {
    PipelineError::Data {
        stage: "encoder",
        message: format!("prototypes.encoder.vit: {message}"),
    }
}

/// The ViT of `prototypes.encoder.vit`: the preset's architecture (if any) with the `arch` fields
/// on top, and the preset.
pub fn vit_config(enc: &EncoderCfg) -> Result<(VitConfig, Option<VitPreset>), PipelineError> {
    let v = &enc.vit;
    let preset = v
        .preset
        .as_deref()
        .map(vit_preset)
        .transpose()
        .map_err(vit_err)?;
    if preset.is_none() && v.arch.is_none() {
        return Err(vit_err(
            "kind: vit needs vit.preset (uni, phikon, h-optimus-0, conch, virchow) or vit.arch",
        ));
    }
    if preset.is_none() && v.normalization == Some(VitNormalization::Preset) {
        return Err(vit_err("normalization: preset needs vit.preset"));
    }
    let mut json = match &preset {
        Some(p) => serde_json::to_value(&p.config).map_err(vit_err)?,
        None => serde_json::Value::Object(serde_json::Map::new()),
    };
    if let Some(arch) = &v.arch {
        let over = serde_json::to_value(arch).map_err(vit_err)?;
        if let (Some(base), serde_json::Value::Object(fields)) = (json.as_object_mut(), over) {
            base.extend(fields);
        }
    }
    let cfg = VitConfig::from_json(&json.to_string()).map_err(vit_err)?;
    Ok((cfg, preset))
}

/// The preset's mean / std when `kind: vit` normalises as its preset.
fn vit_preset_normalization(enc: &EncoderCfg) -> Option<([f32; 3], [f32; 3])> {
    if enc.kind != EncoderKind::Vit {
        return None;
    }
    let name = enc.vit.preset.as_deref()?;
    if enc.vit.normalization == Some(VitNormalization::Config) {
        return None;
    }
    vit_preset(name).ok().map(|p| (p.mean, p.std))
}

/// Builds the ViT of `kind: vit` from `weights` (timm or Hugging Face names, under any of the
/// usual prefixes) or, without weights, seeded random.
fn build_vit(
    cfg: &Config,
    device: &Device,
) -> Result<(EncoderModel, EncoderIdentity), PipelineError> {
    let enc = &cfg.prototypes.encoder;
    let (vit, preset) = vit_config(enc)?;
    let name = preset.as_ref().map_or("custom", |p| p.name);
    if enc.projection_weights.is_some() {
        tracing::warn!("prototypes.encoder.projection_weights is not used with kind: vit");
    }
    let (model, source, sha256, random) = match &enc.weights {
        None => {
            tracing::warn!(
                seed = enc.seed,
                "prototypes.encoder.weights is not set: using a RANDOMLY initialised ViT ({name}, \
                 seed {}); prototypes will carry little meaning.",
                enc.seed
            );
            let m = Vit::random(&vit, enc.seed, device).map_err(vit_err)?;
            (m, format!("random, seed {}", enc.seed), None, true)
        }
        Some(value) => {
            let path = &weights_file(value, "prototypes.encoder.weights")?;
            let map = read_weights(path)?;
            let sha = crate::sha256_file(path)?;
            let prefix = Vit::detect_prefix(&map).map_or("", |(p, _)| p);
            let m = Vit::from_tensor_map(&map, prefix, &vit, device)
                .map_err(|e| weights_err(path, e))?;
            let source = format!("file {}", describe_file(value, path));
            (m, source, Some(sha), false)
        }
    };
    tracing::info!(
        encoder = name,
        features = vit.output_dim(),
        "ViT prototype encoder"
    );
    let identity = EncoderIdentity {
        kind: "vit".into(),
        source,
        sha256,
        random,
        swin: swin_config(enc),
        vit: Some(vit),
    };
    Ok((EncoderModel::Vit(model), identity))
}

fn weights_err(path: &Path, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Data {
        stage: "encoder",
        message: format!("{}: {e}", path.display()),
    }
}

/// A weights config value (`key`) as a local file: a path as it is, or a hub reference
/// (`hf:org/name[@revision][/file]`, `hf:PRESET`) fetched into the Hugging Face cache (only read
/// from it with `HF_HUB_OFFLINE=1`).
pub fn weights_file(value: &Path, key: &str) -> Result<PathBuf, PipelineError> {
    pbip_hub::resolve_weights_path(value).map_err(|e| PipelineError::Data {
        stage: "weights",
        message: format!("{key}: {e}"),
    })
}

/// The local path, plus the hub reference it came from.
fn describe_file(value: &Path, path: &Path) -> String {
    if pbip_hub::is_hub_ref(value) {
        format!("{} ({})", path.display(), value.display())
    } else {
        path.display().to_string()
    }
}

fn read_weights(path: &Path) -> Result<TensorMap, PipelineError> {
    pbip_weights::read_tensors(path)
        .map(|(m, _)| m)
        .map_err(|e| weights_err(path, e))
}

/// The projection matrix of a `projection_weights` file: `projection_head.weight` (under any prefix)
/// or the file's only tensor, `[proj_dim, num_features]` (torch layout).
fn read_projection(path: &Path) -> Result<HostTensor, PipelineError> {
    let map = read_weights(path)?;
    if let Some((_, t)) = map
        .iter()
        .find(|(k, _)| k.ends_with("projection_head.weight"))
    {
        return Ok(t.clone());
    }
    if map.len() == 1
        && let Some(t) = map.values().next()
    {
        return Ok(t.clone());
    }
    Err(weights_err(
        path,
        format!(
            "expected a tensor named `projection_head.weight` or a single tensor, found {}",
            map.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    ))
}

/// Builds the encoder of `prototypes.encoder`: a MedCLIP-layout file (`vision_model.*`,
/// `clip.vision_model.*`, or the tower's own `model.*` + `projection_head.weight`), or a Hugging Face
/// Swin checkpoint plus `projection_weights` (or a seeded random projection), or — without
/// `weights` — a seeded random tower (logged as a warning and recorded in the identity).
pub fn build_encoder(
    cfg: &Config,
    device: &Device,
) -> Result<(EncoderModel, EncoderIdentity), PipelineError> {
    let enc = &cfg.prototypes.encoder;
    if enc.kind == EncoderKind::Vit {
        return build_vit(cfg, device);
    }
    let swin = swin_config(enc);
    let kind = kind_name(enc.kind).to_string();
    let enc_err = |e: pbip_encoder::EncoderError, what: &Path| weights_err(what, e);
    match &enc.weights {
        None => {
            tracing::warn!(
                seed = enc.seed,
                "prototypes.encoder.weights is not set: using a RANDOMLY initialised Swin encoder \
                 (seed {}); prototypes will carry little meaning. Set it to a MedCLIP pytorch_model.bin \
                 or a Hugging Face Swin checkpoint.",
                enc.seed
            );
            let model = MedClipVision::random(&swin, enc.seed, device).map_err(|e| {
                PipelineError::Data {
                    stage: "encoder",
                    message: e.to_string(),
                }
            })?;
            let identity = EncoderIdentity {
                kind,
                source: format!("random, seed {}", enc.seed),
                sha256: None,
                random: true,
                swin,
                vit: None,
            };
            Ok((EncoderModel::Swin(model), identity))
        }
        Some(value) => {
            let path = &weights_file(value, "prototypes.encoder.weights")?;
            let map = read_weights(path)?;
            let mut sha = crate::sha256_file(path)?;
            let mut random = false;
            let mut source = format!("file {}", describe_file(value, path));
            let model = match MedClipVision::detect_prefix(&map) {
                Some(prefix)
                    if map.contains_key(&format!("{prefix}{}", "projection_head.weight")) =>
                {
                    if enc.projection_weights.is_some() {
                        tracing::warn!(
                            "{} holds a projection head; prototypes.encoder.projection_weights is ignored",
                            path.display()
                        );
                    }
                    MedClipVision::from_tensor_map(&map, prefix, &swin, device)
                        .map_err(|e| enc_err(e, path))?
                }
                found => {
                    // A plain Swin checkpoint (HF `SwinModel`, or under `swin.` / `model.`).
                    let swin_prefix = match found {
                        Some(p) => format!("{p}model."),
                        None if map.keys().any(|k| k.starts_with("swin.embeddings.")) => {
                            "swin.".to_string()
                        }
                        None => String::new(),
                    };
                    let projection = match &enc.projection_weights {
                        Some(pv) => {
                            let pp = &weights_file(pv, "prototypes.encoder.projection_weights")?;
                            sha = format!("{sha}+{}", crate::sha256_file(pp)?);
                            source = format!("{source} + projection {}", describe_file(pv, pp));
                            Some(read_projection(pp)?)
                        }
                        None => {
                            if enc.kind == EncoderKind::Medclip {
                                random = true;
                                source = format!("{source} + random projection, seed {}", enc.seed);
                                tracing::warn!(
                                    "no projection_weights: the 768→512 projection is randomly initialised \
                                     (seed {}), as upstream PBIP does",
                                    enc.seed
                                );
                            }
                            None
                        }
                    };
                    MedClipVision::from_swin(
                        &map,
                        &swin_prefix,
                        projection.as_ref(),
                        enc.seed,
                        &swin,
                        device,
                    )
                    .map_err(|e| enc_err(e, path))?
                }
            };
            Ok((
                EncoderModel::Swin(model),
                EncoderIdentity {
                    kind,
                    source,
                    sha256: Some(sha),
                    random,
                    swin,
                    vit: None,
                },
            ))
        }
    }
}

/// Saves the exact encoder weights (Swin: `model.*` + `projection_head.weight`; ViT: timm names)
/// with the identity as metadata, atomically.
pub fn save_encoder(
    path: &Path,
    model: &EncoderModel,
    identity: &EncoderIdentity,
) -> Result<(), PipelineError> {
    let map = model.to_tensor_map().map_err(|e| weights_err(path, e))?;
    let mut meta = BTreeMap::new();
    meta.insert(
        META_KEY.to_string(),
        serde_json::to_string(identity).map_err(|e| weights_err(path, e))?,
    );
    pbip_weights::write_safetensors_atomic(path, &map, &meta).map_err(|e| weights_err(path, e))
}

/// Loads an encoder saved by [`save_encoder`].
pub fn load_saved_encoder(
    path: &Path,
    device: &Device,
) -> Result<(EncoderModel, EncoderIdentity), PipelineError> {
    if !path.is_file() {
        return Err(weights_err(
            path,
            "does not exist: run `pbip embed-prototypes` first (with \
             prototypes.precomputed_features it saves the configured encoder only while \
             training.loss_weights.contrastive is not 0; rerun it after turning the contrastive \
             terms on)",
        ));
    }
    let (map, meta) = pbip_weights::read_tensors(path).map_err(|e| weights_err(path, e))?;
    let identity: EncoderIdentity = meta
        .get(META_KEY)
        .ok_or_else(|| {
            weights_err(
                path,
                "no pbip metadata: not an encoder file written by `pbip embed-prototypes`",
            )
        })
        .and_then(|s| serde_json::from_str(s).map_err(|e| weights_err(path, e)))?;
    let model = match &identity.vit {
        Some(vit) => EncoderModel::Vit(
            Vit::from_tensor_map(&map, "", vit, device).map_err(|e| weights_err(path, e))?,
        ),
        None => EncoderModel::Swin(
            MedClipVision::from_tensor_map(&map, "", &identity.swin, device)
                .map_err(|e| weights_err(path, e))?,
        ),
    };
    Ok((model, identity))
}

/// How an RGB patch becomes the encoder input (recorded in the outputs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Per-channel mean after /255, in `channel_order`.
    pub mean: [f32; 3],
    /// Per-channel std after /255, in `channel_order`.
    pub std: [f32; 3],
    /// `rgb` or `bgr`.
    pub channel_order: String,
    /// Min-max of each normalised image (all three channels together) to [0, 1].
    pub global_minmax: bool,
    /// Seeded random flips / rot90 (upstream quirk).
    pub augment: bool,
    /// Seed of the augmentation.
    pub seed: u64,
}

impl Preprocess {
    /// The preprocessing of `prototypes.encoder` (for `kind: vit` with a preset, unless
    /// `vit.normalization: config`: the preset's mean/std, RGB, no global min-max).
    pub fn from_config(cfg: &Config) -> Self {
        if let Some((mean, std)) = vit_preset_normalization(&cfg.prototypes.encoder) {
            return Preprocess {
                mean,
                std,
                channel_order: "rgb".into(),
                global_minmax: false,
                augment: cfg.prototypes.encoder.augment,
                seed: cfg.prototypes.encoder.seed,
            };
        }
        let n = &cfg.prototypes.encoder.normalize;
        let at = |v: &[f64], i: usize| v.get(i).copied().unwrap_or(0.0) as f32;
        Preprocess {
            mean: [at(&n.mean, 0), at(&n.mean, 1), at(&n.mean, 2)],
            std: [at(&n.std, 0), at(&n.std, 1), at(&n.std, 2)],
            channel_order: match n.channel_order {
                ChannelOrder::Rgb => "rgb".into(),
                ChannelOrder::Bgr => "bgr".into(),
            },
            global_minmax: cfg.prototypes.encoder.global_minmax,
            augment: cfg.prototypes.encoder.augment,
            seed: cfg.prototypes.encoder.seed,
        }
    }

    /// One square RGB8 patch (`side_px² × 3`, HWC) → CHW f32 (`3 × side_px²`) into `out`.
    /// Steps: /255 → channel order → (x − mean) / std → (augment: h-flip p½, v-flip p½, rot90·k,
    /// from ChaCha8 seeded with `seed` and stream `row`) → (global min-max over the image).
    pub fn apply(&self, rgb: &[u8], side_px: usize, row: u64, out: &mut [f32]) {
        let n = side_px * side_px;
        let bgr = self.channel_order == "bgr";
        for c in 0..3 {
            let src_c = if bgr { 2 - c } else { c };
            let (m, s) = (self.mean[c], self.std[c]);
            for i in 0..n {
                out[c * n + i] = (f32::from(rgb[i * 3 + src_c]) / 255.0 - m) / s;
            }
        }
        if self.augment {
            let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(self.seed);
            rng.set_stream(row);
            let hflip = rng.random_bool(0.5);
            let vflip = rng.random_bool(0.5);
            let rot = rng.random_range(0..4u8);
            let src = out.to_vec();
            for c in 0..3 {
                for y in 0..side_px {
                    for x in 0..side_px {
                        // Output pixel (x, y) takes source pixel after flips then rot90 (counter-clockwise) k times.
                        let (mut sx, mut sy) = (x, y);
                        for _ in 0..rot {
                            (sx, sy) = (side_px - 1 - sy, sx);
                        }
                        if vflip {
                            sy = side_px - 1 - sy;
                        }
                        if hflip {
                            sx = side_px - 1 - sx;
                        }
                        out[c * n + y * side_px + x] = src[c * n + sy * side_px + sx];
                    }
                }
            }
        }
        if self.global_minmax {
            let img = &mut out[..3 * n];
            let (lo, hi) = img
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                    (l.min(v), h.max(v))
                });
            let range = hi - lo;
            for v in img.iter_mut() {
                *v = if range > 0.0 { (*v - lo) / range } else { 0.0 };
            }
        }
    }
}

/// Runs the encoder on a CHW f32 batch (`n × 3 × side × side`), returning `n × dim` features:
/// projected MedCLIP features (`medclip`), pooled Swin features (`hf_swin`) or the ViT's pooled
/// features (`vit`).
pub fn encode_batch(
    model: &EncoderModel,
    kind: EncoderKind,
    chw: Vec<f32>,
    n: usize,
    side_px: usize,
    device: &Device,
) -> Result<Vec<f32>, PipelineError> {
    let x: Tensor<4> = Tensor::from_data(TensorData::new(chw, [n, 3, side_px, side_px]), device);
    let y = match kind {
        EncoderKind::Medclip | EncoderKind::Vit => {
            model.try_forward(x).map_err(|e| PipelineError::Data {
                stage: "encoder",
                message: e.to_string(),
            })?
        }
        EncoderKind::HfSwin => model.pooled(x),
    };
    y.try_into_vec_as::<f32>().map_err(|e| PipelineError::Data {
        stage: "encoder",
        message: format!("{e:?}"),
    })
}

/// Path of the saved encoder in a work dir.
pub fn saved_encoder_path(cfg: &Config) -> PathBuf {
    cfg.paths
        .work_dir
        .join(crate::artifacts::exemplars::OUTPUT_DIR)
        .join(crate::artifacts::exemplars::ENCODER_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pre(augment: bool, minmax: bool) -> Preprocess {
        Preprocess {
            mean: [0.5, 0.25, 0.0],
            std: [0.5, 0.25, 1.0],
            channel_order: "rgb".into(),
            global_minmax: minmax,
            augment,
            seed: 3,
        }
    }

    #[test]
    fn normalise_by_hand() {
        // 1x1 patch RGB (255, 0, 51): (1-.5)/.5 = 1, (0-.25)/.25 = -1, (.2-0)/1 = .2
        let mut out = vec![0f32; 3];
        pre(false, false).apply(&[255, 0, 51], 1, 0, &mut out);
        assert_eq!(out[0], 1.0);
        assert_eq!(out[1], -1.0);
        assert!((out[2] - 0.2).abs() < 1e-7);
        let mut bgr = pre(false, false);
        bgr.channel_order = "bgr".into();
        bgr.apply(&[255, 0, 51], 1, 0, &mut out);
        // channel 0 now holds B = 0.2 → (0.2 - 0.5) / 0.5 = -0.6
        assert!((out[0] + 0.6).abs() < 1e-6);
        // global min-max: values 1, -1, .2 → 1, 0, .6
        pre(false, true).apply(&[255, 0, 51], 1, 0, &mut out);
        assert_eq!(out[0], 1.0);
        assert_eq!(out[1], 0.0);
        assert!((out[2] - 0.6).abs() < 1e-6);
    }

    #[test]
    fn augmentation_is_a_seeded_permutation_of_pixels() {
        let side = 4;
        let rgb: Vec<u8> = (0..side * side * 3).map(|i| (i * 5) as u8).collect();
        let mut plain = vec![0f32; 3 * side * side];
        pre(false, false).apply(&rgb, side, 0, &mut plain);
        let mut seen_different = false;
        for row in 0..16 {
            let mut a = vec![0f32; 3 * side * side];
            let mut b = vec![0f32; 3 * side * side];
            pre(true, false).apply(&rgb, side, row, &mut a);
            pre(true, false).apply(&rgb, side, row, &mut b);
            assert_eq!(a, b, "same seed and row give the same augmentation");
            let mut sa = a.clone();
            let mut sp = plain.clone();
            sa.sort_by(f32::total_cmp);
            sp.sort_by(f32::total_cmp);
            assert_eq!(sa, sp, "augmentation only moves pixels");
            seen_different |= a != plain;
        }
        assert!(seen_different, "some rows must be flipped or rotated");
    }

    fn vit_cfg(preset: Option<&str>, arch: Option<&str>) -> Config {
        let mut cfg = Config::default();
        let enc = &mut cfg.prototypes.encoder;
        enc.kind = EncoderKind::Vit;
        enc.vit.preset = preset.map(str::to_string);
        enc.vit.arch = arch.map(|a| serde_json::from_str(a).expect("arch JSON"));
        cfg
    }

    #[test]
    fn vit_settings_resolve_preset_arch_and_normalization() {
        let err = |c: &Config| {
            vit_config(&c.prototypes.encoder)
                .err()
                .map(|e| e.to_string())
        };
        assert!(err(&vit_cfg(None, None)).is_some_and(|e| e.contains("vit.preset")));
        assert!(err(&vit_cfg(Some("nope"), None)).is_some_and(|e| e.contains("nope")));
        assert!(
            err(&vit_cfg(Some("uni"), Some(r#"{"dept": 2}"#))).is_some_and(|e| e.contains("dept"))
        );
        let mut c = vit_cfg(
            None,
            Some(r#"{"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 16}"#),
        );
        c.prototypes.encoder.vit.normalization = Some(VitNormalization::Preset);
        assert!(err(&c).is_some_and(|e| e.contains("normalization")));

        // UNI: ViT-L/16, ImageNet normalisation (torchvision's constants), RGB, no min-max
        let c = vit_cfg(Some("uni"), None);
        let (v, p) = vit_config(&c.prototypes.encoder).unwrap();
        assert_eq!((v.embed_dim, v.depth, v.patch_size), (1024, 24, 16));
        assert_eq!(p.map(|p| p.name), Some("uni"));
        let pre = Preprocess::from_config(&c);
        assert_eq!(pre.mean, [0.485, 0.456, 0.406]);
        assert_eq!(pre.std, [0.229, 0.224, 0.225]);
        assert_eq!(pre.channel_order, "rgb");
        assert!(!pre.global_minmax);
        // arch fields override the preset's
        let c = vit_cfg(Some("uni"), Some(r#"{"depth": 2, "global_pool": "avg"}"#));
        let (v, _) = vit_config(&c.prototypes.encoder).unwrap();
        assert_eq!((v.embed_dim, v.depth), (1024, 2));
        assert_eq!(v.global_pool, pbip_encoder::VitPool::Avg);
        // normalization: config keeps `normalize` and `global_minmax`
        let mut c = vit_cfg(Some("uni"), None);
        c.prototypes.encoder.vit.normalization = Some(VitNormalization::Config);
        let pre = Preprocess::from_config(&c);
        let d = Preprocess::from_config(&Config::default());
        assert_eq!(
            (pre.mean, pre.std, pre.global_minmax),
            (d.mean, d.std, d.global_minmax)
        );
        // Virchow's embedding is class token + mean patch token
        let (v, _) = vit_config(&vit_cfg(Some("virchow"), None).prototypes.encoder).unwrap();
        assert_eq!(v.output_dim(), 2 * 1280);
    }

    #[test]
    fn vit_encoder_builds_from_a_file_saves_and_reloads() {
        let device = Device::flex();
        let arch = r#"{"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 16,
            "img_size": 32, "num_reg_tokens": 2, "no_embed_class": true, "init_values": 0.5,
            "mlp": "swiglu_packed", "global_pool": "token_avg"}"#;
        let mut cfg = vit_cfg(None, Some(arch));
        let (vit, _) = vit_config(&cfg.prototypes.encoder).unwrap();
        // a checkpoint laid out as CONCH's (the trunk under `visual.trunk.`), plus other tensors
        let src = Vit::random(&vit, 7, &device).unwrap();
        let mut map = src.to_tensor_map("visual.trunk.").unwrap();
        map.insert(
            "text.proj".into(),
            HostTensor::new(vec![2], vec![1.0, 2.0]).unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let wpath = dir.path().join("vit.safetensors");
        pbip_weights::write_safetensors_atomic(&wpath, &map, &BTreeMap::new()).unwrap();
        cfg.prototypes.encoder.weights = Some(wpath);

        let (model, ident) = build_encoder(&cfg, &device).unwrap();
        assert_eq!(ident.kind, "vit");
        assert!(!ident.random && ident.sha256.is_some());
        assert_eq!(ident.vit.as_ref(), Some(&vit));
        let chw: Vec<f32> = (0..2 * 3 * 48 * 48)
            .map(|i| ((i % 97) as f32) / 50.0 - 1.0)
            .collect();
        let f = encode_batch(&model, EncoderKind::Vit, chw.clone(), 2, 48, &device).unwrap();
        assert_eq!(f.len(), 2 * 64);
        let x: Tensor<4> = Tensor::from_data(TensorData::new(chw.clone(), [2, 3, 48, 48]), &device);
        let want = src.forward(x).try_into_vec_as::<f32>().unwrap();
        assert_eq!(f, want, "the file's weights are the source model's");
        // not a multiple of the patch size: a clear error
        let bad = encode_batch(
            &model,
            EncoderKind::Vit,
            vec![0.0; 3 * 40 * 40],
            1,
            40,
            &device,
        );
        assert!(bad.is_err());

        let epath = dir.path().join("encoder.safetensors");
        save_encoder(&epath, &model, &ident).unwrap();
        let (back, ident2) = load_saved_encoder(&epath, &device).unwrap();
        assert_eq!(ident2, ident);
        let g = encode_batch(&back, EncoderKind::Vit, chw, 2, 48, &device).unwrap();
        assert_eq!(f, g);

        // without weights: seeded random, flagged
        cfg.prototypes.encoder.weights = None;
        let (_, ident) = build_encoder(&cfg, &device).unwrap();
        assert!(ident.random && ident.sha256.is_none());
    }
}
