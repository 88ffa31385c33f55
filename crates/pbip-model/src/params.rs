//! Building modules from named host tensors (or from a seeded random initialiser) and walking
//! their parameters by upstream (PyTorch) name.

use std::collections::{BTreeMap, BTreeSet};

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::ModelError;
use crate::host::{HostTensor, TensorMap};

/// How a parameter is initialised when no weights are given (NVlabs / PBIP `_init_weights`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Init {
    /// Truncated normal N(0, std) cut at ±2 (absolute, as `timm.trunc_normal_`).
    TruncNormal(f64),
    /// Normal N(0, std).
    Normal(f64),
    /// Constant.
    Const(f32),
}

/// Shape of an `nn.Conv2d`: square kernel and stride, the same padding on every side.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvShape {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

/// Source of parameter values.
#[allow(clippy::large_enum_variant)] // one per load, never stored
pub(crate) enum Source<'a> {
    Map(&'a TensorMap),
    Random(ChaCha8Rng),
}

/// One N(0,1) sample (Box–Muller).
fn std_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Builds parameters by name, collecting every problem instead of stopping at the first.
pub(crate) struct Loader<'a> {
    source: Source<'a>,
    device: Device,
    used: BTreeSet<String>,
    missing: Vec<String>,
    misshaped: Vec<String>,
}

impl<'a> Loader<'a> {
    pub(crate) fn from_map(map: &'a TensorMap, device: &Device) -> Self {
        Self::new(Source::Map(map), device)
    }

    pub(crate) fn random(seed: u64, device: &Device) -> Self {
        Self::new(Source::Random(ChaCha8Rng::seed_from_u64(seed)), device)
    }

    fn new(source: Source<'a>, device: &Device) -> Self {
        Self {
            source,
            device: device.clone(),
            used: BTreeSet::new(),
            missing: Vec::new(),
            misshaped: Vec::new(),
        }
    }

    /// Host values for `name` with the expected torch `shape`.
    fn values(&mut self, name: &str, shape: &[usize], init: Init) -> Vec<f32> {
        let n: usize = shape.iter().product();
        match &mut self.source {
            Source::Map(map) => match map.get(name) {
                None => {
                    self.missing.push(format!("{name} (expected {shape:?})"));
                    vec![0.0; n]
                }
                Some(t) => {
                    self.used.insert(name.to_string());
                    let same = t.shape == shape
                        || (t.shape.iter().product::<usize>() == n
                            && t.shape
                                .iter()
                                .filter(|&&d| d != 1)
                                .eq(shape.iter().filter(|&&d| d != 1)));
                    if !same || t.data.len() != n {
                        self.misshaped.push(format!(
                            "{name}: file has {:?}, model needs {shape:?}",
                            t.shape
                        ));
                        vec![0.0; n]
                    } else {
                        t.data.clone()
                    }
                }
            },
            Source::Random(rng) => match init {
                Init::Const(c) => vec![c; n],
                Init::Normal(std) => (0..n).map(|_| (std * std_normal(rng)) as f32).collect(),
                Init::TruncNormal(std) => (0..n)
                    .map(|_| {
                        loop {
                            let v = std * std_normal(rng);
                            if (-2.0..=2.0).contains(&v) {
                                break v as f32;
                            }
                        }
                    })
                    .collect(),
            },
        }
    }

    pub(crate) fn tensor<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        init: Init,
    ) -> Tensor<D> {
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

    /// `nn.Linear(d_in, d_out)` with torch weight `[d_out, d_in]` (stored transposed in burn).
    pub(crate) fn linear(&mut self, prefix: &str, d_in: usize, d_out: usize) -> Linear {
        let w: Tensor<2> = self.tensor(
            &format!("{prefix}.weight"),
            [d_out, d_in],
            Init::TruncNormal(0.02),
        );
        let b = self.param(&format!("{prefix}.bias"), [d_out], Init::Const(0.0));
        let mut lin = LinearConfig::new(d_in, d_out).init(&self.device);
        lin.weight = Param::from_tensor(w.transpose());
        lin.bias = Some(b);
        lin
    }

    /// `nn.Conv2d` with bias; NVlabs init normal(0, sqrt(2 / fan_out)), fan_out = k·k·out/groups.
    pub(crate) fn conv(&mut self, prefix: &str, shape: ConvShape) -> Conv2d {
        let ConvShape {
            c_in,
            c_out,
            kernel,
            stride,
            pad,
            groups,
        } = shape;
        let fan_out = (kernel * kernel * c_out / groups.max(1)).max(1);
        let w = self.param(
            &format!("{prefix}.weight"),
            [c_out, c_in / groups.max(1), kernel, kernel],
            Init::Normal((2.0 / fan_out as f64).sqrt()),
        );
        let b = self.param(&format!("{prefix}.bias"), [c_out], Init::Const(0.0));
        Conv2d {
            weight: w,
            bias: Some(b),
            stride: [stride, stride],
            kernel_size: [kernel, kernel],
            dilation: [1, 1],
            groups,
            padding: PaddingConfig2d::Explicit(pad, pad, pad, pad),
        }
    }

    pub(crate) fn layer_norm(&mut self, prefix: &str, d: usize, eps: f64) -> LayerNorm {
        let mut ln = LayerNormConfig::new(d).with_epsilon(eps).init(&self.device);
        ln.gamma = self.param(&format!("{prefix}.weight"), [d], Init::Const(1.0));
        ln.beta = Some(self.param(&format!("{prefix}.bias"), [d], Init::Const(0.0)));
        ln
    }

    /// Finishes loading: one error listing every missing, mis-shaped and (if `strict`) unexpected
    /// tensor. `ignore` lists key prefixes that may be present without being used.
    pub(crate) fn finish(
        self,
        what: &str,
        strict: bool,
        ignore: &[&str],
    ) -> Result<(), ModelError> {
        let mut unexpected = Vec::new();
        if let Source::Map(map) = &self.source
            && strict
        {
            for k in map.keys() {
                if !self.used.contains(k) && !ignore.iter().any(|p| k.starts_with(p)) {
                    unexpected.push(k.clone());
                }
            }
        }
        if self.missing.is_empty() && self.misshaped.is_empty() && unexpected.is_empty() {
            return Ok(());
        }
        Err(ModelError::Weights {
            what: what.to_string(),
            missing: self.missing,
            unexpected,
            misshaped: self.misshaped,
        })
    }
}

/// A parameter seen by [`walk`]: its burn value and how to convert it to torch layout.
pub(crate) enum ParamRef<'a> {
    /// Rank-1 parameter (bias, norm weight, logit scale).
    T1(&'a Param<Tensor<1>>),
    /// Linear weight stored `[in, out]` in burn, `[out, in]` in torch.
    Linear(&'a Param<Tensor<2>>),
    /// Rank-2 parameter with the same layout in both (e.g. prototype offsets).
    T2(&'a Param<Tensor<2>>),
    /// Conv weight, same layout in both.
    T4(&'a Param<Tensor<4>>),
}

/// Type of the parameter visitor callback.
pub(crate) type Visit<'v> = dyn FnMut(String, ParamRef<'_>) + 'v;

pub(crate) fn walk_linear(l: &Linear, prefix: &str, f: &mut Visit<'_>) {
    f(format!("{prefix}.weight"), ParamRef::Linear(&l.weight));
    if let Some(b) = &l.bias {
        f(format!("{prefix}.bias"), ParamRef::T1(b));
    }
}

pub(crate) fn walk_conv(c: &Conv2d, prefix: &str, f: &mut Visit<'_>) {
    f(format!("{prefix}.weight"), ParamRef::T4(&c.weight));
    if let Some(b) = &c.bias {
        f(format!("{prefix}.bias"), ParamRef::T1(b));
    }
}

pub(crate) fn walk_ln(l: &LayerNorm, prefix: &str, f: &mut Visit<'_>) {
    f(format!("{prefix}.weight"), ParamRef::T1(&l.gamma));
    if let Some(b) = &l.beta {
        f(format!("{prefix}.bias"), ParamRef::T1(b));
    }
}

/// Converts a parameter value (or its gradient) to a host tensor in torch layout.
pub(crate) fn param_to_host(p: &ParamRef<'_>) -> Result<HostTensor, ModelError> {
    match p {
        ParamRef::T1(t) => crate::util::to_host(t.val()),
        ParamRef::Linear(t) => crate::util::to_host(t.val().transpose()),
        ParamRef::T2(t) => crate::util::to_host(t.val()),
        ParamRef::T4(t) => crate::util::to_host(t.val()),
    }
}

/// Gradient of a parameter in torch layout, if it has one.
pub(crate) fn grad_to_host(
    p: &ParamRef<'_>,
    grads: &burn::tensor::Gradients,
) -> Result<Option<HostTensor>, ModelError> {
    Ok(match p {
        ParamRef::T1(t) => match t.val().grad(grads) {
            Some(g) => Some(crate::util::to_host(g)?),
            None => None,
        },
        ParamRef::Linear(t) => match t.val().grad(grads) {
            Some(g) => Some(crate::util::to_host(g.transpose())?),
            None => None,
        },
        ParamRef::T2(t) => match t.val().grad(grads) {
            Some(g) => Some(crate::util::to_host(g)?),
            None => None,
        },
        ParamRef::T4(t) => match t.val().grad(grads) {
            Some(g) => Some(crate::util::to_host(g)?),
            None => None,
        },
    })
}

/// Collects a name → host map over a walk.
pub(crate) fn collect<F>(
    walker: F,
    mut conv: impl FnMut(&ParamRef<'_>) -> Result<Option<HostTensor>, ModelError>,
) -> Result<TensorMap, ModelError>
where
    F: FnOnce(&mut Visit<'_>),
{
    let mut out = BTreeMap::new();
    let mut err = None;
    walker(&mut |name, p| {
        if err.is_some() {
            return;
        }
        match conv(&p) {
            Ok(Some(h)) => {
                out.insert(name, h);
            }
            Ok(None) => {}
            Err(e) => err = Some(e),
        }
    });
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}
