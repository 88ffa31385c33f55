//! AdamW on the parameter tensors of a burn module, with host-side (f32) state keyed by the
//! module path of each parameter, so that the whole optimiser state can be written to and read
//! from a safetensors file exactly (resume is bit-identical).
//!
//! Update (PyTorch `torch.optim.AdamW`, one parameter group, decay on every parameter):
//! `p ← p·(1 − lr·wd)`; `m ← β1·m + (1−β1)·g`; `v ← β2·v + (1−β2)·g²`;
//! `p ← p − (lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + ε)`, with `t` the number of
//! updates this parameter has received. A parameter without a gradient is left untouched (as
//! torch does for `grad is None`). Optional clipping scales every gradient by
//! `min(1, max_norm / (‖g‖₂ + 1e-6))` over all parameters together (`clip_grad_norm_`).

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use pbip_weights::{HostTensor, TensorMap};

/// A parameter's gradient on the host: (path, shape, values).
pub type HostGrad = (String, Vec<usize>, Vec<f32>);

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]

pub struct AdamWOptions {
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Max global gradient L2 norm (None = no clipping).
    pub grad_clip: Option<f64>,
}

/// Moments of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    /// Shape (burn layout).
    pub shape: Vec<usize>,
    /// First moment.
    pub m: Vec<f32>,
    /// Second moment.
    pub v: Vec<f32>,
    /// Number of updates.
    pub t: u64,
}

/// The optimiser: options + per-parameter moments (by module path).
#[derive(Debug, Clone)]
pub struct AdamW {
    /// Hyper-parameters.
    pub opts: AdamWOptions,
    /// Moments by parameter path.
    pub state: BTreeMap<String, Moments>,
}

/// What one [`AdamW::step`] saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    /// Global gradient L2 norm before clipping.
    pub grad_norm: f64,
    /// Parameters updated.
    pub updated: usize,
}

/// Host gradients by parameter path, gathered before the update.
struct GradCollector<'a> {
    grads: &'a GradientsParams,
    path: Vec<String>,
    out: Vec<(String, Vec<usize>, Vec<f32>)>,
    error: Option<String>,
}

impl ModuleVisitor for GradCollector<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(g) = self.grads.get::<D>(param.id) else {
            return;
        };
        let shape = g.dims().to_vec();
        match pbip_model::util::to_vec(g) {
            Ok(v) => self.out.push((self.path.join("."), shape, v)),
            Err(e) => self.error = Some(format!("{}: {e}", self.path.join("."))),
        }
    }
}

struct Updater<'a> {
    path: Vec<String>,
    grads: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    opt: &'a mut AdamW,
    lr: f64,
    scale: f32,
    updated: usize,
    error: Option<String>,
}

impl ModuleMapper for Updater<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.join(".");
        let Some((shape, grad)) = self.grads.remove(&path) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let device = tensor.device();
        let require_grad = tensor.is_require_grad();
        let dims = tensor.dims();
        let mut p = match pbip_model::util::to_vec(tensor.clone()) {
            Ok(v) => v,
            Err(e) => {
                self.error = Some(format!("{path}: {e}"));
                return Param::from_mapped_value(id, tensor, mapper);
            }
        };
        if p.len() != grad.len() || shape.as_slice() != dims.as_slice() {
            self.error = Some(format!(
                "{path}: gradient shape {shape:?} vs parameter {dims:?}"
            ));
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let o = self.opt.opts;
        let st = self
            .opt
            .state
            .entry(path.clone())
            .or_insert_with(|| Moments {
                shape: shape.clone(),
                m: vec![0.0; p.len()],
                v: vec![0.0; p.len()],
                t: 0,
            });
        if st.m.len() != p.len() {
            self.error = Some(format!(
                "{path}: optimiser state has {} values, parameter {}",
                st.m.len(),
                p.len()
            ));
            return Param::from_mapped_value(id, tensor, mapper);
        }
        st.t += 1;
        let (b1, b2) = (o.beta1 as f32, o.beta2 as f32);
        let lr = self.lr as f32;
        let decay = 1.0 - lr * o.weight_decay as f32;
        let bc1 = 1.0 - (o.beta1).powi(st.t as i32) as f32;
        let bc2_sqrt = (1.0 - (o.beta2).powi(st.t as i32)).sqrt() as f32;
        let step_size = lr / bc1;
        let eps = o.eps as f32;
        for i in 0..p.len() {
            let g = grad[i] * self.scale;
            p[i] *= decay;
            st.m[i] = b1 * st.m[i] + (1.0 - b1) * g;
            st.v[i] = b2 * st.v[i] + (1.0 - b2) * g * g;
            let denom = st.v[i].sqrt() / bc2_sqrt + eps;
            p[i] -= step_size * st.m[i] / denom;
        }
        let mut t: Tensor<D> = Tensor::from_data(TensorData::new(p, dims), &device);
        if require_grad {
            t = t.require_grad();
        }
        self.updated += 1;
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Re-creates every float parameter from its values as a fresh contiguous tensor.
struct Materialize {
    error: Option<String>,
}

impl ModuleMapper for Materialize {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let device = tensor.device();
        let require_grad = tensor.is_require_grad();
        let dims = tensor.dims();
        match pbip_model::util::to_vec(tensor.clone()) {
            Ok(v) => {
                let mut t: Tensor<D> = Tensor::from_data(TensorData::new(v, dims), &device);
                if require_grad {
                    t = t.require_grad();
                }
                Param::from_mapped_value(id, t, mapper)
            }
            Err(e) => {
                self.error = Some(e.to_string());
                Param::from_mapped_value(id, tensor, mapper)
            }
        }
    }
}

/// Gives every parameter of `module` a fresh contiguous buffer, as after an [`AdamW::step`].
/// A freshly built or loaded model may hold strided views (e.g. transposed Linear weights),
/// which the backend multiplies through another kernel path with other rounding; materialising
/// makes the first step after a resume compute exactly like a step of an uninterrupted run.
pub fn materialize<M: Module>(module: M) -> Result<M, String> {
    let mut m = Materialize { error: None };
    let module = module.map(&mut m);
    match m.error {
        Some(e) => Err(e),
        None => Ok(module),
    }
}

impl AdamW {
    /// A fresh optimiser.
    pub fn new(opts: AdamWOptions) -> Self {
        AdamW {
            opts,
            state: BTreeMap::new(),
        }
    }

    /// Host gradients of `module`'s parameters by path; `Err` when the backend fails.
    pub fn collect_grads<M: Module>(
        module: &M,
        grads: &GradientsParams,
    ) -> Result<Vec<HostGrad>, String> {
        let mut c = GradCollector {
            grads,
            path: Vec::new(),
            out: Vec::new(),
            error: None,
        };
        module.visit(&mut c);
        match c.error {
            Some(e) => Err(e),
            None => Ok(c.out),
        }
    }

    /// Global L2 norm of host gradients (f64 accumulation) and whether all are finite.
    pub fn grad_norm(grads: &[(String, Vec<usize>, Vec<f32>)]) -> (f64, bool) {
        let mut s = 0f64;
        let mut finite = true;
        for (_, _, g) in grads {
            for &x in g {
                if !x.is_finite() {
                    finite = false;
                }
                s += f64::from(x) * f64::from(x);
            }
        }
        (s.sqrt(), finite)
    }

    /// One update of `module` at learning rate `lr` with host gradients from
    /// [`AdamW::collect_grads`].
    pub fn step<M: Module>(
        &mut self,
        module: M,
        grads: Vec<(String, Vec<usize>, Vec<f32>)>,
        lr: f64,
    ) -> Result<(M, StepInfo), String> {
        let (grad_norm, _) = Self::grad_norm(&grads);
        let scale = match self.opts.grad_clip {
            Some(max) if grad_norm > max => (max / (grad_norm + 1e-6)) as f32,
            _ => 1.0,
        };
        let grads = grads.into_iter().map(|(p, s, g)| (p, (s, g))).collect();
        let mut u = Updater {
            path: Vec::new(),
            grads,
            opt: self,
            lr,
            scale,
            updated: 0,
            error: None,
        };
        let module = module.map(&mut u);
        if let Some(e) = u.error {
            return Err(e);
        }
        if !u.grads.is_empty() {
            return Err(format!(
                "gradients without a parameter: {:?}",
                u.grads.keys().collect::<Vec<_>>()
            ));
        }
        let updated = u.updated;
        Ok((module, StepInfo { grad_norm, updated }))
    }

    /// The state as tensors `adam_m.<path>`, `adam_v.<path>` plus the update counts (by path).
    pub fn to_tensors(&self, map: &mut TensorMap) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for (path, s) in &self.state {
            map.insert(
                format!("adam_m.{path}"),
                HostTensor {
                    shape: s.shape.clone(),
                    data: s.m.clone(),
                },
            );
            map.insert(
                format!("adam_v.{path}"),
                HostTensor {
                    shape: s.shape.clone(),
                    data: s.v.clone(),
                },
            );
            counts.insert(path.clone(), s.t);
        }
        counts
    }

    /// Restores the state written by [`AdamW::to_tensors`].
    pub fn load_tensors(
        &mut self,
        map: &TensorMap,
        counts: &BTreeMap<String, u64>,
    ) -> Result<(), String> {
        self.state.clear();
        for (path, &t) in counts {
            let m = map
                .get(&format!("adam_m.{path}"))
                .ok_or_else(|| format!("adam_m.{path} missing"))?;
            let v = map
                .get(&format!("adam_v.{path}"))
                .ok_or_else(|| format!("adam_v.{path} missing"))?;
            if m.data.len() != v.data.len() {
                return Err(format!("adam moments of {path} differ in size"));
            }
            self.state.insert(
                path.clone(),
                Moments {
                    shape: m.shape.clone(),
                    m: m.data.clone(),
                    v: v.data.clone(),
                    t,
                },
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Device;

    /// Two steps on f(w) = Σ w·x compared with the closed-form AdamW update.
    #[test]
    fn adamw_matches_closed_form() {
        let device = Device::flex().autodiff();
        let lin: Linear = LinearConfig::new(2, 1).with_bias(false).init(&device);
        let w0 = lin.weight.val().try_into_vec_as::<f32>().unwrap();
        let mut opt = AdamW::new(AdamWOptions {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: None,
        });
        let x: Tensor<2> = Tensor::from_data(TensorData::new(vec![1.0f32, -2.0], [1, 2]), &device);
        let mut model = lin;
        for _ in 0..2 {
            let loss = model.forward(x.clone()).sum();
            let g = GradientsParams::from_grads(loss.backward(), &model);
            let hg = AdamW::collect_grads(&model, &g).unwrap();
            model = opt.step(model, hg, 0.01).unwrap().0;
        }
        let w = model.weight.val().try_into_vec_as::<f32>().unwrap();
        // Gradient is constant (x); with a constant gradient m̂ = g and v̂ = g² at every t, so each
        // step moves by lr·g/(|g| + ε) after the decay.
        for (i, g) in [1.0f64, -2.0].iter().enumerate() {
            let mut p = f64::from(w0[i]);
            for _ in 0..2 {
                p *= 1.0 - 0.01 * 0.1;
                p -= 0.01 * g / (g.abs() + 1e-8);
            }
            assert!((f64::from(w[i]) - p).abs() < 1e-6, "{i}: {} vs {p}", w[i]);
        }
        assert_eq!(opt.state.values().next().map(|s| s.t), Some(2));
    }
}
