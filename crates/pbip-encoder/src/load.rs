//! Building the tower from named tensors or a seeded initialiser, name maps, and export.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, PaddingConfig2d};
use burn::tensor::{Device, Tensor, TensorData};
use pbip_weights::{HostTensor, TensorMap, WeightsError, check_tensors, strip_prefix};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::swin::MedClipVision;
use crate::{EncoderError, SwinConfig};

/// Name of the projection weight (torch layout `[proj_dim, num_features]`) relative to the tower prefix.
pub const PROJECTION_NAME: &str = "projection_head.weight";
/// Swin weights sit under this sub-prefix in MedCLIP layouts (`vision_model.model.*`).
pub const SWIN_SUBPREFIX: &str = "model.";
/// A tensor present in every Swin checkpoint (used to detect layouts).
const PROBE: &str = "embeddings.patch_embeddings.projection.weight";

/// Random initialisation rules (the Swin ones are transformers `SwinPreTrainedModel._init_weights`,
/// the ViT ones timm's).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Init {
    /// N(0, std), Box–Muller normals ([`std_normal`]).
    Normal(f64),
    Zeros,
    Ones,
    Const(f64),
}

/// Where the values of a [`Builder`] come from.
#[allow(clippy::large_enum_variant)] // one per load, never stored
pub(crate) enum Source<'a> {
    /// Tensors by name (missing or mis-shaped ones are reported by `check_tensors` afterwards).
    Map(&'a TensorMap),
    /// A seeded initialiser following [`Init`].
    Random(ChaCha8Rng),
}

#[allow(clippy::large_enum_variant)] // one per load, never stored
enum ProjSource<'a> {
    Tensor(&'a HostTensor),
    Random(ChaCha8Rng),
}

/// Creates parameters by name (Swin: canonical, transformers >= 5 names; ViT: timm names) and
/// remembers what it asked for (`expected`, for `check_tensors`). Shared by the Swin and ViT
/// towers.
pub(crate) struct Builder<'a> {
    src: Source<'a>,
    device: Device,
    pub(crate) expected: Vec<(String, Vec<usize>)>,
}

/// The Swin tower's [`Builder`] plus its projection head (`projection_head.weight`, whose source
/// and shape problems are handled apart from the Swin names).
pub(crate) struct SwinBuilder<'a> {
    params: Builder<'a>,
    proj: ProjSource<'a>,
    proj_problem: Option<(Vec<usize>, Vec<usize>)>,
}

impl<'a> std::ops::Deref for SwinBuilder<'a> {
    type Target = Builder<'a>;
    fn deref(&self) -> &Builder<'a> {
        &self.params
    }
}

impl<'a> std::ops::DerefMut for SwinBuilder<'a> {
    fn deref_mut(&mut self) -> &mut Builder<'a> {
        &mut self.params
    }
}

pub(crate) fn std_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

impl<'a> Builder<'a> {
    pub(crate) fn new(src: Source<'a>, device: &Device) -> Self {
        Self {
            src,
            device: device.clone(),
            expected: Vec::new(),
        }
    }

    fn values(&mut self, name: &str, shape: &[usize], init: Init) -> Vec<f32> {
        let n: usize = shape.iter().product();
        self.expected.push((name.to_string(), shape.to_vec()));
        match &mut self.src {
            Source::Map(m) => match m.get(name) {
                Some(t) if t.shape == shape && t.data.len() == n => t.data.clone(),
                _ => vec![0.0; n], // reported by check_tensors afterwards
            },
            Source::Random(rng) => match init {
                Init::Zeros => vec![0.0; n],
                Init::Ones => vec![1.0; n],
                Init::Const(v) => vec![v as f32; n],
                Init::Normal(s) => (0..n).map(|_| (s * std_normal(rng)) as f32).collect(),
            },
        }
    }

    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D], init: Init) -> Tensor<D> {
        let v = self.values(name, &shape, init);
        Tensor::from_data(TensorData::new(v, shape), &self.device)
    }

    pub(crate) fn param<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        init: Init,
    ) -> Param<Tensor<D>> {
        Param::from_tensor(self.tensor(name, shape, init))
    }

    /// torch `nn.Linear(d_in, d_out)`: weight `[d_out, d_in]` (burn stores `[d_in, d_out]`).
    pub(crate) fn linear(&mut self, p: &str, d_in: usize, d_out: usize, bias: bool) -> Linear {
        let w: Tensor<2> = self.tensor(&format!("{p}.weight"), [d_out, d_in], Init::Normal(0.02));
        Linear {
            weight: Param::from_tensor(w.transpose()),
            bias: bias.then(|| self.param(&format!("{p}.bias"), [d_out], Init::Zeros)),
        }
    }

    pub(crate) fn layer_norm(&mut self, p: &str, d: usize, eps: f64) -> LayerNorm {
        let mut ln = LayerNormConfig::new(d).with_epsilon(eps).init(&self.device);
        ln.gamma = self.param(&format!("{p}.weight"), [d], Init::Ones);
        ln.beta = Some(self.param(&format!("{p}.bias"), [d], Init::Zeros));
        ln
    }

    /// Conv with kernel = stride = `k`, no padding, bias (a patch embedding).
    pub(crate) fn conv(&mut self, p: &str, c_in: usize, c_out: usize, k: usize) -> Conv2d {
        Conv2d {
            weight: self.param(
                &format!("{p}.weight"),
                [c_out, c_in, k, k],
                Init::Normal(0.02),
            ),
            bias: Some(self.param(&format!("{p}.bias"), [c_out], Init::Zeros)),
            stride: [k, k],
            kernel_size: [k, k],
            dilation: [1, 1],
            groups: 1,
            padding: PaddingConfig2d::Valid,
        }
    }
}

impl SwinBuilder<'_> {
    /// The projection head `[proj_dim, num_features]` (torch layout), no bias.
    pub(crate) fn projection(&mut self, d_in: usize, d_out: usize) -> Linear {
        let v = match &mut self.proj {
            ProjSource::Tensor(t) => {
                if t.shape == [d_out, d_in] {
                    t.data.clone()
                } else {
                    self.proj_problem = Some((vec![d_out, d_in], t.shape.clone()));
                    vec![0.0; d_in * d_out]
                }
            }
            // torch nn.Linear default (kaiming_uniform, a=sqrt(5)): U(-1/sqrt(in), 1/sqrt(in)).
            ProjSource::Random(rng) => {
                let bound = 1.0 / (d_in as f64).sqrt();
                (0..d_in * d_out)
                    .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32)
                    .collect()
            }
        };
        let w: Tensor<2> = Tensor::from_data(TensorData::new(v, [d_out, d_in]), &self.device);
        Linear {
            weight: Param::from_tensor(w.transpose()),
            bias: None,
        }
    }
}

/// Maps classic transformers (< 5) Swin names to the transformers >= 5 names used here.
/// Returns `None` for tensors that are recomputed rather than loaded (`relative_position_index`).
pub fn canonical_swin_name(name: &str) -> Option<String> {
    if name.ends_with("relative_position_index") {
        return None;
    }
    let pairs = [
        (".attention.self.query.", ".attention.q_proj."),
        (".attention.self.key.", ".attention.k_proj."),
        (".attention.self.value.", ".attention.v_proj."),
        (".attention.output.dense.", ".attention.o_proj."),
        (
            ".attention.self.relative_position_bias_table",
            ".attention.relative_position_bias.relative_position_bias_table",
        ),
        (".intermediate.dense.", ".mlp.fc1."),
        (".output.dense.", ".mlp.fc2."),
    ];
    for (old, new) in pairs {
        if name.contains(old) {
            return Some(name.replacen(old, new, 1));
        }
    }
    Some(name.to_string())
}

/// Tensors that may appear in Swin checkpoints without being used.
fn ignorable(name: &str) -> bool {
    name == "embeddings.mask_token"
}

fn canonical_map(map: &TensorMap) -> TensorMap {
    map.iter()
        .filter_map(|(k, v)| canonical_swin_name(k).map(|c| (c, v.clone())))
        .collect()
}

impl MedClipVision {
    /// Finds the tower prefix in a tensor map: the first of `clip.vision_model.` (PBIP fixture),
    /// `vision_model.` (MedCLIP `pytorch_model.bin`), `` (the tower's own state dict, `model.*`)
    /// under which `model.embeddings.patch_embeddings.projection.weight` exists.
    pub fn detect_prefix(map: &TensorMap) -> Option<&'static str> {
        ["clip.vision_model.", "vision_model.", ""]
            .into_iter()
            .find(|p| map.contains_key(&format!("{p}{SWIN_SUBPREFIX}{PROBE}")))
    }

    /// Builds the tower from `map`, taking everything under `prefix`:
    /// `{prefix}model.<Swin names>` and `{prefix}projection_head.weight` (`[proj_dim, num_features]`).
    /// Both transformers naming schemes are accepted; `relative_position_index` buffers are ignored
    /// (recomputed); tensors outside `prefix` (text tower, `logit_scale`, other models) are ignored.
    /// Missing, unexpected (under `prefix`) and mis-shaped tensors are reported together in one error.
    pub fn from_tensor_map(
        map: &TensorMap,
        prefix: &str,
        cfg: &SwinConfig,
        device: &Device,
    ) -> Result<Self, EncoderError> {
        cfg.validate()?;
        let sub = strip_prefix(map, prefix);
        let mut swin = TensorMap::new();
        let mut other = TensorMap::new();
        for (k, v) in sub {
            match k.strip_prefix(SWIN_SUBPREFIX) {
                Some(s) => {
                    swin.insert(s.to_string(), v);
                }
                None => {
                    other.insert(k, v);
                }
            }
        }
        let proj = other.remove(PROJECTION_NAME);
        let swin = canonical_map(&swin);
        let ctx = format!("MedCLIP vision tower under prefix {prefix:?}");
        let mut b = SwinBuilder {
            params: Builder::new(Source::Map(&swin), device),
            proj: match &proj {
                Some(t) => ProjSource::Tensor(t),
                None => ProjSource::Random(ChaCha8Rng::seed_from_u64(0)),
            },
            proj_problem: None,
        };
        let model = MedClipVision::build(&mut b, cfg);
        let mut expected: Vec<(String, Vec<usize>)> = b
            .expected
            .iter()
            .map(|(n, s)| (format!("{prefix}{SWIN_SUBPREFIX}{n}"), s.clone()))
            .collect();
        expected.push((
            format!("{prefix}{PROJECTION_NAME}"),
            vec![cfg.proj_dim, cfg.num_features()],
        ));
        // Re-assemble the (canonicalised) names actually present under the prefix for one check.
        let mut present = TensorMap::new();
        for (k, v) in swin {
            present.insert(format!("{prefix}{SWIN_SUBPREFIX}{k}"), v);
        }
        for (k, v) in other {
            present.insert(format!("{prefix}{k}"), v);
        }
        if let Some(p) = proj {
            present.insert(format!("{prefix}{PROJECTION_NAME}"), p);
        }
        let swin_prefix = format!("{prefix}{SWIN_SUBPREFIX}");
        check_tensors(
            &present,
            &expected,
            &|n| n.strip_prefix(swin_prefix.as_str()).is_some_and(ignorable),
            &ctx,
        )?;
        tracing::debug!(
            prefix,
            tensors = expected.len(),
            "loaded MedCLIP vision tower"
        );
        Ok(model)
    }

    /// Builds the tower from a plain HF Swin checkpoint (`SwinModel` names under `swin_prefix`, e.g.
    /// `` for `model.safetensors` of a `SwinModel`, `swin.` for `SwinForImageClassification`;
    /// classifier and other tensors outside the prefix are ignored) plus a projection: `projection`
    /// (`[proj_dim, num_features]`, torch layout) or, when `None`, a seeded random one
    /// (see [`MedClipVision::random`] for the rule).
    pub fn from_swin(
        map: &TensorMap,
        swin_prefix: &str,
        projection: Option<&HostTensor>,
        projection_seed: u64,
        cfg: &SwinConfig,
        device: &Device,
    ) -> Result<Self, EncoderError> {
        cfg.validate()?;
        let swin = canonical_map(&strip_prefix(map, swin_prefix));
        let mut b = SwinBuilder {
            params: Builder::new(Source::Map(&swin), device),
            proj: match projection {
                Some(t) => ProjSource::Tensor(t),
                None => ProjSource::Random(ChaCha8Rng::seed_from_u64(projection_seed)),
            },
            proj_problem: None,
        };
        let model = MedClipVision::build(&mut b, cfg);
        let ctx = format!("Swin weights under prefix {swin_prefix:?}");
        // With an empty prefix, tensors of other heads (`classifier.*`, `pooler.*`) may sit alongside.
        let extra_ok =
            |n: &str| ignorable(n) || n.starts_with("classifier.") || n.starts_with("pooler.");
        let swin_result = check_tensors(&swin, &b.expected, &extra_ok, &ctx);
        match (swin_result, b.proj_problem) {
            (Ok(()), None) => Ok(model),
            (Ok(()), Some((e, f))) => Err(EncoderError::Weights(WeightsError::NameMismatch {
                context: "projection head".into(),
                missing: vec![],
                unexpected: vec![],
                mis_shaped: vec![(PROJECTION_NAME.into(), e, f)],
            })),
            (
                Err(WeightsError::NameMismatch {
                    context,
                    missing,
                    unexpected,
                    mut mis_shaped,
                }),
                p,
            ) => {
                if let Some((e, f)) = p {
                    mis_shaped.push((PROJECTION_NAME.into(), e, f));
                }
                Err(EncoderError::Weights(WeightsError::NameMismatch {
                    context,
                    missing,
                    unexpected,
                    mis_shaped,
                }))
            }
            (Err(e), _) => Err(e.into()),
        }
    }

    /// A randomly initialised tower, reproducible from `seed` (ChaCha8):
    /// Swin as transformers `_init_weights` (conv/linear weights N(0, 0.02) by Box–Muller from
    /// `ChaCha8Rng::seed_from_u64(seed)`, in parameter order; biases 0; LayerNorm 1/0;
    /// relative-position tables 0); projection as torch's `nn.Linear` default,
    /// U(-1/√in, 1/√in), from `ChaCha8Rng::seed_from_u64(seed ^ 0x9E37_79B9_7F4A_7C15)`.
    /// (torch's own RNG stream is not reproduced: save the weights with
    /// [`MedClipVision::to_tensor_map`] to reuse them.)
    pub fn random(cfg: &SwinConfig, seed: u64, device: &Device) -> Result<Self, EncoderError> {
        cfg.validate()?;
        let mut b = SwinBuilder {
            params: Builder::new(Source::Random(ChaCha8Rng::seed_from_u64(seed)), device),
            proj: ProjSource::Random(ChaCha8Rng::seed_from_u64(seed ^ 0x9E37_79B9_7F4A_7C15)),
            proj_problem: None,
        };
        Ok(MedClipVision::build(&mut b, cfg))
    }

    /// The weights in use, in torch layout, named `{prefix}model.<transformers >= 5 Swin names>` and
    /// `{prefix}projection_head.weight` (so `from_tensor_map(&m, prefix, ..)` rebuilds the same tower).
    pub fn to_tensor_map(&self, prefix: &str) -> Result<TensorMap, EncoderError> {
        let mut out = TensorMap::new();
        let sp = format!("{prefix}{SWIN_SUBPREFIX}");
        let mut put = |name: String, t: HostTensor| {
            out.insert(name, t);
        };
        put(
            format!("{sp}embeddings.patch_embeddings.projection.weight"),
            host(self.patch_embed.weight.val())?,
        );
        if let Some(bias) = &self.patch_embed.bias {
            put(
                format!("{sp}embeddings.patch_embeddings.projection.bias"),
                host(bias.val())?,
            );
        }
        ln_out(&self.embed_norm, &format!("{sp}embeddings.norm"), &mut put)?;
        for (s, stage) in self.stages.iter().enumerate() {
            for (i, blk) in stage.blocks.iter().enumerate() {
                let p = format!("{sp}encoder.layers.{s}.blocks.{i}");
                ln_out(
                    &blk.layernorm_before,
                    &format!("{p}.layernorm_before"),
                    &mut put,
                )?;
                lin_out(&blk.q_proj, &format!("{p}.attention.q_proj"), &mut put)?;
                lin_out(&blk.k_proj, &format!("{p}.attention.k_proj"), &mut put)?;
                lin_out(&blk.v_proj, &format!("{p}.attention.v_proj"), &mut put)?;
                lin_out(&blk.o_proj, &format!("{p}.attention.o_proj"), &mut put)?;
                put(
                    format!("{p}.attention.relative_position_bias.relative_position_bias_table"),
                    host(blk.relative_position_bias_table.val())?,
                );
                ln_out(
                    &blk.layernorm_after,
                    &format!("{p}.layernorm_after"),
                    &mut put,
                )?;
                lin_out(&blk.fc1, &format!("{p}.mlp.fc1"), &mut put)?;
                lin_out(&blk.fc2, &format!("{p}.mlp.fc2"), &mut put)?;
            }
            if let Some(ds) = &stage.downsample {
                let p = format!("{sp}encoder.layers.{s}.downsample");
                ln_out(&ds.norm, &format!("{p}.norm"), &mut put)?;
                lin_out(&ds.reduction, &format!("{p}.reduction"), &mut put)?;
            }
        }
        ln_out(&self.layernorm, &format!("{sp}layernorm"), &mut put)?;
        put(
            format!("{prefix}{PROJECTION_NAME}"),
            host(self.projection.weight.val().transpose())?,
        );
        Ok(out)
    }
}

pub(crate) fn host<const D: usize>(t: Tensor<D>) -> Result<HostTensor, EncoderError> {
    let shape = t.dims().to_vec();
    let data = t
        .try_into_vec_as::<f32>()
        .map_err(|e| EncoderError::Backend(format!("{e:?}")))?;
    Ok(HostTensor { shape, data })
}

/// Writes a `Linear` under `{p}.weight` (PyTorch layout `[out, in]`) and `{p}.bias`.
pub(crate) fn lin_out(
    l: &Linear,
    p: &str,
    put: &mut dyn FnMut(String, HostTensor),
) -> Result<(), EncoderError> {
    put(format!("{p}.weight"), host(l.weight.val().transpose())?);
    if let Some(b) = &l.bias {
        put(format!("{p}.bias"), host(b.val())?);
    }
    Ok(())
}

/// Writes a `LayerNorm` under `{p}.weight` / `{p}.bias`.
pub(crate) fn ln_out(
    l: &LayerNorm,
    p: &str,
    put: &mut dyn FnMut(String, HostTensor),
) -> Result<(), EncoderError> {
    put(format!("{p}.weight"), host(l.gamma.val())?);
    if let Some(b) = &l.beta {
        put(format!("{p}.bias"), host(b.val())?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_names_map_to_v5() {
        let c = |s: &str| canonical_swin_name(s);
        assert_eq!(
            c("encoder.layers.0.blocks.1.attention.self.query.weight").as_deref(),
            Some("encoder.layers.0.blocks.1.attention.q_proj.weight")
        );
        assert_eq!(
            c("encoder.layers.2.blocks.0.attention.output.dense.bias").as_deref(),
            Some("encoder.layers.2.blocks.0.attention.o_proj.bias")
        );
        assert_eq!(
            c("encoder.layers.2.blocks.0.attention.self.relative_position_bias_table").as_deref(),
            Some(
                "encoder.layers.2.blocks.0.attention.relative_position_bias.relative_position_bias_table"
            )
        );
        assert_eq!(
            c("encoder.layers.0.blocks.0.intermediate.dense.weight").as_deref(),
            Some("encoder.layers.0.blocks.0.mlp.fc1.weight")
        );
        assert_eq!(
            c("encoder.layers.0.blocks.0.output.dense.weight").as_deref(),
            Some("encoder.layers.0.blocks.0.mlp.fc2.weight")
        );
        assert_eq!(
            c("encoder.layers.0.blocks.0.attention.self.relative_position_index"),
            None
        );
        assert_eq!(c("layernorm.weight").as_deref(), Some("layernorm.weight"));
    }
}
