//! Swin modules and their forward pass (transformers `modeling_swin.py` semantics).

use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::load::{Builder, SwinBuilder};
use crate::{EncoderError, SwinConfig};

/// One Swin block (`SwinLayer`): (shifted-)window attention and MLP, each pre-norm with a residual.
#[derive(Module, Debug)]
pub struct SwinBlock {
    /// `layernorm_before`.
    pub layernorm_before: LayerNorm,
    /// `attention.q_proj` (classic name `attention.self.query`).
    pub q_proj: Linear,
    /// `attention.k_proj`.
    pub k_proj: Linear,
    /// `attention.v_proj`.
    pub v_proj: Linear,
    /// `attention.o_proj` (classic `attention.output.dense`).
    pub o_proj: Linear,
    /// `attention.relative_position_bias.relative_position_bias_table`, `[(2w-1)^2, heads]`.
    pub relative_position_bias_table: Param<Tensor<2>>,
    /// `layernorm_after`.
    pub layernorm_after: LayerNorm,
    /// `mlp.fc1` (classic `intermediate.dense`).
    pub fc1: Linear,
    /// `mlp.fc2` (classic `output.dense`).
    pub fc2: Linear,
    /// Attention heads.
    pub num_heads: usize,
    /// Configured window size.
    pub window_size: usize,
    /// Configured cyclic shift (0 on even blocks, `window/2` on odd blocks).
    pub shift_size: usize,
}

/// Patch merging (`SwinPatchMerging`): 2×2 neighbourhood concat (HF order), LayerNorm(4C), Linear(4C→2C).
#[derive(Module, Debug)]
pub struct PatchMerging {
    /// `downsample.norm` (eps 1e-5).
    pub norm: LayerNorm,
    /// `downsample.reduction` (no bias).
    pub reduction: Linear,
}

/// One stage: blocks, then optional patch merging.
#[derive(Module, Debug)]
pub struct SwinStage {
    /// Blocks of the stage.
    pub blocks: Vec<SwinBlock>,
    /// Merging layer (all stages but the last).
    pub downsample: Option<PatchMerging>,
}

/// The MedCLIP vision tower: HF `SwinModel` + `projection_head`.
#[derive(Module, Debug)]
pub struct MedClipVision {
    /// `embeddings.patch_embeddings.projection` (k = stride = patch size).
    pub patch_embed: Conv2d,
    /// `embeddings.norm` (eps 1e-5).
    pub embed_norm: LayerNorm,
    /// `encoder.layers.*`.
    pub stages: Vec<SwinStage>,
    /// Final `layernorm`.
    pub layernorm: LayerNorm,
    /// `projection_head` (no bias), `num_features → proj_dim`.
    pub projection: Linear,
    /// Patch size.
    pub patch_size: usize,
}

/// `index[i*N + j]` into the bias table for tokens i, j of a `ws×ws` window, for a table built for a
/// `table_ws` window. For `ws == table_ws` this is HF's `relative_position_index`; a smaller window
/// (resolution below the window size) uses the centre of the same table.
pub(crate) fn relative_position_index(ws: usize, table_ws: usize) -> Vec<i64> {
    let n = ws * ws;
    let side = 2 * table_ws as i64 - 1;
    let mut idx = Vec::with_capacity(n * n);
    for i in 0..n {
        let (yi, xi) = ((i / ws) as i64, (i % ws) as i64);
        for j in 0..n {
            let (yj, xj) = ((j / ws) as i64, (j % ws) as i64);
            idx.push((yi - yj + table_ws as i64 - 1) * side + (xi - xj + table_ws as i64 - 1));
        }
    }
    idx
}

/// HF `get_attn_mask` for a padded `h×w` map: `[num_windows, N, N]` with 0 / -100.
pub(crate) fn shifted_window_mask(h: usize, w: usize, ws: usize, shift: usize) -> Vec<f32> {
    let region =
        |i: usize, len: usize| -> usize { (i + ws >= len) as usize + (i + shift >= len) as usize };
    let (nh, nw) = (h / ws, w / ws);
    let n = ws * ws;
    let mut out = Vec::with_capacity(nh * nw * n * n);
    let mut lab = vec![0usize; n];
    for wy in 0..nh {
        for wx in 0..nw {
            for (t, l) in lab.iter_mut().enumerate() {
                let (y, x) = (wy * ws + t / ws, wx * ws + t % ws);
                *l = region(y, h) * 3 + region(x, w);
            }
            for i in 0..n {
                for j in 0..n {
                    out.push(if lab[i] == lab[j] { 0.0 } else { -100.0 });
                }
            }
        }
    }
    out
}

/// Cyclic roll along `dim` by `-s` (`forward == true`, torch.roll(shifts=-s)) or `+s`.
fn roll<const D: usize>(x: Tensor<D>, dim: usize, s: usize, forward: bool) -> Tensor<D> {
    let n = x.dims()[dim];
    let s = s % n.max(1);
    if s == 0 {
        return x;
    }
    let k = if forward { s } else { n - s };
    Tensor::cat(
        vec![x.clone().narrow(dim, k, n - k), x.narrow(dim, 0, k)],
        dim,
    )
}

/// Zero-pads `[B,H,W,C]` at the bottom/right to `hp×wp`.
fn pad_hw(x: Tensor<4>, hp: usize, wp: usize) -> Tensor<4> {
    let [b, h, w, c] = x.dims();
    let device = x.device();
    let x = if wp > w {
        Tensor::cat(vec![x, Tensor::zeros([b, h, wp - w, c], &device)], 2)
    } else {
        x
    };
    if hp > h {
        Tensor::cat(vec![x, Tensor::zeros([b, hp - h, wp, c], &device)], 1)
    } else {
        x
    }
}

impl SwinBlock {
    pub(crate) fn build(
        b: &mut Builder<'_>,
        p: &str,
        cfg: &SwinConfig,
        stage: usize,
        index: usize,
    ) -> Self {
        let dim = cfg.stage_dim(stage);
        let heads = cfg.num_heads[stage];
        let hidden = cfg.mlp_hidden(stage);
        let side = 2 * cfg.window_size - 1;
        Self {
            layernorm_before: b.layer_norm(
                &format!("{p}.layernorm_before"),
                dim,
                cfg.layer_norm_eps,
            ),
            q_proj: b.linear(&format!("{p}.attention.q_proj"), dim, dim, true),
            k_proj: b.linear(&format!("{p}.attention.k_proj"), dim, dim, true),
            v_proj: b.linear(&format!("{p}.attention.v_proj"), dim, dim, true),
            o_proj: b.linear(&format!("{p}.attention.o_proj"), dim, dim, true),
            relative_position_bias_table: b.param(
                &format!("{p}.attention.relative_position_bias.relative_position_bias_table"),
                [side * side, heads],
                crate::load::Init::Zeros,
            ),
            layernorm_after: b.layer_norm(&format!("{p}.layernorm_after"), dim, cfg.layer_norm_eps),
            fc1: b.linear(&format!("{p}.mlp.fc1"), dim, hidden, true),
            fc2: b.linear(&format!("{p}.mlp.fc2"), hidden, dim, true),
            num_heads: heads,
            window_size: cfg.window_size,
            shift_size: if index % 2 == 1 {
                cfg.window_size / 2
            } else {
                0
            },
        }
    }

    /// `[B, H·W, C]` on an `h×w` grid → same shape.
    pub fn forward(&self, x: Tensor<3>, h: usize, w: usize) -> Tensor<3> {
        let [b, _, c] = x.dims();
        let device = x.device();
        // HF set_shift_and_window_size: no partition below the window size.
        let (ws, shift) = if h.min(w) <= self.window_size {
            (h.min(w), 0)
        } else {
            (self.window_size, self.shift_size)
        };
        let shortcut = x.clone();
        let x = self.layernorm_before.forward(x).reshape([b, h, w, c]);
        let hp = h.div_ceil(ws) * ws;
        let wp = w.div_ceil(ws) * ws;
        let x = pad_hw(x, hp, wp);
        let x = if shift > 0 {
            roll(roll(x, 1, shift, true), 2, shift, true)
        } else {
            x
        };
        let (nh, nw) = (hp / ws, wp / ws);
        let n = ws * ws;
        let nwin = nh * nw;
        let windows: Tensor<3> = x
            .reshape([b, nh, ws, nw, ws, c])
            .permute([0, 1, 3, 2, 4, 5])
            .reshape([b * nwin, n, c]);

        // window attention
        let heads = self.num_heads;
        let hd = c / heads;
        let split = |t: Tensor<3>| t.reshape([b * nwin, n, heads, hd]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(windows.clone()));
        let k = split(self.k_proj.forward(windows.clone()));
        let v = split(self.v_proj.forward(windows));
        let scale = (hd as f64).powf(-0.5);
        let scores = q.matmul(k.swap_dims(2, 3)) * scale; // [bW, heads, n, n]
        let idx: Tensor<1, Int> = Tensor::from_data(
            TensorData::new(relative_position_index(ws, self.window_size), [n * n]),
            &device,
        );
        let bias = self
            .relative_position_bias_table
            .val()
            .select(0, idx)
            .reshape([n, n, heads])
            .permute([2, 0, 1])
            .reshape([1, heads, n, n]);
        let scores = scores + bias;
        let scores = if shift > 0 {
            let mask: Tensor<5> = Tensor::from_data(
                TensorData::new(shifted_window_mask(hp, wp, ws, shift), [1, nwin, 1, n, n]),
                &device,
            );
            (scores.reshape([b, nwin, heads, n, n]) + mask).reshape([b * nwin, heads, n, n])
        } else {
            scores
        };
        let attn = softmax(scores, 3);
        let out = attn.matmul(v).swap_dims(1, 2).reshape([b * nwin, n, c]);
        let out = self.o_proj.forward(out);

        // reverse windows, shift back, crop
        let out: Tensor<4> = out
            .reshape([b, nh, nw, ws, ws, c])
            .permute([0, 1, 3, 2, 4, 5])
            .reshape([b, hp, wp, c]);
        let out = if shift > 0 {
            roll(roll(out, 1, shift, false), 2, shift, false)
        } else {
            out
        };
        let out = if hp > h || wp > w {
            out.narrow(1, 0, h).narrow(2, 0, w)
        } else {
            out
        };
        let x = shortcut + out.reshape([b, h * w, c]);
        let y = self.fc2.forward(gelu(
            self.fc1.forward(self.layernorm_after.forward(x.clone())),
        ));
        x + y
    }
}

impl PatchMerging {
    pub(crate) fn build(b: &mut Builder<'_>, p: &str, dim: usize) -> Self {
        Self {
            norm: b.layer_norm(&format!("{p}.norm"), 4 * dim, 1e-5),
            reduction: b.linear(&format!("{p}.reduction"), 4 * dim, 2 * dim, false),
        }
    }

    /// `[B, H·W, C]` on `h×w` → `[B, ⌈h/2⌉·⌈w/2⌉, 2C]`.
    pub fn forward(&self, x: Tensor<3>, h: usize, w: usize) -> Tensor<3> {
        let [b, _, c] = x.dims();
        let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
        let x = pad_hw(x.reshape([b, h, w, c]), 2 * h2, 2 * w2);
        // [b, h2, r, w2, s, c] -> [b, h2, w2, s, r, c]: channel block (s·2 + r) = HF order
        // x0=[0::2,0::2], x1=[1::2,0::2], x2=[0::2,1::2], x3=[1::2,1::2].
        let x: Tensor<3> = x
            .reshape([b, h2, 2, w2, 2, c])
            .permute([0, 1, 3, 4, 2, 5])
            .reshape([b, h2 * w2, 4 * c]);
        self.reduction.forward(self.norm.forward(x))
    }
}

impl MedClipVision {
    pub(crate) fn build(b: &mut SwinBuilder<'_>, cfg: &SwinConfig) -> Self {
        let e = cfg.embed_dim;
        let patch_embed = b.conv(
            "embeddings.patch_embeddings.projection",
            cfg.num_channels,
            e,
            cfg.patch_size,
        );
        let embed_norm = b.layer_norm("embeddings.norm", e, 1e-5);
        let n_stages = cfg.depths.len();
        let stages = (0..n_stages)
            .map(|s| SwinStage {
                blocks: (0..cfg.depths[s])
                    .map(|i| {
                        SwinBlock::build(b, &format!("encoder.layers.{s}.blocks.{i}"), cfg, s, i)
                    })
                    .collect(),
                downsample: (s + 1 < n_stages).then(|| {
                    PatchMerging::build(
                        b,
                        &format!("encoder.layers.{s}.downsample"),
                        cfg.stage_dim(s),
                    )
                }),
            })
            .collect();
        let layernorm = b.layer_norm("layernorm", cfg.num_features(), cfg.layer_norm_eps);
        let projection = b.projection(cfg.num_features(), cfg.proj_dim);
        Self {
            patch_embed,
            embed_norm,
            stages,
            layernorm,
            projection,
            patch_size: cfg.patch_size,
        }
    }

    /// Swin pooled output (`pooler_output`, `[B, num_features]`): the features before the projection.
    pub fn pooled(&self, images: Tensor<4>) -> Tensor<2> {
        let [b, _, h, w] = images.dims();
        let p = self.patch_size;
        // HF SwinPatchEmbeddings.maybe_pad: zero-pad right/bottom to a multiple of the patch size.
        let (hp, wp) = (h.div_ceil(p) * p, w.div_ceil(p) * p);
        let x = if hp != h || wp != w {
            pad_hw(images.permute([0, 2, 3, 1]), hp, wp).permute([0, 3, 1, 2])
        } else {
            images
        };
        let x = self.patch_embed.forward(x);
        let [_, c, mut gh, mut gw] = x.dims();
        let mut x = self
            .embed_norm
            .forward(x.reshape([b, c, gh * gw]).swap_dims(1, 2));
        for stage in &self.stages {
            for block in &stage.blocks {
                x = block.forward(x, gh, gw);
            }
            if let Some(ds) = &stage.downsample {
                x = ds.forward(x, gh, gw);
                gh = gh.div_ceil(2);
                gw = gw.div_ceil(2);
            }
        }
        let x = self.layernorm.forward(x);
        let [_, _, f] = x.dims();
        x.mean_dim(1).reshape([b, f])
    }

    /// Normalised images `[B, C, H, W]` → unnormalised features `[B, proj_dim]`
    /// (`projection_head(SwinModel(images).pooler_output)`). Differentiable w.r.t. `images`.
    ///
    /// Panics only on a wrong channel count (a programming error); see [`MedClipVision::try_forward`].
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.projection.forward(self.pooled(images))
    }

    /// [`MedClipVision::forward`] with the input shape checked first.
    pub fn try_forward(&self, images: Tensor<4>) -> Result<Tensor<2>, EncoderError> {
        let [b, c, h, w] = images.dims();
        let want_c = self.patch_embed.weight.dims()[1];
        if c != want_c || b == 0 || h == 0 || w == 0 {
            return Err(EncoderError::Input(format!(
                "expected images [B>0, {want_c}, H>0, W>0], got [{b}, {c}, {h}, {w}]"
            )));
        }
        Ok(self.forward(images))
    }

    /// Output width (`proj_dim`).
    pub fn output_dim(&self) -> usize {
        self.projection.weight.dims()[1]
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
    fn relative_index_matches_hf_formula() {
        // HF: (dy + w-1) * (2w-1) + (dx + w-1); w=2: tokens (0,0),(0,1),(1,0),(1,1)
        let idx = relative_position_index(2, 2);
        assert_eq!(idx, vec![4, 3, 1, 0, 5, 4, 2, 1, 7, 6, 4, 3, 8, 7, 5, 4]);
        // centre of a 7-window table for a 1x1 window
        assert_eq!(relative_position_index(1, 7), vec![84]);
        let idx = relative_position_index(7, 7);
        assert_eq!(idx.len(), 49 * 49);
        assert_eq!(*idx.iter().max().unwrap(), 168);
        assert_eq!(idx[0], 84);
    }

    #[test]
    fn mask_regions() {
        // 4x4 map, window 2, shift 1: regions per axis: [0,0,1,2]
        let m = shifted_window_mask(4, 4, 2, 1);
        assert_eq!(m.len(), 4 * 16);
        // window 0 (rows 0-1, cols 0-1): all region 0 -> all zero
        assert!(m[..16].iter().all(|&v| v == 0.0));
        // last window (rows 2-3, cols 2-3): labels 4,5,7,8 all distinct -> off-diagonal -100
        let last = &m[48..];
        for i in 0..4 {
            for j in 0..4 {
                assert_eq!(last[i * 4 + j], if i == j { 0.0 } else { -100.0 });
            }
        }
    }
}
