//! timm-style Vision Transformer encoders (timm `VisionTransformer` semantics, timm 1.0):
//! patch embedding, optional class token and register tokens, learned absolute position embedding
//! (resized to any token grid as timm's `dynamic_img_size=True` does), pre-norm blocks with
//! optional LayerScale and a GELU or SwiGLU-packed MLP, final norm (or `fc_norm` after pooling),
//! pooling by class token, mean of the patch tokens, or both concatenated.
//!
//! * [`VitConfig`] describes the architecture (field names follow timm's constructor);
//!   [`vit_preset`] returns it for the pathology foundation models PBIP can use (UNI, Phikon,
//!   H-optimus-0, CONCH's vision trunk, Virchow) with their normalisation constants.
//! * [`Vit::from_tensor_map`] loads timm state-dict names or Hugging Face names (`ViTModel`,
//!   `Dinov2Model`, `Dinov2WithRegistersModel`; both the Hub / transformers < 5 layout and the
//!   transformers >= 5 one), converting the latter to timm's layout; [`Vit::random`] builds a
//!   seeded random encoder; [`Vit::to_tensor_map`] exports timm names.
//! * [`Vit::forward_features`] gives the tokens `[B, N, D]` (prefix tokens first),
//!   [`Vit::forward`] the pooled features `[B, D']`. Fully differentiable: on an autodiff device
//!   gradients flow back to the images; [`Vit::frozen`] keeps the encoder's own parameters out.

mod load;
mod resample;

use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::activation::{gelu, silu, softmax};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

pub use load::{VitNames, hf_to_timm};
pub use resample::{PosEmbedInterp, bicubic_weights};

use crate::EncoderError;

/// MLP of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum VitMlp {
    /// timm `Mlp`: `fc2(GELU(fc1(x)))` (exact, erf-based GELU), hidden `int(dim · mlp_ratio)`.
    #[default]
    #[serde(rename = "gelu")]
    Gelu,
    /// timm `SwiGLUPacked` with `act_layer=SiLU`: `fc1` outputs `int(dim · mlp_ratio)` features,
    /// split in halves `x1, x2`; `fc2(silu(x1) · x2)` (H-optimus-0, Virchow, DINOv2-g).
    #[serde(rename = "swiglu_packed")]
    SwiGluPacked,
}

/// Pooling of the tokens into one feature vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VitPool {
    /// The class token (timm `global_pool='token'`), width `D`.
    #[default]
    Token,
    /// Mean of the patch tokens, registers and class token excluded (timm `'avg'`), width `D`.
    Avg,
    /// Class token and mean of the patch tokens concatenated (Virchow's embedding), width `2D`.
    TokenAvg,
}

fn d_img() -> usize {
    224
}
fn d_chans() -> usize {
    3
}
fn d_mlp() -> f64 {
    4.0
}
fn d_true() -> bool {
    true
}
fn d_eps() -> f64 {
    1e-6
}

/// Architecture of a ViT encoder (timm `VisionTransformer` arguments; absent fields take timm's
/// defaults, so a fixture's `vit` metadata JSON deserialises directly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    /// Token width `D`.
    pub embed_dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads (`D` must be a multiple).
    pub num_heads: usize,
    /// Patch size (stem convolution kernel = stride).
    pub patch_size: usize,
    /// Square input size the stored position embedding was made for (its grid is
    /// `img_size / patch_size` per side); other input sizes resize it.
    #[serde(default = "d_img")]
    pub img_size: usize,
    /// Input channels.
    #[serde(default = "d_chans")]
    pub in_chans: usize,
    /// MLP width ratio (`int(embed_dim · mlp_ratio)` features after `fc1`, as timm).
    #[serde(default = "d_mlp")]
    pub mlp_ratio: f64,
    /// MLP kind.
    #[serde(default)]
    pub mlp: VitMlp,
    /// A class token precedes the patch tokens.
    #[serde(default = "d_true")]
    pub class_token: bool,
    /// Register tokens after the class token (timm `reg_tokens`).
    #[serde(default)]
    pub num_reg_tokens: usize,
    /// The position embedding covers the patch tokens only (timm `no_embed_class`; DeiT-3 and the
    /// register models): prefix tokens get none.
    #[serde(default)]
    pub no_embed_class: bool,
    /// LayerScale present (`ls1.gamma`, `ls2.gamma`) when set (timm `init_values`; the value only
    /// matters for random initialisation).
    #[serde(default)]
    pub init_values: Option<f64>,
    /// Bias in the fused `qkv` projection.
    #[serde(default = "d_true")]
    pub qkv_bias: bool,
    /// LayerNorm epsilon (timm's ViT: 1e-6; transformers' `ViTModel` default: 1e-12).
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// Pooling of [`Vit::forward`].
    #[serde(default)]
    pub global_pool: VitPool,
    /// A final LayerNorm exists (on the tokens, or after pooling with `fc_norm`).
    #[serde(default = "d_true")]
    pub final_norm: bool,
    /// Final norm after pooling instead of on the tokens; `None` = timm's rule (on for `Avg`).
    #[serde(default)]
    pub fc_norm: Option<bool>,
    /// Position-embedding resize for other input sizes.
    #[serde(default)]
    pub pos_embed_interp: PosEmbedInterp,
}

impl VitConfig {
    /// Parses a JSON object with [`VitConfig`] field names (e.g. a fixture's `vit` metadata).
    pub fn from_json(json: &str) -> Result<Self, EncoderError> {
        let c: Self = serde_json::from_str(json)
            .map_err(|e| EncoderError::VitConfig(format!("{e} in {json}")))?;
        c.validate()?;
        Ok(c)
    }

    /// Tokens per side of the stored position-embedding grid (`img_size / patch_size`).
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size.max(1)
    }

    /// Class token (0 or 1) plus registers.
    pub fn num_prefix_tokens(&self) -> usize {
        usize::from(self.class_token) + self.num_reg_tokens
    }

    /// Rows of the stored position embedding.
    pub fn pos_embed_len(&self) -> usize {
        let g = self.grid();
        g * g
            + if self.no_embed_class {
                0
            } else {
                self.num_prefix_tokens()
            }
    }

    /// Width after `fc1` (`int(embed_dim · mlp_ratio)`, as timm).
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    /// Width entering `fc2` (half of [`VitConfig::mlp_hidden`] for SwiGLU).
    pub fn mlp_inner(&self) -> usize {
        match self.mlp {
            VitMlp::Gelu => self.mlp_hidden(),
            VitMlp::SwiGluPacked => self.mlp_hidden() / 2,
        }
    }

    /// Whether the final norm comes after pooling (timm's `use_fc_norm`).
    pub fn use_fc_norm(&self) -> bool {
        self.fc_norm
            .unwrap_or(matches!(self.global_pool, VitPool::Avg))
    }

    /// Width of [`Vit::forward`]'s output for pooling `pool`.
    pub fn pooled_dim(&self, pool: VitPool) -> usize {
        match pool {
            VitPool::Token | VitPool::Avg => self.embed_dim,
            VitPool::TokenAvg => 2 * self.embed_dim,
        }
    }

    /// Width of [`Vit::forward`]'s output (the configured pooling).
    pub fn output_dim(&self) -> usize {
        self.pooled_dim(self.global_pool)
    }

    /// Checks the settings are usable.
    pub fn validate(&self) -> Result<(), EncoderError> {
        let err = |m: String| Err(EncoderError::VitConfig(m));
        if self.embed_dim == 0 || self.num_heads == 0 || self.patch_size == 0 || self.in_chans == 0
        {
            return err(format!("sizes must be positive: {self:?}"));
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return err(format!(
                "embed_dim {} is not divisible by {} heads",
                self.embed_dim, self.num_heads
            ));
        }
        if self.img_size < self.patch_size {
            return err(format!(
                "img_size {} is smaller than the patch size {}",
                self.img_size, self.patch_size
            ));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) || self.mlp_hidden() == 0 {
            return err(format!("mlp_ratio {} invalid", self.mlp_ratio));
        }
        if self.mlp == VitMlp::SwiGluPacked && !self.mlp_hidden().is_multiple_of(2) {
            return err(format!(
                "SwiGLU needs an even fc1 width, int({} * {}) = {}",
                self.embed_dim,
                self.mlp_ratio,
                self.mlp_hidden()
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return err(format!("layer_norm_eps {} invalid", self.layer_norm_eps));
        }
        if let Some(v) = self.init_values
            && !v.is_finite()
        {
            return err(format!("init_values {v} invalid"));
        }
        if !self.class_token && matches!(self.global_pool, VitPool::Token | VitPool::TokenAvg) {
            return err(format!(
                "{:?} pooling needs the class token",
                self.global_pool
            ));
        }
        if self.global_pool == VitPool::TokenAvg && self.use_fc_norm() && self.final_norm {
            return err("token_avg pooling with fc_norm is not a timm layout".into());
        }
        Ok(())
    }
}

/// A model named by [`vit_preset`]: architecture, input normalisation and weight source.
#[derive(Debug, Clone, PartialEq)]
pub struct VitPreset {
    /// Canonical preset name.
    pub name: &'static str,
    /// Architecture (its `global_pool` is the model's published embedding).
    pub config: VitConfig,
    /// Per-channel mean (RGB, images scaled to [0, 1]) of the model's preprocessing.
    pub mean: [f32; 3],
    /// Per-channel standard deviation (RGB).
    pub std: [f32; 3],
    /// The naming scheme of the published weights.
    pub names: VitNames,
    /// Where the weights are published (they are gated downloads; pbip never fetches them).
    pub source: &'static str,
    /// Tensor-name prefix of the encoder inside the published file (`""` when none).
    pub prefix: &'static str,
}

/// ImageNet mean / std (torchvision), used by UNI, Phikon and Virchow.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// OpenAI CLIP mean / std, used by CONCH.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP standard deviation.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1]; // (0.26862954, 0.26130258, 0.27577711) as f32

/// Names accepted by [`vit_preset`].
pub const VIT_PRESETS: [&str; 5] = ["uni", "phikon", "h-optimus-0", "conch", "virchow"];

fn base(embed_dim: usize, depth: usize, num_heads: usize, patch_size: usize) -> VitConfig {
    VitConfig {
        embed_dim,
        depth,
        num_heads,
        patch_size,
        img_size: 224,
        in_chans: 3,
        mlp_ratio: 4.0,
        mlp: VitMlp::Gelu,
        class_token: true,
        num_reg_tokens: 0,
        no_embed_class: false,
        init_values: None,
        qkv_bias: true,
        layer_norm_eps: 1e-6,
        global_pool: VitPool::Token,
        final_norm: true,
        fc_norm: None,
        pos_embed_interp: PosEmbedInterp::BicubicAntialias,
    }
}

/// The architecture, normalisation and weight source of a named pathology encoder
/// (case-insensitive; `_` and `-` are interchangeable):
///
/// | name | model | tokens | features |
/// |---|---|---|---|
/// | `uni` | MahmoodLab/UNI: timm `vit_large_patch16_224`, `init_values=1e-5`, `dynamic_img_size` | 1 + 196 | class token, 1024 |
/// | `phikon` | owkin/phikon: HF `ViTModel` ViT-B/16 (LayerNorm eps 1e-12) | 1 + 196 | class token, 768 |
/// | `h-optimus-0` | bioptimus/H-optimus-0: timm ViT-g/14, 4 registers, SwiGLU-packed MLP, LayerScale | 1 + 4 + 256 | class token, 1536 |
/// | `conch` | MahmoodLab/CONCH vision trunk: timm `vit_base_patch16_224` at 448 px (`visual.trunk.*`) | 1 + 784 | class token, 768 |
/// | `virchow` | paige-ai/Virchow: timm ViT-H/14, SwiGLU-packed MLP, LayerScale | 1 + 256 | class token ‖ mean patch token, 2560 |
///
/// CONCH's own 512-d image embedding (attentional pooler + projection of CoCa) is not part of the
/// trunk; this preset gives the trunk's class token.
pub fn vit_preset(name: &str) -> Result<VitPreset, EncoderError> {
    let key = name.trim().to_ascii_lowercase().replace('_', "-");
    let p = match key.as_str() {
        "uni" => VitPreset {
            name: "uni",
            config: VitConfig {
                init_values: Some(1e-5),
                ..base(1024, 24, 16, 16)
            },
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            names: VitNames::Timm,
            source: "hf-hub:MahmoodLab/UNI (pytorch_model.bin, timm names)",
            prefix: "",
        },
        "phikon" => VitPreset {
            name: "phikon",
            config: VitConfig {
                layer_norm_eps: 1e-12,
                pos_embed_interp: PosEmbedInterp::Bicubic,
                ..base(768, 12, 12, 16)
            },
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            names: VitNames::HuggingFace,
            source: "owkin/phikon (model.safetensors, transformers ViTModel names)",
            prefix: "",
        },
        "h-optimus-0" | "hoptimus0" | "h-optimus0" => VitPreset {
            name: "h-optimus-0",
            config: VitConfig {
                mlp_ratio: 5.33334,
                mlp: VitMlp::SwiGluPacked,
                num_reg_tokens: 4,
                no_embed_class: true,
                init_values: Some(1e-5),
                ..base(1536, 40, 24, 14)
            },
            mean: [0.707_223, 0.578_729, 0.703_617],
            std: [0.211_883, 0.230_117, 0.177_517],
            names: VitNames::Timm,
            source: "hf-hub:bioptimus/H-optimus-0 (timm names)",
            prefix: "",
        },
        "conch" => VitPreset {
            name: "conch",
            config: VitConfig {
                img_size: 448,
                ..base(768, 12, 12, 16)
            },
            mean: CLIP_MEAN,
            std: CLIP_STD,
            names: VitNames::Timm,
            source: "MahmoodLab/CONCH (pytorch_model.bin, vision trunk under visual.trunk.)",
            prefix: "visual.trunk.",
        },
        "virchow" => VitPreset {
            name: "virchow",
            config: VitConfig {
                mlp_ratio: 5.3375,
                mlp: VitMlp::SwiGluPacked,
                init_values: Some(1e-5),
                global_pool: VitPool::TokenAvg,
                ..base(1280, 32, 16, 14)
            },
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            names: VitNames::Timm,
            source: "hf-hub:paige-ai/Virchow (timm names)",
            prefix: "",
        },
        _ => {
            return Err(EncoderError::VitConfig(format!(
                "unknown ViT preset {name:?}; known: {}",
                VIT_PRESETS.join(", ")
            )));
        }
    };
    Ok(p)
}

/// One transformer block (timm `Block`): `x + ls1(attn(norm1(x)))`, then `x + ls2(mlp(norm2(x)))`.
#[derive(Module, Debug)]
pub struct VitBlock {
    /// `norm1`.
    pub norm1: LayerNorm,
    /// `attn.qkv` (`D → 3D`, rows q, k, v).
    pub qkv: Linear,
    /// `attn.proj`.
    pub proj: Linear,
    /// `ls1.gamma` (LayerScale), `[D]`.
    pub ls1: Option<Param<Tensor<1>>>,
    /// `norm2`.
    pub norm2: LayerNorm,
    /// `mlp.fc1`.
    pub fc1: Linear,
    /// `mlp.fc2`.
    pub fc2: Linear,
    /// `ls2.gamma`, `[D]`.
    pub ls2: Option<Param<Tensor<1>>>,
    /// Attention heads.
    pub num_heads: usize,
    /// SwiGLU-packed MLP (else GELU).
    pub swiglu: bool,
}

fn layer_scale(x: Tensor<3>, gamma: &Option<Param<Tensor<1>>>) -> Tensor<3> {
    match gamma {
        Some(g) => {
            let d = g.dims()[0];
            x * g.val().reshape([1, 1, d])
        }
        None => x,
    }
}

impl VitBlock {
    /// `[B, N, D]` → same shape.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, c] = x.dims();
        let heads = self.num_heads;
        let hd = c / heads;
        let qkv: Tensor<5> = self
            .qkv
            .forward(self.norm1.forward(x.clone()))
            .reshape([b, n, 3, heads, hd]);
        let part = |i: usize| -> Tensor<4> {
            qkv.clone()
                .narrow(2, i, 1)
                .reshape([b, n, heads, hd])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (part(0), part(1), part(2));
        let scale = (hd as f64).powf(-0.5);
        let attn = softmax(q.matmul(k.swap_dims(2, 3)) * scale, 3);
        let out = attn.matmul(v).swap_dims(1, 2).reshape([b, n, c]);
        let x = x + layer_scale(self.proj.forward(out), &self.ls1);

        let h = self.fc1.forward(self.norm2.forward(x.clone()));
        let h = if self.swiglu {
            let half = h.dims()[2] / 2;
            silu(h.clone().narrow(2, 0, half)) * h.narrow(2, half, half)
        } else {
            gelu(h)
        };
        x.clone() + layer_scale(self.fc2.forward(h), &self.ls2)
    }
}

/// A timm-style Vision Transformer encoder.
#[derive(Module, Debug)]
pub struct Vit {
    /// `patch_embed.proj` (kernel = stride = patch size).
    pub patch_embed: Conv2d,
    /// `cls_token`, `[1, 1, D]`.
    pub cls_token: Option<Param<Tensor<3>>>,
    /// `reg_token`, `[1, R, D]`.
    pub reg_token: Option<Param<Tensor<3>>>,
    /// `pos_embed`, `[1, L, D]` for the `img_size` grid (prefix rows first unless `no_embed_class`).
    pub pos_embed: Param<Tensor<3>>,
    /// `blocks.*`.
    pub blocks: Vec<VitBlock>,
    /// `norm` (on the tokens).
    pub norm: Option<LayerNorm>,
    /// `fc_norm` (after pooling).
    pub fc_norm: Option<LayerNorm>,
    /// The architecture.
    #[module(skip)]
    pub config: VitConfig,
}

impl Vit {
    /// The architecture.
    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// Output width of [`Vit::forward`].
    pub fn output_dim(&self) -> usize {
        self.config.output_dim()
    }

    /// The position embedding for a `gh × gw` token grid, `[1, L', D]` (prefix rows first unless
    /// `no_embed_class`): the stored one for the stored grid, else its grid part resized with
    /// [`bicubic_weights`] per axis (timm's `resample_abs_pos_embed`). Differentiable.
    pub fn pos_embed_for(&self, gh: usize, gw: usize) -> Tensor<3> {
        let pos = self.pos_embed.val();
        let g = self.config.grid();
        if (gh, gw) == (g, g) {
            return pos;
        }
        let device = pos.device();
        let [_, l, d] = pos.dims();
        let np = l.saturating_sub(g * g);
        let grid: Tensor<2> = pos.clone().narrow(1, np, l - np).reshape([g, g * d]);
        let mode = self.config.pos_embed_interp;
        let mat = |input: usize, output: usize| -> Tensor<2> {
            let w: Vec<f32> = bicubic_weights(input, output, mode)
                .into_iter()
                .map(|v| v as f32)
                .collect();
            Tensor::from_data(TensorData::new(w, [output, input]), &device)
        };
        // rows: [gh, g] x [g, g*d] -> [gh, g, d]; columns: [gh, gw, g] x [gh, g, d] -> [gh, gw, d]
        let t: Tensor<3> = mat(g, gh).matmul(grid).reshape([gh, g, d]);
        let ww: Tensor<3> = mat(g, gw).unsqueeze::<3>().expand([gh, gw, g]);
        let t = ww.matmul(t).reshape([1, gh * gw, d]);
        if np == 0 {
            t
        } else {
            Tensor::cat(vec![pos.narrow(1, 0, np), t], 1)
        }
    }

    /// Normalised images `[B, C, H, W]` → tokens `[B, prefix + (H/p)·(W/p), D]` (timm
    /// `forward_features`: after the final norm unless the model uses `fc_norm`). A size that is not
    /// a multiple of the patch size loses its last partial patch row/column (timm refuses it; see
    /// [`Vit::try_forward_features`]).
    pub fn forward_features(&self, images: Tensor<4>) -> Tensor<3> {
        let [b, _, _, _] = images.dims();
        let x = self.patch_embed.forward(images);
        let [_, d, gh, gw] = x.dims();
        let x = x.reshape([b, d, gh * gw]).swap_dims(1, 2);
        let pos = self.pos_embed_for(gh, gw);
        let mut parts = Vec::with_capacity(3);
        if let Some(c) = &self.cls_token {
            parts.push(c.val().expand([b, 1, d]));
        }
        if let Some(r) = &self.reg_token {
            let nr = r.dims()[1];
            parts.push(r.val().expand([b, nr, d]));
        }
        let mut x = if self.config.no_embed_class {
            parts.push(x + pos);
            Tensor::cat(parts, 1)
        } else {
            parts.push(x);
            Tensor::cat(parts, 1) + pos
        };
        for block in &self.blocks {
            x = block.forward(x);
        }
        match &self.norm {
            Some(n) => n.forward(x),
            None => x,
        }
    }

    /// Pools tokens from [`Vit::forward_features`] (`[B, N, D]` → `[B, D]` or `[B, 2D]`), then
    /// applies `fc_norm` when the model has one (to each half for [`VitPool::TokenAvg`]).
    pub fn pool(&self, tokens: Tensor<3>, pool: VitPool) -> Tensor<2> {
        let [b, n, d] = tokens.dims();
        let npt = self.config.num_prefix_tokens().min(n);
        let fc = |x: Tensor<2>| match &self.fc_norm {
            Some(ln) => ln.forward(x),
            None => x,
        };
        let token = || fc(tokens.clone().narrow(1, 0, 1).reshape([b, d]));
        let avg = || {
            fc(tokens
                .clone()
                .narrow(1, npt, n - npt)
                .mean_dim(1)
                .reshape([b, d]))
        };
        match pool {
            VitPool::Token => token(),
            VitPool::Avg => avg(),
            VitPool::TokenAvg => Tensor::cat(vec![token(), avg()], 1),
        }
    }

    /// Normalised images `[B, C, H, W]` → pooled features `[B, output_dim]` with the configured
    /// pooling (timm `forward_head(forward_features(x), pre_logits=True)`). Differentiable.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.pool(self.forward_features(images), self.config.global_pool)
    }

    /// Checks an input shape: `[B>0, in_chans, H, W]` with `H`, `W` positive multiples of the
    /// patch size (as timm's `PatchEmbed` with `dynamic_img_size`).
    pub fn check_input(&self, dims: [usize; 4]) -> Result<(), EncoderError> {
        let [b, c, h, w] = dims;
        let p = self.config.patch_size;
        let want_c = self.config.in_chans;
        if b == 0 || c != want_c || h < p || w < p || !h.is_multiple_of(p) || !w.is_multiple_of(p) {
            return Err(EncoderError::Input(format!(
                "expected images [B>0, {want_c}, H, W] with H and W positive multiples of the patch \
                 size {p}, got [{b}, {c}, {h}, {w}]"
            )));
        }
        Ok(())
    }

    /// [`Vit::forward_features`] with the input shape checked first.
    pub fn try_forward_features(&self, images: Tensor<4>) -> Result<Tensor<3>, EncoderError> {
        self.check_input(images.dims())?;
        Ok(self.forward_features(images))
    }

    /// [`Vit::forward`] with the input shape checked first.
    pub fn try_forward(&self, images: Tensor<4>) -> Result<Tensor<2>, EncoderError> {
        self.check_input(images.dims())?;
        Ok(self.forward(images))
    }

    /// The same module with every parameter marked as not requiring gradients (a frozen encoder):
    /// gradients still flow through it to its inputs.
    pub fn frozen(self) -> Self {
        self.no_grad()
    }

    /// Device of the parameters.
    pub fn device(&self) -> Device {
        self.patch_embed.weight.val().device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_json_defaults_and_validation() {
        let c = VitConfig::from_json(
            r#"{"embed_dim": 96, "depth": 2, "num_heads": 3, "patch_size": 16}"#,
        )
        .unwrap();
        assert_eq!(c.grid(), 14);
        assert_eq!(c.pos_embed_len(), 197);
        assert_eq!(c.mlp_hidden(), 384);
        assert_eq!(c.layer_norm_eps, 1e-6);
        assert_eq!(c.output_dim(), 96);
        assert!(!c.use_fc_norm());
        let bad = [
            r#"{"embed_dim": 96, "depth": 2, "num_heads": 5, "patch_size": 16}"#,
            r#"{"embed_dim": 96, "depth": 2, "num_heads": 3, "patch_size": 16, "class_token": false}"#,
            r#"{"embed_dim": 96, "depth": 2, "num_heads": 3, "patch_size": 16, "mlp": "swiglu_packed", "mlp_ratio": 1.02}"#,
            r#"{"embed_dim": 96, "depth": 2, "num_heads": 3, "patch_size": 16, "typo": 1}"#,
            r#"{"embed_dim": 96, "depth": 2, "num_heads": 3, "patch_size": 300}"#,
            "nope",
        ];
        for b in bad {
            assert!(VitConfig::from_json(b).is_err(), "{b}");
        }
        let gap = VitConfig::from_json(
            r#"{"embed_dim": 96, "depth": 1, "num_heads": 2, "patch_size": 14, "class_token": false, "global_pool": "avg"}"#,
        )
        .unwrap();
        assert!(gap.use_fc_norm());
        assert_eq!(gap.pos_embed_len(), 256);
    }

    #[test]
    fn presets_match_their_published_shapes() {
        // widths and token counts as stated on the model cards
        let want = [
            ("uni", 1024, 197, 4096),
            ("phikon", 768, 197, 3072),
            ("h-optimus-0", 1536, 261, 8192),
            ("conch", 768, 785, 3072),
            ("virchow", 2560, 257, 6832),
        ];
        for (name, dim, tokens, fc1) in want {
            let p = vit_preset(name).unwrap();
            p.config.validate().unwrap();
            let c = &p.config;
            let g = c.grid();
            assert_eq!(c.output_dim(), dim, "{name}");
            assert_eq!(c.num_prefix_tokens() + g * g, tokens, "{name}");
            assert_eq!(c.mlp_hidden(), fc1, "{name}");
        }
        assert_eq!(vit_preset("H_Optimus_0").unwrap().name, "h-optimus-0");
        assert!(vit_preset("resnet").is_err());
    }
}
