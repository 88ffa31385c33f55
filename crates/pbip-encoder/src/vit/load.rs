//! Building a [`Vit`] from named tensors (timm names, or Hugging Face names converted to timm's
//! layout) or a seeded initialiser, and exporting its weights.

use std::collections::BTreeMap;

use burn::tensor::Device;
use pbip_weights::{HostTensor, TensorMap, check_tensors, strip_prefix};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{Vit, VitBlock, VitConfig, VitMlp};
use crate::EncoderError;
use crate::load::{Builder, Init, Source, host, lin_out, ln_out};

/// The naming scheme of a ViT checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VitNames {
    /// timm `VisionTransformer.state_dict()` names (`patch_embed.proj.weight`, `blocks.0.attn.qkv.weight`, ...).
    Timm,
    /// transformers `ViTModel` / `Dinov2Model` / `Dinov2WithRegistersModel` names, Hub
    /// (transformers < 5) or transformers >= 5 layout.
    HuggingFace,
}

/// A tensor every timm ViT checkpoint has.
const TIMM_PROBE: &str = "patch_embed.proj.weight";
/// A tensor every HF ViT / DINOv2 checkpoint has.
const HF_PROBE: &str = "embeddings.patch_embeddings.projection.weight";

/// Tensors of timm checkpoints that the encoder does not use (classifier head, DINOv2's mask
/// token).
fn ignorable(name: &str) -> bool {
    name.starts_with("head.") || name.starts_with("head_dist.") || name == "mask_token"
}

impl VitNames {
    /// The scheme of a map (names relative to the encoder), from a probe tensor.
    pub fn detect(map: &TensorMap) -> Option<Self> {
        if map.contains_key(TIMM_PROBE) {
            Some(Self::Timm)
        } else if map.contains_key(HF_PROBE) {
            Some(Self::HuggingFace)
        } else {
            None
        }
    }
}

impl Vit {
    fn build(b: &mut Builder<'_>, cfg: &VitConfig) -> Self {
        let d = cfg.embed_dim;
        let k = cfg.patch_size;
        let patch_embed = b.conv("patch_embed.proj", cfg.in_chans, d, k);
        let cls_token = cfg
            .class_token
            .then(|| b.param("cls_token", [1, 1, d], Init::Normal(1e-6)));
        let reg_token = (cfg.num_reg_tokens > 0)
            .then(|| b.param("reg_token", [1, cfg.num_reg_tokens, d], Init::Normal(1e-6)));
        let pos_embed = b.param("pos_embed", [1, cfg.pos_embed_len(), d], Init::Normal(0.02));
        let ls = |b: &mut Builder<'_>, name: String| {
            cfg.init_values.map(|v| b.param(&name, [d], Init::Const(v)))
        };
        let blocks = (0..cfg.depth)
            .map(|i| {
                let p = format!("blocks.{i}");
                VitBlock {
                    norm1: b.layer_norm(&format!("{p}.norm1"), d, cfg.layer_norm_eps),
                    qkv: b.linear(&format!("{p}.attn.qkv"), d, 3 * d, cfg.qkv_bias),
                    proj: b.linear(&format!("{p}.attn.proj"), d, d, true),
                    ls1: ls(b, format!("{p}.ls1.gamma")),
                    norm2: b.layer_norm(&format!("{p}.norm2"), d, cfg.layer_norm_eps),
                    fc1: b.linear(&format!("{p}.mlp.fc1"), d, cfg.mlp_hidden(), true),
                    fc2: b.linear(&format!("{p}.mlp.fc2"), cfg.mlp_inner(), d, true),
                    ls2: ls(b, format!("{p}.ls2.gamma")),
                    num_heads: cfg.num_heads,
                    swiglu: cfg.mlp == VitMlp::SwiGluPacked,
                }
            })
            .collect();
        let fc = cfg.use_fc_norm();
        let norm = (cfg.final_norm && !fc).then(|| b.layer_norm("norm", d, cfg.layer_norm_eps));
        let fc_norm =
            (cfg.final_norm && fc).then(|| b.layer_norm("fc_norm", d, cfg.layer_norm_eps));
        Self {
            patch_embed,
            cls_token,
            reg_token,
            pos_embed,
            blocks,
            norm,
            fc_norm,
            config: cfg.clone(),
        }
    }

    /// Finds where a ViT sits in a checkpoint: the first of the usual prefixes (`""`, `model.`,
    /// `module.`, `trunk.`, `visual.trunk.` (CONCH), `backbone.`, `vit.`, `dinov2.`) under which a
    /// timm or an HF patch-embedding weight exists, with the naming scheme found there.
    pub fn detect_prefix(map: &TensorMap) -> Option<(&'static str, VitNames)> {
        const PREFIXES: [&str; 8] = [
            "",
            "model.",
            "module.",
            "trunk.",
            "visual.trunk.",
            "backbone.",
            "vit.",
            "dinov2.",
        ];
        PREFIXES.into_iter().find_map(|p| {
            if map.contains_key(&format!("{p}{TIMM_PROBE}")) {
                Some((p, VitNames::Timm))
            } else if map.contains_key(&format!("{p}{HF_PROBE}")) {
                Some((p, VitNames::HuggingFace))
            } else {
                None
            }
        })
    }

    /// Builds the encoder from the tensors under `prefix` (others are ignored), named as timm or
    /// as transformers does (detected from the patch-embedding weight; HF names are converted with
    /// [`hf_to_timm`]). A timm classifier `head.*` is ignored. Missing, unexpected (under `prefix`)
    /// and mis-shaped tensors are reported together in one error, under timm names.
    pub fn from_tensor_map(
        map: &TensorMap,
        prefix: &str,
        cfg: &VitConfig,
        device: &Device,
    ) -> Result<Self, EncoderError> {
        cfg.validate()?;
        let sub = strip_prefix(map, prefix);
        let names = VitNames::detect(&sub).unwrap_or(VitNames::Timm);
        let timm = match names {
            VitNames::Timm => sub,
            VitNames::HuggingFace => hf_to_timm(&sub, cfg),
        };
        let mut b = Builder::new(Source::Map(&timm), device);
        let model = Vit::build(&mut b, cfg);
        let ctx = match names {
            VitNames::Timm => format!("ViT weights (timm names) under prefix {prefix:?}"),
            VitNames::HuggingFace => format!(
                "ViT weights (Hugging Face names, shown converted to timm names) under prefix {prefix:?}"
            ),
        };
        check_tensors(&timm, &b.expected, &ignorable, &ctx)?;
        tracing::debug!(
            prefix,
            ?names,
            tensors = b.expected.len(),
            "loaded ViT encoder"
        );
        Ok(model)
    }

    /// A randomly initialised encoder, reproducible from `seed` (ChaCha8, Box–Muller normals in
    /// parameter order): weights N(0, 0.02), biases 0, LayerNorm 1/0, class and register tokens
    /// N(0, 1e-6), position embedding N(0, 0.02), LayerScale `init_values` (timm's scales; torch's
    /// RNG stream is not reproduced: save the weights with [`Vit::to_tensor_map`] to reuse them).
    pub fn random(cfg: &VitConfig, seed: u64, device: &Device) -> Result<Self, EncoderError> {
        cfg.validate()?;
        let mut b = Builder::new(Source::Random(ChaCha8Rng::seed_from_u64(seed)), device);
        Ok(Vit::build(&mut b, cfg))
    }

    /// The weights in use, in torch layout under timm names prefixed by `prefix` (so
    /// `from_tensor_map(&m, prefix, ..)` rebuilds the same encoder).
    pub fn to_tensor_map(&self, prefix: &str) -> Result<TensorMap, EncoderError> {
        let mut out = TensorMap::new();
        let mut put = |name: String, t: HostTensor| {
            out.insert(format!("{prefix}{name}"), t);
        };
        put(
            "patch_embed.proj.weight".into(),
            host(self.patch_embed.weight.val())?,
        );
        if let Some(bias) = &self.patch_embed.bias {
            put("patch_embed.proj.bias".into(), host(bias.val())?);
        }
        if let Some(c) = &self.cls_token {
            put("cls_token".into(), host(c.val())?);
        }
        if let Some(r) = &self.reg_token {
            put("reg_token".into(), host(r.val())?);
        }
        put("pos_embed".into(), host(self.pos_embed.val())?);
        for (i, blk) in self.blocks.iter().enumerate() {
            let p = format!("blocks.{i}");
            ln_out(&blk.norm1, &format!("{p}.norm1"), &mut put)?;
            lin_out(&blk.qkv, &format!("{p}.attn.qkv"), &mut put)?;
            lin_out(&blk.proj, &format!("{p}.attn.proj"), &mut put)?;
            if let Some(g) = &blk.ls1 {
                put(format!("{p}.ls1.gamma"), host(g.val())?);
            }
            ln_out(&blk.norm2, &format!("{p}.norm2"), &mut put)?;
            lin_out(&blk.fc1, &format!("{p}.mlp.fc1"), &mut put)?;
            lin_out(&blk.fc2, &format!("{p}.mlp.fc2"), &mut put)?;
            if let Some(g) = &blk.ls2 {
                put(format!("{p}.ls2.gamma"), host(g.val())?);
            }
        }
        if let Some(n) = &self.norm {
            ln_out(n, "norm", &mut put)?;
        }
        if let Some(n) = &self.fc_norm {
            ln_out(n, "fc_norm", &mut put)?;
        }
        Ok(out)
    }
}

/// Concatenates tensors along their first axis (`torch.cat(dim=0)`); `None` when the trailing
/// shapes differ.
fn cat0(parts: &[&HostTensor]) -> Option<HostTensor> {
    let first = parts.first()?;
    let tail = &first.shape[1.min(first.shape.len())..];
    let mut rows = 0;
    let mut data = Vec::new();
    for p in parts {
        if p.shape.is_empty() || &p.shape[1..] != tail {
            return None;
        }
        rows += p.shape[0];
        data.extend_from_slice(&p.data);
    }
    let mut shape = first.shape.clone();
    *shape.first_mut()? = rows;
    Some(HostTensor { shape, data })
}

/// Maps one HF block-relative name (after `encoder.layer.{i}.` or `layers.{i}.`) to timm's,
/// or to a q/k/v or gate/up part to be fused: `Ok(timm)`, `Err((fused timm name, slot))`.
fn hf_block_name(rest: &str) -> Option<Result<String, (String, usize)>> {
    let (stem, leaf) = rest.rsplit_once('.')?;
    let direct = match stem {
        "layernorm_before" | "norm1" => Some("norm1"),
        "layernorm_after" | "norm2" => Some("norm2"),
        "attention.output.dense" | "attention.o_proj" => Some("attn.proj"),
        "intermediate.dense" | "mlp.fc1" | "mlp.weights_in" => Some("mlp.fc1"),
        "output.dense" | "mlp.fc2" | "mlp.weights_out" | "mlp.down_proj" => Some("mlp.fc2"),
        "layer_scale1" if leaf == "lambda1" => return Some(Ok("ls1.gamma".into())),
        "layer_scale2" if leaf == "lambda1" => return Some(Ok("ls2.gamma".into())),
        _ => None,
    };
    if let Some(s) = direct {
        return Some(Ok(format!("{s}.{leaf}")));
    }
    let fused = match stem {
        "attention.attention.query" | "attention.q_proj" => ("attn.qkv", 0),
        "attention.attention.key" | "attention.k_proj" => ("attn.qkv", 1),
        "attention.attention.value" | "attention.v_proj" => ("attn.qkv", 2),
        "mlp.gate_proj" => ("mlp.fc1", 0),
        "mlp.up_proj" => ("mlp.fc1", 1),
        _ => return None,
    };
    Some(Err((format!("{}.{leaf}", fused.0), fused.1)))
}

/// Converts Hugging Face ViT / DINOv2 names (relative to the model; `ViTModel`, `Dinov2Model`,
/// `Dinov2WithRegistersModel`, in the Hub / transformers < 5 layout or the transformers >= 5 one)
/// to the timm layout of `cfg`:
///
/// * `embeddings.*` → `cls_token`, `reg_token`, `patch_embed.proj.*`; `encoder.layer.{i}.*` /
///   `layers.{i}.*` → `blocks.{i}.*`; `layernorm` → `norm`;
/// * separate query/key/value projections are stacked into `attn.qkv` (rows q, k, v), DINOv2's
///   `gate_proj`/`up_proj` into the SwiGLU-packed `mlp.fc1` (gate first), `weights_in` /
///   `weights_out` are `fc1` / `fc2`, `layer_scale{1,2}.lambda1` are `ls{1,2}.gamma`;
/// * HF's position embedding always has a row for the class token and none for registers: with
///   `no_embed_class` that row is added to the class token and dropped (the sums are what timm
///   computes), else zero rows are inserted for the registers;
/// * `pooler.*` and `embeddings.mask_token` (unused at inference) are dropped. Names it does not
///   know are kept unchanged, so that the load reports them.
pub fn hf_to_timm(map: &TensorMap, cfg: &VitConfig) -> TensorMap {
    let mut out = TensorMap::new();
    // (timm name) -> slot -> (original name, tensor)
    let mut fused: BTreeMap<String, BTreeMap<usize, (String, HostTensor)>> = BTreeMap::new();
    let mut pos = None;
    for (name, t) in map {
        let simple = match name.as_str() {
            "embeddings.cls_token" => Some("cls_token".to_string()),
            "embeddings.register_tokens" => Some("reg_token".to_string()),
            "embeddings.patch_embeddings.projection.weight" => {
                Some("patch_embed.proj.weight".to_string())
            }
            "embeddings.patch_embeddings.projection.bias" => {
                Some("patch_embed.proj.bias".to_string())
            }
            "layernorm.weight" => Some("norm.weight".to_string()),
            "layernorm.bias" => Some("norm.bias".to_string()),
            _ => None,
        };
        if let Some(s) = simple {
            out.insert(s, t.clone());
            continue;
        }
        if name == "embeddings.position_embeddings" {
            pos = Some(t.clone());
            continue;
        }
        if name == "embeddings.mask_token" || name.starts_with("pooler.") {
            continue;
        }
        let block = name
            .strip_prefix("encoder.layer.")
            .or_else(|| name.strip_prefix("layers."))
            .and_then(|r| r.split_once('.'))
            .and_then(|(i, rest)| i.parse::<usize>().ok().map(|i| (i, rest)));
        let mapped = block.and_then(|(i, rest)| {
            hf_block_name(rest).map(|m| match m {
                Ok(s) => Ok(format!("blocks.{i}.{s}")),
                Err((s, slot)) => Err((format!("blocks.{i}.{s}"), slot)),
            })
        });
        match mapped {
            Some(Ok(s)) => {
                out.insert(s, t.clone());
            }
            Some(Err((s, slot))) => {
                fused
                    .entry(s)
                    .or_default()
                    .insert(slot, (name.clone(), t.clone()));
            }
            None => {
                out.insert(name.clone(), t.clone());
            }
        }
    }
    for (timm_name, parts) in fused {
        let n_parts = if timm_name.contains(".attn.qkv.") {
            3
        } else {
            2
        };
        let complete = parts.len() == n_parts && parts.keys().copied().eq(0..n_parts);
        let stacked = if complete {
            let ts: Vec<&HostTensor> = parts.values().map(|(_, t)| t).collect();
            cat0(&ts)
        } else {
            None
        };
        match stacked {
            Some(t) => {
                out.insert(timm_name, t);
            }
            // incomplete or inconsistent: keep the parts so that the load names them
            None => {
                for (orig, t) in parts.into_values() {
                    out.insert(orig, t);
                }
            }
        }
    }
    if let Some(p) = pos {
        let timm_pos = hf_pos_embed(p, &mut out, cfg);
        out.insert("pos_embed".into(), timm_pos);
    }
    out
}

/// HF position embedding `[1, 1 + N, D]` (class row first) → timm's for `cfg`.
fn hf_pos_embed(p: HostTensor, out: &mut TensorMap, cfg: &VitConfig) -> HostTensor {
    let [one, rows, d] = match p.shape[..] {
        [a, b, c] => [a, b, c],
        _ => return p,
    };
    if one != 1 || rows == 0 || !cfg.class_token {
        return p;
    }
    let cls_row = &p.data[..d];
    if cfg.no_embed_class {
        match out.get_mut("cls_token") {
            Some(cls) if cls.data.len() == d => {
                for (c, r) in cls.data.iter_mut().zip(cls_row) {
                    *c += *r;
                }
            }
            _ => return p, // reported by the shape / name check
        }
        HostTensor {
            shape: vec![1, rows - 1, d],
            data: p.data[d..].to_vec(),
        }
    } else if cfg.num_reg_tokens > 0 {
        let mut data = Vec::with_capacity((rows + cfg.num_reg_tokens) * d);
        data.extend_from_slice(cls_row);
        data.resize(d + cfg.num_reg_tokens * d, 0.0);
        data.extend_from_slice(&p.data[d..]);
        HostTensor {
            shape: vec![1, rows + cfg.num_reg_tokens, d],
            data,
        }
    } else {
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vit::{VitConfig, VitPool};

    fn t(shape: &[usize], v: f32) -> HostTensor {
        HostTensor {
            shape: shape.to_vec(),
            data: vec![v; shape.iter().product()],
        }
    }

    fn small(no_embed_class: bool, regs: usize) -> VitConfig {
        VitConfig::from_json(&format!(
            r#"{{"embed_dim": 8, "depth": 1, "num_heads": 2, "patch_size": 16, "img_size": 32,
                "no_embed_class": {no_embed_class}, "num_reg_tokens": {regs}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn hf_names_fuse_qkv_and_swiglu_and_fold_the_class_position() {
        let mut m = TensorMap::new();
        m.insert("embeddings.cls_token".into(), t(&[1, 1, 8], 1.0));
        m.insert("embeddings.position_embeddings".into(), {
            let mut p = t(&[1, 5, 8], 3.0);
            p.data[..8].fill(0.5);
            p
        });
        m.insert("embeddings.mask_token".into(), t(&[1, 8], 0.0));
        m.insert("pooler.dense.bias".into(), t(&[8], 0.0));
        m.insert(
            "encoder.layer.0.attention.attention.query.weight".into(),
            t(&[8, 8], 1.0),
        );
        m.insert(
            "encoder.layer.0.attention.attention.key.weight".into(),
            t(&[8, 8], 2.0),
        );
        m.insert(
            "encoder.layer.0.attention.attention.value.weight".into(),
            t(&[8, 8], 3.0),
        );
        m.insert("layers.1.attention.q_proj.bias".into(), t(&[8], 1.0));
        m.insert(
            "encoder.layer.0.mlp.gate_proj.weight".into(),
            t(&[4, 8], 7.0),
        );
        m.insert("encoder.layer.0.mlp.up_proj.weight".into(), t(&[4, 8], 9.0));
        m.insert("encoder.layer.0.layer_scale2.lambda1".into(), t(&[8], 1.0));
        m.insert("encoder.layer.0.something.else".into(), t(&[1], 1.0));
        let out = hf_to_timm(&m, &small(true, 0));
        let qkv = &out["blocks.0.attn.qkv.weight"];
        assert_eq!(qkv.shape, vec![24, 8]);
        assert_eq!((qkv.data[0], qkv.data[64], qkv.data[128]), (1.0, 2.0, 3.0));
        let fc1 = &out["blocks.0.mlp.fc1.weight"];
        assert_eq!(fc1.shape, vec![8, 8]);
        assert_eq!((fc1.data[0], fc1.data[32]), (7.0, 9.0));
        assert!(out.contains_key("blocks.0.ls2.gamma"));
        // an incomplete q/k/v keeps its original name (reported by the load)
        assert!(out.contains_key("layers.1.attention.q_proj.bias"));
        assert!(out.contains_key("encoder.layer.0.something.else"));
        assert!(
            !out.keys()
                .any(|k| k.contains("pooler") || k.contains("mask_token"))
        );
        // no_embed_class: class row folded into the token
        assert_eq!(out["pos_embed"].shape, vec![1, 4, 8]);
        assert!(out["pos_embed"].data.iter().all(|v| *v == 3.0));
        assert!(out["cls_token"].data.iter().all(|v| *v == 1.5));

        // with the class position kept and registers: zero rows for the registers
        let out = hf_to_timm(&m, &small(false, 2));
        let p = &out["pos_embed"];
        assert_eq!(p.shape, vec![1, 7, 8]);
        assert!(p.data[..8].iter().all(|v| *v == 0.5));
        assert!(p.data[8..24].iter().all(|v| *v == 0.0));
        assert!(p.data[24..].iter().all(|v| *v == 3.0));
        assert!(out["cls_token"].data.iter().all(|v| *v == 1.0));
    }

    #[test]
    fn random_roundtrip_and_mismatch_report() {
        let device = Device::flex();
        let mut cfg = small(true, 2);
        cfg.init_values = Some(0.1);
        cfg.global_pool = VitPool::TokenAvg;
        let model = Vit::random(&cfg, 3, &device).unwrap();
        let m = model.to_tensor_map("x.").unwrap();
        assert_eq!(Vit::detect_prefix(&m), None);
        let back = Vit::from_tensor_map(&m, "x.", &cfg, &device).unwrap();
        assert_eq!(back.to_tensor_map("x.").unwrap(), m);
        let plain = model.to_tensor_map("").unwrap();
        assert_eq!(Vit::detect_prefix(&plain), Some(("", VitNames::Timm)));

        // a deeper config: missing block tensors, reported together
        let deeper = VitConfig {
            depth: 2,
            ..cfg.clone()
        };
        let e = Vit::from_tensor_map(&m, "x.", &deeper, &device)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("blocks.1.attn.qkv.weight"), "{e}");
        // wider: every tensor mis-shaped
        let wider = VitConfig {
            embed_dim: 16,
            ..cfg
        };
        assert!(Vit::from_tensor_map(&m, "x.", &wider, &device).is_err());
    }
}
