//! Mix Transformer (SegFormer encoder) exactly as NVlabs `mix_transformer.py`, with the PBIP
//! per-stage `stride` argument. Parameter names follow the NVlabs checkpoint
//! (`patch_embed1.proj.weight`, `block1.0.attn.q.weight`, `norm1.weight`, ...).

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::activation::gelu;
use burn::tensor::module::linear;
use burn::tensor::{Distribution, Tensor};
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::amp::{self, Precision};
use crate::fused::{layer_norm, softmax_last};
use crate::params::{ConvShape, Loader, Visit, walk_conv, walk_linear, walk_ln};

/// Architecture of one MiT variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MitConfig {
    /// Variant name (`mit_b0` .. `mit_b5`).
    pub name: String,
    /// Channels per stage.
    pub embed_dims: [usize; 4],
    /// Attention heads per stage.
    pub num_heads: [usize; 4],
    /// Blocks per stage.
    pub depths: [usize; 4],
    /// Spatial-reduction ratios per stage.
    pub sr_ratios: [usize; 4],
    /// MLP hidden ratio.
    pub mlp_ratio: usize,
    /// Patch-embedding strides per stage (PBIP: 4,2,2,1; NVlabs: 4,2,2,2).
    pub strides: [usize; 4],
    /// Maximum stochastic-depth rate (linear over all blocks).
    pub drop_path_rate: f64,
}

impl MitConfig {
    /// NVlabs variant `mit_b0` .. `mit_b5` with the given strides.
    pub fn variant(name: &str, strides: [usize; 4]) -> Result<Self, ModelError> {
        let (dims, depths) = match name {
            "mit_b0" => ([32, 64, 160, 256], [2, 2, 2, 2]),
            "mit_b1" => ([64, 128, 320, 512], [2, 2, 2, 2]),
            "mit_b2" => ([64, 128, 320, 512], [3, 4, 6, 3]),
            "mit_b3" => ([64, 128, 320, 512], [3, 4, 18, 3]),
            "mit_b4" => ([64, 128, 320, 512], [3, 8, 27, 3]),
            "mit_b5" => ([64, 128, 320, 512], [3, 6, 40, 3]),
            other => {
                return Err(ModelError::Config(format!(
                    "unknown backbone `{other}` (expected mit_b0 .. mit_b5)"
                )));
            }
        };
        if strides.contains(&0) {
            return Err(ModelError::Config(format!(
                "strides must be positive, got {strides:?}"
            )));
        }
        Ok(Self {
            name: name.to_string(),
            embed_dims: dims,
            num_heads: [1, 2, 5, 8],
            depths,
            sr_ratios: [8, 4, 2, 1],
            mlp_ratio: 4,
            strides,
            drop_path_rate: 0.1,
        })
    }
}

/// LayerNorm eps of the patch embeddings and of the spatial-reduction norms.
const EPS_EMBED: f64 = 1e-5;
/// LayerNorm eps of the blocks (`norm1`, `norm2`) and of the stage norms.
const EPS_BLOCK: f64 = 1e-6;

/// Overlapping patch embedding: conv (k×k, stride s, pad k/2) + LayerNorm(eps 1e-5).
#[derive(Module, Debug)]
pub struct OverlapPatchEmbed {
    /// Projection conv.
    pub proj: Conv2d,
    /// LayerNorm, eps 1e-5.
    pub norm: LayerNorm,
}

impl OverlapPatchEmbed {
    fn load(l: &mut Loader<'_>, p: &str, c_in: usize, c_out: usize, k: usize, s: usize) -> Self {
        Self {
            proj: l.conv(
                &format!("{p}.proj"),
                ConvShape {
                    c_in,
                    c_out,
                    kernel: k,
                    stride: s,
                    pad: k / 2,
                    groups: 1,
                },
            ),
            norm: l.layer_norm(&format!("{p}.norm"), c_out, EPS_EMBED),
        }
    }

    /// `[B,C,H,W]` -> (`[B,N,C']`, H', W'); the convolution in `precision`, the output f32.
    pub fn forward(&self, x: Tensor<4>, precision: Precision) -> (Tensor<3>, usize, usize) {
        let x = amp::leave(amp::conv2d(&self.proj, amp::enter(x, precision)));
        let [b, c, h, w] = x.dims();
        let x = x.reshape([b, c, h * w]).swap_dims(1, 2);
        (layer_norm(&self.norm, EPS_EMBED, x), h, w)
    }

    fn walk(&self, p: &str, f: &mut Visit<'_>) {
        walk_conv(&self.proj, &format!("{p}.proj"), f);
        walk_ln(&self.norm, &format!("{p}.norm"), f);
    }
}

/// Efficient self-attention with spatial reduction.
#[derive(Module, Debug)]
pub struct Attention {
    /// Query projection C→C.
    pub q: Linear,
    /// Key/value projection C→2C (first C = keys).
    pub kv: Linear,
    /// Output projection.
    pub proj: Linear,
    /// Spatial-reduction conv (sr>1 only).
    pub sr: Option<Conv2d>,
    /// LayerNorm after the reduction (eps 1e-5, sr>1 only).
    pub norm: Option<LayerNorm>,
    /// Number of heads.
    pub num_heads: usize,
}

impl Attention {
    fn load(l: &mut Loader<'_>, p: &str, dim: usize, heads: usize, sr: usize) -> Self {
        let (sr_conv, norm) = if sr > 1 {
            (
                Some(l.conv(
                    &format!("{p}.sr"),
                    ConvShape {
                        c_in: dim,
                        c_out: dim,
                        kernel: sr,
                        stride: sr,
                        pad: 0,
                        groups: 1,
                    },
                )),
                Some(l.layer_norm(&format!("{p}.norm"), dim, EPS_EMBED)),
            )
        } else {
            (None, None)
        };
        Self {
            q: l.linear(&format!("{p}.q"), dim, dim),
            kv: l.linear(&format!("{p}.kv"), dim, 2 * dim),
            proj: l.linear(&format!("{p}.proj"), dim, dim),
            sr: sr_conv,
            norm,
            num_heads: heads,
        }
    }

    /// `[B,N,C]` on an H×W grid -> `[B,N,C]` (f32 in and out; products in `precision`).
    pub fn forward(&self, x: Tensor<3>, h: usize, w: usize, precision: Precision) -> Tensor<3> {
        let x = amp::enter(x, precision);
        let dtype = x.dtype();
        let [b, n, c] = x.dims();
        let heads = self.num_heads;
        let hd = c / heads;
        let scale = (hd as f64).powf(-0.5);
        // The 1/sqrt(d) of the scores is folded into the (C×C) query projection: q·kᵀ·s =
        // (x·(s·Wq) + s·bq)·kᵀ, no pass over the [B,heads,N,M] scores or the queries.
        let q = linear(
            x.clone().reshape([b * n, c]),
            amp::cast(self.q.weight.val() * scale, dtype),
            self.q
                .bias
                .as_ref()
                .map(|bias| amp::cast(bias.val() * scale, dtype)),
        )
        .reshape([b, n, heads, hd])
        .swap_dims(1, 2);
        let xkv = match (&self.sr, &self.norm) {
            (Some(sr), Some(norm)) => {
                let x_ = x.swap_dims(1, 2).reshape([b, c, h, w]);
                let x_ = amp::leave(amp::conv2d(sr, x_));
                let [_, _, h2, w2] = x_.dims();
                let t = layer_norm(norm, EPS_EMBED, x_.reshape([b, c, h2 * w2]).swap_dims(1, 2));
                amp::enter(t, precision)
            }
            _ => x,
        };
        let m = xkv.dims()[1];
        let kv = amp::linear(&self.kv, xkv.reshape([b * m, c])).reshape([b, m, 2, heads, hd]);
        let k = kv
            .clone()
            .narrow(2, 0, 1)
            .reshape([b, m, heads, hd])
            .swap_dims(1, 2);
        let v = kv
            .narrow(2, 1, 1)
            .reshape([b, m, heads, hd])
            .swap_dims(1, 2);
        // softmax in f32 (as under torch.autocast)
        let attn = amp::cast(softmax_last(amp::leave(q.matmul(k.swap_dims(2, 3)))), dtype);
        let out = attn.matmul(v).swap_dims(1, 2).reshape([b * n, c]);
        amp::leave(amp::linear(&self.proj, out).reshape([b, n, c]))
    }

    fn walk(&self, p: &str, f: &mut Visit<'_>) {
        walk_linear(&self.q, &format!("{p}.q"), f);
        walk_linear(&self.kv, &format!("{p}.kv"), f);
        walk_linear(&self.proj, &format!("{p}.proj"), f);
        if let Some(sr) = &self.sr {
            walk_conv(sr, &format!("{p}.sr"), f);
        }
        if let Some(n) = &self.norm {
            walk_ln(n, &format!("{p}.norm"), f);
        }
    }
}

/// Mix-FFN: fc1, depthwise 3×3 conv (bias), exact GELU, fc2.
#[derive(Module, Debug)]
pub struct MixFfn {
    /// C→4C.
    pub fc1: Linear,
    /// Depthwise 3×3 conv on the grid (NVlabs name `dwconv.dwconv`).
    pub dwconv: Conv2d,
    /// 4C→C.
    pub fc2: Linear,
}

impl MixFfn {
    fn load(l: &mut Loader<'_>, p: &str, dim: usize, hidden: usize) -> Self {
        Self {
            fc1: l.linear(&format!("{p}.fc1"), dim, hidden),
            dwconv: l.conv(
                &format!("{p}.dwconv.dwconv"),
                ConvShape {
                    c_in: hidden,
                    c_out: hidden,
                    kernel: 3,
                    stride: 1,
                    pad: 1,
                    groups: hidden,
                },
            ),
            fc2: l.linear(&format!("{p}.fc2"), hidden, dim),
        }
    }

    /// `[B,N,C]` -> `[B,N,C]`.
    ///
    /// Two layouts of the same computation (equal up to summation order), chosen by shape:
    ///
    /// * many tokens per image (`N ≥ 4C`, the high-resolution stages): channel-first, so that
    ///   the wide `[B,4C,N]` hidden tensor never needs a layout copy, forward or backward.
    ///   `fc1` as `W1ᵀ·xᵀ` (a batched matmul reading `x` through a transposed view) gives
    ///   `[B,4C,N]`, i.e. the `[B,4C,H,W]` grid of the depthwise conv as is; GELU runs on it in
    ///   place; `fc2` as `W2ᵀ·g` gives `[B,C,N]`, returned as a transposed view `[B,N,C]` (the
    ///   next element-wise op reads it through its strides);
    /// * few tokens (`N < 4C`): `Linear`s on the `[B·N, C]` token matrix (one large GEMM each,
    ///   faster there than per-image products) with the hidden tensor transposed to the conv
    ///   grid and back (small at these stages).
    ///
    /// f32 in and out; the products, the conv and GELU in `precision`.
    pub fn forward(&self, x: Tensor<3>, h: usize, w: usize, precision: Precision) -> Tensor<3> {
        let x = amp::enter(x, precision);
        let dtype = x.dtype();
        let [b, n, c_in] = x.dims();
        // Linear weights are stored [d_in, d_out].
        let hidden = self.fc1.weight.dims()[1];
        if n < hidden {
            let t = amp::linear(&self.fc1, x.reshape([b * n, c_in]))
                .reshape([b, n, hidden])
                .swap_dims(1, 2)
                .reshape([b, hidden, h, w]);
            let t = gelu(amp::conv2d(&self.dwconv, t));
            let t = t
                .reshape([b, hidden, n])
                .swap_dims(1, 2)
                .reshape([b * n, hidden]);
            let y = amp::linear(&self.fc2, t);
            let c = y.dims()[1];
            return amp::leave(y.reshape([b, n, c]));
        }
        let w1 = amp::cast(self.fc1.weight.val(), dtype);
        let mut t = w1.transpose().unsqueeze::<3>().matmul(x.swap_dims(1, 2));
        if let Some(bias) = &self.fc1.bias {
            t = t + amp::cast(bias.val(), dtype).reshape([1, hidden, 1]);
        }
        let t = amp::conv2d(&self.dwconv, t.reshape([b, hidden, h, w]));
        let t = gelu(t.reshape([b, hidden, n]));
        let w2 = amp::cast(self.fc2.weight.val(), dtype);
        let c = w2.dims()[1];
        let mut y = w2.transpose().unsqueeze::<3>().matmul(t);
        if let Some(bias) = &self.fc2.bias {
            y = y + amp::cast(bias.val(), dtype).reshape([1, c, 1]);
        }
        amp::leave(y.swap_dims(1, 2))
    }

    fn walk(&self, p: &str, f: &mut Visit<'_>) {
        walk_linear(&self.fc1, &format!("{p}.fc1"), f);
        walk_conv(&self.dwconv, &format!("{p}.dwconv.dwconv"), f);
        walk_linear(&self.fc2, &format!("{p}.fc2"), f);
    }
}

/// Transformer block: `x + DropPath(Attn(LN1 x))`, `x + DropPath(Mlp(LN2 x))`.
#[derive(Module, Debug)]
pub struct Block {
    /// LN eps 1e-6.
    pub norm1: LayerNorm,
    /// Attention.
    pub attn: Attention,
    /// LN eps 1e-6.
    pub norm2: LayerNorm,
    /// Mix-FFN.
    pub mlp: MixFfn,
    /// Stochastic-depth rate of this block.
    pub drop_path: f64,
}

/// Stochastic depth: zero whole samples with probability `p` and rescale by 1/(1-p).
fn drop_path(x: Tensor<3>, p: f64, active: bool) -> Tensor<3> {
    if !active || p <= 0.0 {
        return x;
    }
    let keep = 1.0 - p;
    let b = x.dims()[0];
    let mask: Tensor<3> = Tensor::random([b, 1, 1], Distribution::Bernoulli(keep), &x.device());
    // one broadcast product over the activations (the rescale is applied to the [B,1,1] mask)
    x * (mask / keep)
}

impl Block {
    fn load(
        l: &mut Loader<'_>,
        p: &str,
        dim: usize,
        heads: usize,
        sr: usize,
        mlp: usize,
        dp: f64,
    ) -> Self {
        Self {
            norm1: l.layer_norm(&format!("{p}.norm1"), dim, EPS_BLOCK),
            attn: Attention::load(l, &format!("{p}.attn"), dim, heads, sr),
            norm2: l.layer_norm(&format!("{p}.norm2"), dim, EPS_BLOCK),
            mlp: MixFfn::load(l, &format!("{p}.mlp"), dim, dim * mlp),
            drop_path: dp,
        }
    }

    /// Block forward; stochastic depth only when `stochastic` is true.
    pub fn forward(
        &self,
        x: Tensor<3>,
        h: usize,
        w: usize,
        stochastic: bool,
        precision: Precision,
    ) -> Tensor<3> {
        let ln1 = layer_norm(&self.norm1, EPS_BLOCK, x.clone());
        let a = self.attn.forward(ln1, h, w, precision);
        let x = x + drop_path(a, self.drop_path, stochastic);
        let ln2 = layer_norm(&self.norm2, EPS_BLOCK, x.clone());
        let m = self.mlp.forward(ln2, h, w, precision);
        x + drop_path(m, self.drop_path, stochastic)
    }

    fn walk(&self, p: &str, f: &mut Visit<'_>) {
        walk_ln(&self.norm1, &format!("{p}.norm1"), f);
        self.attn.walk(&format!("{p}.attn"), f);
        walk_ln(&self.norm2, &format!("{p}.norm2"), f);
        self.mlp.walk(&format!("{p}.mlp"), f);
    }
}

/// One MiT stage: patch embedding, blocks, stage norm (eps 1e-6).
#[derive(Module, Debug)]
pub struct Stage {
    /// Patch embedding.
    pub patch_embed: OverlapPatchEmbed,
    /// Blocks.
    pub blocks: Vec<Block>,
    /// Stage norm (NVlabs `norm{i}`).
    pub norm: LayerNorm,
}

/// The Mix Transformer encoder.
#[derive(Module, Debug)]
pub struct MixTransformer {
    /// Four stages.
    pub stages: Vec<Stage>,
    /// Compute precision of the forward pass ([`crate::amp`]); parameters are always f32.
    #[module(skip)]
    pub precision: Precision,
}

impl MixTransformer {
    /// Builds the encoder, reading parameters with NVlabs names under `prefix` (e.g. `encoder.`).
    pub(crate) fn load(l: &mut Loader<'_>, cfg: &MitConfig, prefix: &str) -> Self {
        let total: usize = cfg.depths.iter().sum();
        let dpr: Vec<f64> = (0..total)
            .map(|i| {
                if total > 1 {
                    cfg.drop_path_rate * i as f64 / (total - 1) as f64
                } else {
                    0.0
                }
            })
            .collect();
        let mut cur = 0;
        let mut stages = Vec::with_capacity(4);
        for i in 0..4 {
            let c_in = if i == 0 { 3 } else { cfg.embed_dims[i - 1] };
            let k = if i == 0 { 7 } else { 3 };
            let dim = cfg.embed_dims[i];
            let pe = OverlapPatchEmbed::load(
                l,
                &format!("{prefix}patch_embed{}", i + 1),
                c_in,
                dim,
                k,
                cfg.strides[i],
            );
            let blocks = (0..cfg.depths[i])
                .map(|j| {
                    Block::load(
                        l,
                        &format!("{prefix}block{}.{j}", i + 1),
                        dim,
                        cfg.num_heads[i],
                        cfg.sr_ratios[i],
                        cfg.mlp_ratio,
                        dpr[cur + j],
                    )
                })
                .collect();
            cur += cfg.depths[i];
            let norm = l.layer_norm(&format!("{prefix}norm{}", i + 1), dim, EPS_BLOCK);
            stages.push(Stage {
                patch_embed: pe,
                blocks,
                norm,
            });
        }
        Self {
            stages,
            precision: Precision::F32,
        }
    }

    /// Returns the four stage feature maps `[B,C_i,H_i,W_i]`. Stochastic depth is applied only
    /// when `stochastic` is true (training); parity and evaluation pass false.
    pub fn forward(&self, x: Tensor<4>, stochastic: bool) -> Vec<Tensor<4>> {
        let mut x = x;
        let mut outs = Vec::with_capacity(4);
        for st in &self.stages {
            let (mut t, h, w) = st.patch_embed.forward(x, self.precision);
            for blk in &st.blocks {
                t = blk.forward(t, h, w, stochastic, self.precision);
            }
            let t = layer_norm(&st.norm, EPS_BLOCK, t);
            let [b, _, c] = t.dims();
            x = t.reshape([b, h, w, c]).permute([0, 3, 1, 2]);
            outs.push(x.clone());
        }
        outs
    }

    pub(crate) fn walk(&self, prefix: &str, f: &mut Visit<'_>) {
        for (i, st) in self.stages.iter().enumerate() {
            st.patch_embed
                .walk(&format!("{prefix}patch_embed{}", i + 1), f);
            for (j, b) in st.blocks.iter().enumerate() {
                b.walk(&format!("{prefix}block{}.{j}", i + 1), f);
            }
            walk_ln(&st.norm, &format!("{prefix}norm{}", i + 1), f);
        }
    }
}
