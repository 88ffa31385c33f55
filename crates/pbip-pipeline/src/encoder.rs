//! The prototype encoder as configured (`prototypes.encoder`), its input preprocessing, and the
//! compute device. Stage 1 builds the encoder here and saves the exact weights it used next to the
//! features (`image_features/encoder.safetensors`); training loads that file, so prototypes and the
//! training-time FG/BG features always come from the very same encoder (upstream only gets this
//! right when torch's RNG happens to be in the same state).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use pbip_config::{ChannelOrder, Config, Encoder as EncoderCfg, EncoderKind};
use pbip_encoder::{MedClipVision, SwinConfig};
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
    /// `medclip` or `hf_swin`.
    pub kind: String,
    /// Human-readable source: `random, seed S` or `file <path>`.
    pub source: String,
    /// SHA-256 of the weights file(s) (`swin[+projection]`), `None` for random weights.
    pub sha256: Option<String>,
    /// True when any part was randomly initialised (no pretrained weights).
    pub random: bool,
    /// Swin architecture.
    pub swin: SwinConfig,
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

fn weights_err(path: &Path, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Data {
        stage: "encoder",
        message: format!("{}: {e}", path.display()),
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
) -> Result<(MedClipVision, EncoderIdentity), PipelineError> {
    let enc = &cfg.prototypes.encoder;
    let swin = swin_config(enc);
    let kind = match enc.kind {
        EncoderKind::Medclip => "medclip",
        EncoderKind::HfSwin => "hf_swin",
    }
    .to_string();
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
            };
            Ok((model, identity))
        }
        Some(path) => {
            let map = read_weights(path)?;
            let mut sha = crate::sha256_file(path)?;
            let mut random = false;
            let mut source = format!("file {}", path.display());
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
                        Some(pp) => {
                            sha = format!("{sha}+{}", crate::sha256_file(pp)?);
                            source = format!("{source} + projection {}", pp.display());
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
                model,
                EncoderIdentity {
                    kind,
                    source,
                    sha256: Some(sha),
                    random,
                    swin,
                },
            ))
        }
    }
}

/// Saves the exact encoder weights (`model.*` + `projection_head.weight`) with the identity as
/// metadata, atomically.
pub fn save_encoder(
    path: &Path,
    model: &MedClipVision,
    identity: &EncoderIdentity,
) -> Result<(), PipelineError> {
    let map = model.to_tensor_map("").map_err(|e| weights_err(path, e))?;
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
) -> Result<(MedClipVision, EncoderIdentity), PipelineError> {
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
    let model = MedClipVision::from_tensor_map(&map, "", &identity.swin, device)
        .map_err(|e| weights_err(path, e))?;
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
    /// The preprocessing of `prototypes.encoder`.
    pub fn from_config(cfg: &Config) -> Self {
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
/// projected MedCLIP features (`medclip`) or pooled Swin features (`hf_swin`).
pub fn encode_batch(
    model: &MedClipVision,
    kind: EncoderKind,
    chw: Vec<f32>,
    n: usize,
    side_px: usize,
    device: &Device,
) -> Result<Vec<f32>, PipelineError> {
    let x: Tensor<4> = Tensor::from_data(TensorData::new(chw, [n, 3, side_px, side_px]), device);
    let y = match kind {
        EncoderKind::Medclip => model.try_forward(x).map_err(|e| PipelineError::Data {
            stage: "encoder",
            message: e.to_string(),
        })?,
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
}
