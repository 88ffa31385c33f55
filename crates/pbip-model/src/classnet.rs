//! PBIP ClassNet: MiT backbone + per-scale prototype projection and similarity maps
//! (upstream `model/model.py`).

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::host::{HostTensor, TensorMap};
use crate::merge::check_k_list;
use crate::mit::{MitConfig, MixTransformer};
use crate::params::{
    Init, Loader, ParamRef, Visit, collect, grad_to_host, param_to_host, walk_linear,
};
use crate::pool::{Pooling, pool_last_dim};
use crate::util::l2_normalize;

/// Upstream initial value of `logit_scale{i}` (1/0.07, used linearly).
pub const LOGIT_SCALE_INIT: f32 = 1.0 / 0.07;

/// Static configuration of a [`ClassNet`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassNetConfig {
    /// Backbone architecture.
    pub backbone: MitConfig,
    /// Subclasses per parent class (ΣK = number of prototypes).
    pub k_list: Vec<usize>,
    /// Prototype dimension (MedCLIP: 512).
    pub proto_dim: usize,
    /// Head options beyond upstream (default: upstream's head). Absent in older checkpoints.
    #[serde(default)]
    pub head: HeadConfig,
}

/// Options of the prototype head. The default is upstream PBIP's head exactly; each option is a
/// measured departure for training without pretrained weights (see `configs/cpu.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HeadConfig {
    /// A learnable offset `[ΣK, proto_dim]` (initialised to 0) added to the fixed prototype bank
    /// before the projections `l_fc_i`, so that a bank whose prototypes are nearly collinear (a
    /// random encoder) can still separate the classes. Parameter `prototype_offset`.
    pub prototype_offsets: bool,
    /// L2-normalise the projected prototypes: `S_i = s_i · cos(x, P_i)` (upstream multiplies the
    /// normalised pixel feature by the unnormalised projection).
    pub normalize_prototypes: bool,
    /// A learnable bias per subclass and scale added to the maps (initialised to 0). Parameters
    /// `logit_bias1..4`.
    pub logit_bias: bool,
    /// Spatial pooling of the maps into the image logits `cls_i` (upstream: mean).
    pub pool: Pooling,
}

impl HeadConfig {
    /// Whether this is upstream's head.
    pub fn is_upstream(&self) -> bool {
        *self == HeadConfig::default()
    }
}

impl ClassNetConfig {
    /// `mit_b*` with strides and k_list, 512-D prototypes.
    pub fn new(
        backbone: &str,
        strides: [usize; 4],
        k_list: Vec<usize>,
    ) -> Result<Self, ModelError> {
        let backbone = MitConfig::variant(backbone, strides)?;
        let total: usize = k_list.iter().sum();
        check_k_list(&k_list, total)?;
        Ok(Self {
            backbone,
            k_list,
            proto_dim: 512,
            head: HeadConfig::default(),
        })
    }

    /// Total number of subclasses ΣK.
    pub fn num_subclasses(&self) -> usize {
        self.k_list.iter().sum()
    }

    /// Number of parent classes N.
    pub fn num_classes(&self) -> usize {
        self.k_list.len()
    }
}

/// `AdaptiveLayer(512, n_ratio=0.5, C_i)`: Linear(512→256), ReLU, Linear(256→C_i).
#[derive(Module, Debug)]
pub struct AdaptiveLayer {
    /// 512→256.
    pub fc1: Linear,
    /// 256→C_i.
    pub fc2: Linear,
}

impl AdaptiveLayer {
    /// Projects prototypes `[ΣK,512]` -> `[ΣK,C_i]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(relu(self.fc1.forward(x)))
    }
}

/// The trainable part of ClassNet (what an optimiser updates).
#[derive(Module, Debug)]
pub struct ClassNet {
    /// MiT backbone (upstream `encoder.*`).
    pub encoder: MixTransformer,
    /// `l_fc1..4`.
    pub l_fc: Vec<AdaptiveLayer>,
    /// `logit_scale1..4`, each `[1]`.
    pub logit_scale: Vec<Param<Tensor<1>>>,
    /// `prototype_offset` `[ΣK, proto_dim]` ([`HeadConfig::prototype_offsets`]).
    pub prototype_offset: Option<Param<Tensor<2>>>,
    /// `logit_bias1..4`, each `[ΣK]` ([`HeadConfig::logit_bias`]); empty when off.
    pub logit_bias: Vec<Param<Tensor<1>>>,
    /// Head options (normalisation, pooling).
    #[module(skip)]
    pub head: HeadConfig,
    /// Fixed prototype bank `[ΣK, proto_dim]`, row-major; a constant input, never optimised.
    #[module(skip)]
    pub prototypes: Vec<f32>,
    /// Subclasses per parent.
    #[module(skip)]
    pub k_list: Vec<usize>,
    /// Prototype dimension.
    pub proto_dim: usize,
}

/// Outputs of [`ClassNet::forward`], all at subclass level (ΣK channels).
#[derive(Debug, Clone)]
pub struct ClassNetOutput {
    /// `cls1..cls4` `[B,ΣK]`: spatial mean of the similarity maps (with gradient).
    pub cls: Vec<Tensor<2>>,
    /// `cam1..cam4` `[B,ΣK,H_i,W_i]`: cam1..3 detached, cam4 keeps its gradient.
    pub cam: Vec<Tensor<4>>,
    /// The prototype bank `[ΣK,512]` as a constant tensor on the model's device (upstream's
    /// returned `l_fea`).
    pub prototypes: Tensor<2>,
    /// The four MiT stage feature maps `[B,C_i,H_i,W_i]` (before the L2 normalisation).
    pub features: Vec<Tensor<4>>,
}

/// Parameter name prefixes of a ClassNet checkpoint besides `encoder.`.
const HEAD_PREFIXES: [&str; 4] = ["l_fc", "logit_scale", "prototype_offset", "logit_bias"];

impl ClassNet {
    fn build(
        l: &mut Loader<'_>,
        cfg: &ClassNetConfig,
        prototypes: &HostTensor,
        enc_prefix: &str,
    ) -> Result<Self, ModelError> {
        let k_total = cfg.num_subclasses();
        check_k_list(&cfg.k_list, k_total)?;
        if prototypes.shape != [k_total, cfg.proto_dim]
            || prototypes.data.len() != k_total * cfg.proto_dim
        {
            return Err(ModelError::Shape(format!(
                "prototypes have shape {:?}, expected [{k_total}, {}] for k_list {:?}",
                prototypes.shape, cfg.proto_dim, cfg.k_list
            )));
        }
        let encoder = MixTransformer::load(l, &cfg.backbone, enc_prefix);
        let hidden = cfg.proto_dim / 2;
        let l_fc = (0..4)
            .map(|i| AdaptiveLayer {
                fc1: l.linear(&format!("l_fc{}.fc1", i + 1), cfg.proto_dim, hidden),
                fc2: l.linear(
                    &format!("l_fc{}.fc2", i + 1),
                    hidden,
                    cfg.backbone.embed_dims[i],
                ),
            })
            .collect();
        let logit_scale = (0..4)
            .map(|i| {
                l.param(
                    &format!("logit_scale{}", i + 1),
                    [1],
                    Init::Const(LOGIT_SCALE_INIT),
                )
            })
            .collect();
        cfg.head.pool.validate()?;
        let prototype_offset = cfg.head.prototype_offsets.then(|| {
            l.param(
                "prototype_offset",
                [k_total, cfg.proto_dim],
                Init::Const(0.0),
            )
        });
        let logit_bias = if cfg.head.logit_bias {
            (0..4)
                .map(|i| l.param(&format!("logit_bias{}", i + 1), [k_total], Init::Const(0.0)))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            encoder,
            l_fc,
            logit_scale,
            prototype_offset,
            logit_bias,
            head: cfg.head,
            prototypes: prototypes.data.clone(),
            k_list: cfg.k_list.clone(),
            proto_dim: cfg.proto_dim,
        })
    }

    /// Randomly initialised model (NVlabs / PBIP initialisers, seeded).
    pub fn init(
        cfg: &ClassNetConfig,
        prototypes: &HostTensor,
        seed: u64,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let mut l = Loader::random(seed, device);
        let m = Self::build(&mut l, cfg, prototypes, "encoder.")?;
        l.finish("random init", false, &[])?;
        Ok(m)
    }

    /// Loads an upstream ClassNet state dict (`encoder.*`, `l_fc{1..4}.fc{1,2}.*`,
    /// `logit_scale{1..4}`). A `best_cam.pth` read with `read_pth` has every key under
    /// `model.`; such maps are accepted as is (other top-level entries, e.g. `optimizer.*`,
    /// are ignored). Missing, unexpected and mis-shaped tensors are reported together.
    pub fn load_upstream(
        map: &TensorMap,
        cfg: &ClassNetConfig,
        prototypes: &HostTensor,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let stripped;
        let map = if map.keys().any(|k| k.starts_with("model.")) {
            stripped = map
                .iter()
                .filter_map(|(k, v)| k.strip_prefix("model.").map(|s| (s.to_string(), v.clone())))
                .collect::<TensorMap>();
            &stripped
        } else {
            map
        };
        let mut l = Loader::from_map(map, device);
        let m = Self::build(&mut l, cfg, prototypes, "encoder.")?;
        l.finish("ClassNet checkpoint", true, &[])?;
        Ok(m)
    }

    /// Builds a model whose backbone comes from an NVlabs ImageNet checkpoint
    /// (`mit_b*.pth`: bare MiT names, `head.*` dropped) or a Hugging Face `nvidia/mit-b*`
    /// checkpoint (names detected and mapped, see [`crate::names::hf_to_nvlabs`]); the head
    /// (`l_fc*`, `logit_scale*`) is initialised randomly with `seed`.
    pub fn with_pretrained_backbone(
        backbone: &TensorMap,
        cfg: &ClassNetConfig,
        prototypes: &HostTensor,
        seed: u64,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let nv = crate::names::to_nvlabs_backbone(backbone)?;
        let mut full: TensorMap = nv
            .into_iter()
            .map(|(k, v)| (format!("encoder.{k}"), v))
            .collect();
        // Head from a seeded random init.
        let head = Self::init(cfg, prototypes, seed, &Device::flex())?.to_tensor_map()?;
        for (k, v) in head {
            if HEAD_PREFIXES.iter().any(|p| k.starts_with(p)) {
                full.insert(k, v);
            }
        }
        Self::load_upstream(&full, cfg, prototypes, device)
    }

    /// Number of parent classes.
    pub fn num_classes(&self) -> usize {
        self.k_list.len()
    }

    /// Prototype bank as a host tensor `[ΣK, proto_dim]`.
    pub fn prototypes_host(&self) -> HostTensor {
        HostTensor {
            shape: vec![
                self.prototypes.len() / self.proto_dim.max(1),
                self.proto_dim,
            ],
            data: self.prototypes.clone(),
        }
    }

    fn device(&self) -> Device {
        self.logit_scale
            .first()
            .map(|p| p.val().device())
            .unwrap_or_else(Device::flex)
    }

    /// Checks that `images` is `[B ≥ 1, 3, H, W]` with H, W large enough for the four stages
    /// (every stage grid at least its spatial-reduction kernel: 29 px for the PBIP strides), so
    /// that a bad input is an error rather than a panic inside the backend.
    pub fn check_input(&self, images: &Tensor<4>) -> Result<(), ModelError> {
        let [b, c, h, w] = images.dims();
        if b == 0 || c != 3 || !self.side_ok(h) || !self.side_ok(w) {
            return Err(ModelError::Shape(format!(
                "ClassNet input must be [B>0, 3, H, W] with every stage grid at least its \
                 spatial-reduction kernel, got [{b}, {c}, {h}, {w}]"
            )));
        }
        Ok(())
    }

    /// Follows one side length through the patch-embedding convs (`(n + 2p − k)/s + 1`) and checks
    /// each stage grid against its spatial-reduction kernel.
    fn side_ok(&self, mut n: usize) -> bool {
        for st in &self.encoder.stages {
            let conv = &st.patch_embed.proj;
            let k = conv.kernel_size[0];
            let s = conv.stride[0].max(1);
            let p = match conv.padding {
                burn::nn::PaddingConfig2d::Explicit(t, _, _, _) => t,
                _ => 0,
            };
            if n + 2 * p < k {
                return false;
            }
            n = (n + 2 * p - k) / s + 1;
            let sr = st
                .blocks
                .first()
                .and_then(|b| b.attn.sr.as_ref())
                .map_or(1, |c| c.stride[0]);
            if n < sr.max(1) {
                return false;
            }
        }
        true
    }

    /// The backbone's compute precision from now on ([`crate::amp`]): `Bf16` runs the MiT
    /// products in bf16 with f32 parameters, LayerNorm, softmax, head and losses.
    pub fn set_precision(&mut self, precision: crate::Precision) {
        self.encoder.precision = precision;
    }

    /// The backbone's compute precision.
    pub fn precision(&self) -> crate::Precision {
        self.encoder.precision
    }

    /// [`ClassNet::forward_with`] after [`ClassNet::check_input`].
    pub fn try_forward(
        &self,
        images: Tensor<4>,
        stochastic_depth: bool,
    ) -> Result<ClassNetOutput, ModelError> {
        self.check_input(&images)?;
        Ok(self.forward_with(images, stochastic_depth))
    }

    /// Forward pass without stochastic depth (evaluation and parity).
    pub fn forward(&self, images: Tensor<4>) -> ClassNetOutput {
        self.forward_with(images, false)
    }

    /// Forward pass; `stochastic_depth` enables DropPath (training).
    pub fn forward_with(&self, images: Tensor<4>, stochastic_depth: bool) -> ClassNetOutput {
        let feats = self.encoder.forward(images, stochastic_depth);
        let device = self.device();
        let k_total = self.prototypes.len() / self.proto_dim.max(1);
        let protos: Tensor<2> = Tensor::from_data(
            TensorData::new(self.prototypes.clone(), [k_total, self.proto_dim]),
            &device,
        );
        let head_in = match &self.prototype_offset {
            Some(o) => protos.clone() + o.val(),
            None => protos.clone(),
        };
        let mut cls = Vec::with_capacity(4);
        let mut cam = Vec::with_capacity(4);
        let features = feats.clone();
        for (i, f) in feats.into_iter().enumerate() {
            let [b, c, h, w] = f.dims();
            let x = f.permute([0, 2, 3, 1]).reshape([b * h * w, c]);
            let x = l2_normalize(x, 1, 1e-12);
            let mut p = self.l_fc[i].forward(head_in.clone());
            if self.head.normalize_prototypes {
                p = l2_normalize(p, 1, 1e-12);
            }
            let s = self.logit_scale[i].val().reshape([1, 1]);
            let mut logits = x.matmul(p.transpose()) * s;
            if let Some(bias) = self.logit_bias.get(i) {
                logits = logits + bias.val().reshape([1, k_total]);
            }
            let out = logits.reshape([b, h, w, k_total]).permute([0, 3, 1, 2]);
            cls.push(pool_last_dim(
                out.clone().reshape([b, k_total, h * w]),
                self.head.pool,
            ));
            cam.push(if i < 3 { out.detach() } else { out });
        }
        ClassNetOutput {
            cls,
            cam,
            prototypes: protos,
            features,
        }
    }

    pub(crate) fn walk(&self, f: &mut Visit<'_>) {
        self.encoder.walk("encoder.", f);
        for (i, l) in self.l_fc.iter().enumerate() {
            walk_linear(&l.fc1, &format!("l_fc{}.fc1", i + 1), f);
            walk_linear(&l.fc2, &format!("l_fc{}.fc2", i + 1), f);
        }
        for (i, p) in self.logit_scale.iter().enumerate() {
            f(format!("logit_scale{}", i + 1), ParamRef::T1(p));
        }
        if let Some(o) = &self.prototype_offset {
            f("prototype_offset".to_string(), ParamRef::T2(o));
        }
        for (i, p) in self.logit_bias.iter().enumerate() {
            f(format!("logit_bias{}", i + 1), ParamRef::T1(p));
        }
    }

    /// All parameters with upstream names and torch layouts (the prototypes are not included;
    /// see [`ClassNet::save_safetensors`]).
    pub fn to_tensor_map(&self) -> Result<TensorMap, ModelError> {
        collect(|f| self.walk(f), |p| param_to_host(p).map(Some))
    }

    /// Gradients of every parameter that has one, keyed by upstream name (torch layout).
    pub fn gradients(&self, grads: &Gradients) -> Result<TensorMap, ModelError> {
        collect(|f| self.walk(f), |p| grad_to_host(p, grads))
    }

    /// Upstream names of all parameters, in walk order.
    pub fn parameter_names(&self) -> Vec<String> {
        let mut v = Vec::new();
        self.walk(&mut |n, _| v.push(n));
        v
    }

    /// Tensors + metadata of a checkpoint: parameters, `prototypes`, and metadata
    /// `format = pbip-classnet`, `k_list`, `proto_dim` merged with `extra`.
    pub fn checkpoint_parts(
        &self,
        extra: &BTreeMap<String, String>,
    ) -> Result<(TensorMap, BTreeMap<String, String>), ModelError> {
        let mut map = self.to_tensor_map()?;
        map.insert("prototypes".to_string(), self.prototypes_host());
        let mut meta = extra.clone();
        meta.insert("format".into(), "pbip-classnet".into());
        meta.insert(
            "k_list".into(),
            self.k_list
                .iter()
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
        meta.insert("proto_dim".into(), self.proto_dim.to_string());
        Ok((map, meta))
    }
}

impl ClassNet {
    /// Saves parameters + prototypes as safetensors (atomic write) with JSON-able metadata
    /// (`format`, `k_list`, `proto_dim`, `config` = [`ClassNetConfig`] JSON, plus `extra`).
    pub fn save_safetensors(
        &self,
        path: &std::path::Path,
        cfg: &ClassNetConfig,
        extra: &BTreeMap<String, String>,
    ) -> Result<(), ModelError> {
        let (map, mut meta) = self.checkpoint_parts(extra)?;
        let cfg_json = serde_json::to_string(cfg)
            .map_err(|e| ModelError::Config(format!("config JSON: {e}")))?;
        meta.insert("config".into(), cfg_json);
        pbip_weights::write_safetensors_atomic(path, &map, &meta)?;
        Ok(())
    }

    /// Reads an upstream ClassNet checkpoint file (`best_cam.pth` = `{"model": state_dict}`, or the
    /// same state dict as safetensors; format detected from the content) and loads it with
    /// [`ClassNet::load_upstream`].
    pub fn load_upstream_file(
        path: &std::path::Path,
        cfg: &ClassNetConfig,
        prototypes: &HostTensor,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let (map, _) = pbip_weights::read_tensors(path)?;
        Self::load_upstream(&map, cfg, prototypes, device)
    }

    /// Reads a pretrained backbone file (NVlabs `mit_b*.pth`, Hugging Face `nvidia/mit-b*`
    /// `model.safetensors` / `pytorch_model.bin`, or an upstream ClassNet checkpoint) and builds a
    /// model with it, see [`ClassNet::with_pretrained_backbone`].
    pub fn with_pretrained_backbone_file(
        path: &std::path::Path,
        cfg: &ClassNetConfig,
        prototypes: &HostTensor,
        seed: u64,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let (map, _) = pbip_weights::read_tensors(path)?;
        Self::with_pretrained_backbone(&map, cfg, prototypes, seed, device)
    }

    /// Loads a checkpoint written by [`ClassNet::save_safetensors`] (config and prototypes from
    /// the file). Returns the model, its config and the file's metadata.
    pub fn load_safetensors(
        path: &std::path::Path,
        device: &Device,
    ) -> Result<(Self, ClassNetConfig, BTreeMap<String, String>), ModelError> {
        let (mut map, meta) = pbip_weights::read_safetensors(path)?;
        let cfg_json = meta.get("config").ok_or_else(|| {
            ModelError::Config(format!(
                "{}: no `config` entry in the safetensors metadata",
                path.display()
            ))
        })?;
        let cfg: ClassNetConfig = serde_json::from_str(cfg_json).map_err(|e| {
            ModelError::Config(format!("{}: bad `config` metadata: {e}", path.display()))
        })?;
        let protos = map.remove("prototypes").ok_or_else(|| {
            ModelError::Config(format!("{}: no `prototypes` tensor", path.display()))
        })?;
        let model = Self::load_upstream(&map, &cfg, &protos, device)?;
        Ok((model, cfg, meta))
    }
}
