//! Fused LayerNorm and softmax for training on the CPU backend.
//!
//! Under autodiff, burn 0.22 records LayerNorm as ~9 element-wise/reduction ops (mean, centre,
//! square, mean, add, sqrt, divide, scale, shift) and softmax as 5 (max, subtract, exp, sum,
//! divide), each a full single-threaded pass over the activations forward and again, several
//! times, backward. On `Autodiff<Flex>` (the default CPU training device) the two functions
//! here record one autodiff op each instead: the forward is one parallel pass, the backward one
//! parallel pass with the closed-form gradients
//!
//! * LayerNorm: `x̂ = (x − μ)·r`, `r = 1/√(σ² + ε)`, `g = dy·γ`:
//!   `dx = r·(g − mean(g) − x̂·mean(g·x̂))`, `dγ = Σ dy·x̂`, `dβ = Σ dy`;
//! * softmax: `dx = y·(dy − Σ dy·y)`.
//!
//! Every other device (flex without autodiff, wgpu, cuda, gradient checkpointing, other dtypes)
//! takes burn's own `LayerNorm::forward` / `softmax`, so the model has one code path and these
//! are an implementation detail of two ops; `tests` below compares both against burn's ops,
//! values and gradients.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::ops::ActivationOps;
use burn::backend::{Autodiff, Bytes, DType, Flex, TensorMetadata};
use burn::nn::LayerNorm;
use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use rayon::prelude::*;

type Ad = Autodiff<Flex, NoCheckpointing>;

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// `LayerNorm` over the last dimension with the module's parameters and `eps` (the value the
/// module was built with: burn keeps it private).
pub fn layer_norm<const D: usize>(ln: &LayerNorm, eps: f64, x: Tensor<D>) -> Tensor<D> {
    if let Some(beta) = &ln.beta
        && let Some(y) = layer_norm_ad(x.clone(), ln.gamma.val(), beta.val(), eps)
    {
        return y;
    }
    ln.forward(x)
}

/// Softmax over the last dimension.
pub fn softmax_last<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if let Some(y) = softmax_ad(x.clone()) {
        return y;
    }
    softmax(x, D - 1)
}

/// Contiguous f32 values of a flex tensor (a copy only for strided views).
fn contiguous_f32(t: &FlexTensor) -> FlexTensor {
    if t.layout().contiguous_offsets().is_some() {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

fn values(t: &FlexTensor) -> &[f32] {
    let (start, end) = t
        .layout()
        .contiguous_offsets()
        .unwrap_or((0, t.layout().num_elements()));
    &t.storage::<f32>()[start..end]
}

fn new_f32(data: Vec<f32>, shape: burn::backend::Shape) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(data),
        Layout::contiguous(shape),
        DType::F32,
    )
}

// ---------------------------------------------------------------------------------------------
// LayerNorm
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct LayerNormOp;

#[derive(Clone)]
struct LayerNormState {
    /// Contiguous input.
    x: FlexTensor,
    gamma: FlexTensor,
    /// Per row: mean, 1/sqrt(var + eps).
    stats: std::sync::Arc<Vec<f32>>,
}

impl std::fmt::Debug for LayerNormState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerNormState")
            .field("shape", &self.x.layout().shape())
            .finish()
    }
}

#[inline]
fn sum_lanes(v: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = v.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            lanes[l] += v[c * 8 + l];
        }
    }
    let mut s: f32 = v[chunks * 8..].iter().sum();
    for l in lanes {
        s += l;
    }
    s
}

fn ln_forward(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let rows = x.len() / d;
    let mut y = vec![0.0f32; x.len()];
    let mut stats = vec![0.0f32; 2 * rows];
    let inv_d = 1.0 / d as f32;
    y.par_chunks_mut(ROWS_PER_TASK * d)
        .zip(stats.par_chunks_mut(ROWS_PER_TASK * 2))
        .enumerate()
        .for_each(|(t, (yc, sc))| {
            let mut centred = vec![0.0f32; d];
            for (r, (yr, st)) in yc.chunks_mut(d).zip(sc.chunks_mut(2)).enumerate() {
                let row = t * ROWS_PER_TASK + r;
                let xr = &x[row * d..(row + 1) * d];
                let mean = sum_lanes(xr) * inv_d;
                for (c, &v) in centred.iter_mut().zip(xr) {
                    *c = v - mean;
                }
                let mut lanes = [0.0f32; 8];
                let chunks = d / 8;
                for ch in 0..chunks {
                    for l in 0..8 {
                        let v = centred[ch * 8 + l];
                        lanes[l] += v * v;
                    }
                }
                let mut var: f32 = centred[chunks * 8..].iter().map(|v| v * v).sum();
                for l in lanes {
                    var += l;
                }
                let rstd = 1.0 / (var * inv_d + eps).sqrt();
                for (((o, &c), &g), &b) in yr.iter_mut().zip(&centred).zip(gamma).zip(beta) {
                    *o = c * rstd * g + b;
                }
                st[0] = mean;
                st[1] = rstd;
            }
        });
    (y, stats)
}

/// Returns (dx, dgamma, dbeta).
fn ln_backward(
    x: &[f32],
    gamma: &[f32],
    stats: &[f32],
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let mut dx = vec![0.0f32; x.len()];
    let inv_d = 1.0 / d as f32;
    // Per-task partial sums collected in task order and added sequentially: the result does not
    // depend on how rayon splits the work (training resumes bit-identically).
    let partials: Vec<(Vec<f64>, Vec<f64>)> = dx
        .par_chunks_mut(ROWS_PER_TASK * d)
        .enumerate()
        .map(|(t, dxc)| {
            let mut dg = vec![0.0f64; d];
            let mut db = vec![0.0f64; d];
            let mut xhat = vec![0.0f32; d];
            let mut g = vec![0.0f32; d];
            let mut dgf = vec![0.0f32; d];
            let mut dbf = vec![0.0f32; d];
            for (r, dxr) in dxc.chunks_mut(d).enumerate() {
                let row = t * ROWS_PER_TASK + r;
                let (mean, rstd) = (stats[2 * row], stats[2 * row + 1]);
                let xr = &x[row * d..(row + 1) * d];
                let dyr = &dy[row * d..(row + 1) * d];
                for i in 0..d {
                    xhat[i] = (xr[i] - mean) * rstd;
                    g[i] = dyr[i] * gamma[i];
                    dgf[i] += dyr[i] * xhat[i];
                    dbf[i] += dyr[i];
                }
                let a = sum_lanes(&g) * inv_d;
                let mut lanes = [0.0f32; 8];
                let chunks = d / 8;
                for ch in 0..chunks {
                    for l in 0..8 {
                        lanes[l] += g[ch * 8 + l] * xhat[ch * 8 + l];
                    }
                }
                let mut b: f32 = (chunks * 8..d).map(|i| g[i] * xhat[i]).sum();
                for l in lanes {
                    b += l;
                }
                let b = b * inv_d;
                for i in 0..d {
                    dxr[i] = rstd * (g[i] - a - xhat[i] * b);
                }
            }
            for i in 0..d {
                dg[i] += dgf[i] as f64;
                db[i] += dbf[i] as f64;
            }
            (dg, db)
        })
        .collect();
    let mut dg = vec![0.0f64; d];
    let mut db = vec![0.0f64; d];
    for (pg, pb) in &partials {
        for i in 0..d {
            dg[i] += pg[i];
            db[i] += pb[i];
        }
    }
    (
        dx,
        dg.into_iter().map(|v| v as f32).collect(),
        db.into_iter().map(|v| v as f32).collect(),
    )
}

impl Backward<Flex, 3> for LayerNormOp {
    type State = LayerNormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_g, node_b] = ops.parents;
        let dy = contiguous_f32(&grads.consume::<Flex>(&ops.node));
        let st = ops.state;
        let shape = st.x.layout().shape().clone();
        let (dx, dg, db) = ln_backward(values(&st.x), values(&st.gamma), &st.stats, values(&dy));
        let d = dg.len();
        if let Some(n) = node_x {
            grads.register::<Flex>(n.id, new_f32(dx, shape));
        }
        if let Some(n) = node_g {
            grads.register::<Flex>(n.id, new_f32(dg, burn::backend::Shape::new([d])));
        }
        if let Some(n) = node_b {
            grads.register::<Flex>(n.id, new_f32(db, burn::backend::Shape::new([d])));
        }
    }
}

fn layer_norm_ad<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    eps: f64,
) -> Option<Tensor<D>> {
    let xa = x.try_into_primitive::<Ad>().ok()?;
    let ga = gamma.try_into_primitive::<Ad>().ok()?;
    let ba = beta.try_into_primitive::<Ad>().ok()?;
    let shape = xa.shape();
    let d = *shape.iter().last()?;
    if [xa.dtype(), ga.dtype(), ba.dtype()] != [DType::F32; 3]
        || ga.shape().num_elements() != d
        || ba.shape().num_elements() != d
        || d == 0
    {
        return None;
    }
    let xc = contiguous_f32(xa.primitive());
    let gc = contiguous_f32(ga.primitive());
    let bc = contiguous_f32(ba.primitive());
    let (y, stats) = ln_forward(values(&xc), values(&gc), values(&bc), eps as f32);
    let y = new_f32(y, xc.layout().shape().clone());
    let out = match LayerNormOp
        .prepare::<NoCheckpointing>([xa.node(), ga.node(), ba.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            LayerNormState {
                x: xc,
                gamma: gc,
                stats: std::sync::Arc::new(stats),
            },
            y,
        ),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Some(Tensor::from_primitive::<Ad>(out))
}

// ---------------------------------------------------------------------------------------------
// Softmax
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct SoftmaxOp;

#[derive(Clone)]
struct SoftmaxState {
    /// Contiguous output.
    y: FlexTensor,
}

impl std::fmt::Debug for SoftmaxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftmaxState")
            .field("shape", &self.y.layout().shape())
            .finish()
    }
}

fn softmax_backward(y: &[f32], dy: &[f32], d: usize) -> Vec<f32> {
    let mut dx = vec![0.0f32; y.len()];
    dx.par_chunks_mut(ROWS_PER_TASK * d)
        .enumerate()
        .for_each(|(t, dxc)| {
            let mut prod = vec![0.0f32; d];
            for (r, dxr) in dxc.chunks_mut(d).enumerate() {
                let row = t * ROWS_PER_TASK + r;
                let yr = &y[row * d..(row + 1) * d];
                let gr = &dy[row * d..(row + 1) * d];
                for i in 0..d {
                    prod[i] = yr[i] * gr[i];
                }
                let s = sum_lanes(&prod);
                for i in 0..d {
                    dxr[i] = prod[i] - yr[i] * s;
                }
            }
        });
    dx
}

impl Backward<Flex, 1> for SoftmaxOp {
    type State = SoftmaxState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = contiguous_f32(&grads.consume::<Flex>(&ops.node));
        if let Some(n) = node {
            let shape = ops.state.y.layout().shape().clone();
            let d = shape.iter().last().copied().unwrap_or(1);
            let dx = softmax_backward(values(&ops.state.y), values(&dy), d.max(1));
            grads.register::<Flex>(n.id, new_f32(dx, shape));
        }
    }
}

fn softmax_ad<const D: usize>(x: Tensor<D>) -> Option<Tensor<D>> {
    let xa = x.try_into_primitive::<Ad>().ok()?;
    if xa.dtype() != DType::F32 || xa.shape().num_elements() == 0 {
        return None;
    }
    let y = contiguous_f32(&<Flex as ActivationOps<Flex>>::softmax(
        xa.primitive().clone(),
        D - 1,
    ));
    let out = match SoftmaxOp
        .prepare::<NoCheckpointing>([xa.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(SoftmaxState { y: y.clone() }, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Some(Tensor::from_primitive::<Ad>(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::LayerNormConfig;
    use burn::tensor::{Device, Distribution, Tensor};

    fn max_rel<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        let a = crate::util::to_vec(a).unwrap();
        let b = crate::util::to_vec(b).unwrap();
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
        a.iter()
            .zip(&b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    #[test]
    fn fused_layer_norm_matches_burn_values_and_gradients() {
        let device = Device::flex().autodiff();
        // (shape of the leaf, normalised through a transposed view of it)
        for (shape, strided) in [
            ([2usize, 37, 64], false),
            ([3, 5, 13], false),
            ([2, 16, 20], true),
        ] {
            let d = if strided { shape[1] } else { shape[2] };
            let mut ln = LayerNormConfig::new(d).with_epsilon(1e-6).init(&device);
            ln.gamma = Param::from_tensor(
                Tensor::random([d], Distribution::Normal(1.0, 0.3), &device).require_grad(),
            );
            ln.beta = Some(Param::from_tensor(
                Tensor::random([d], Distribution::Normal(0.0, 0.3), &device).require_grad(),
            ));
            let x0: Tensor<3> = Tensor::random(shape, Distribution::Normal(0.5, 2.0), &device);
            let out_shape = if strided {
                [shape[0], shape[2], shape[1]]
            } else {
                shape
            };
            let w: Tensor<3> = Tensor::random(out_shape, Distribution::Normal(0.0, 1.0), &device);
            let mut results = Vec::new();
            for fused in [true, false] {
                let x = x0.clone().detach().require_grad();
                let input = if strided {
                    x.clone().swap_dims(1, 2)
                } else {
                    x.clone()
                };
                let y = if fused {
                    layer_norm(&ln, 1e-6, input)
                } else {
                    ln.forward(input)
                };
                let grads = (y.clone() * w.clone()).sum().backward();
                let gx = x.grad(&grads).unwrap();
                let gg = ln.gamma.val().grad(&grads).unwrap();
                let gb = ln.beta.as_ref().unwrap().val().grad(&grads).unwrap();
                results.push((y, gx, gg, gb));
            }
            let (f, r) = (&results[0], &results[1]);
            assert!(max_rel(f.0.clone(), r.0.clone()) < 1e-5, "y {shape:?}");
            assert!(max_rel(f.1.clone(), r.1.clone()) < 1e-4, "dx {shape:?}");
            assert!(max_rel(f.2.clone(), r.2.clone()) < 1e-4, "dgamma {shape:?}");
            assert!(max_rel(f.3.clone(), r.3.clone()) < 1e-4, "dbeta {shape:?}");
        }
    }

    #[test]
    fn fused_softmax_matches_burn_values_and_gradients() {
        let device = Device::flex().autodiff();
        for shape in [[2usize, 49, 49], [3, 7, 196], [1, 4, 5]] {
            let x0: Tensor<3> = Tensor::random(shape, Distribution::Normal(0.0, 3.0), &device);
            let w: Tensor<3> = Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let mut results = Vec::new();
            for fused in [true, false] {
                let x = x0.clone().detach().require_grad();
                let y = if fused {
                    softmax_last(x.clone())
                } else {
                    softmax(x.clone(), 2)
                };
                let grads = (y.clone() * w.clone()).sum().backward();
                results.push((y, x.grad(&grads).unwrap()));
            }
            assert!(max_rel(results[0].0.clone(), results[1].0.clone()) < 1e-5);
            assert!(max_rel(results[0].1.clone(), results[1].1.clone()) < 1e-4);
        }
    }

    #[test]
    fn other_devices_take_burns_ops() {
        // plain flex (no autodiff): the fused path declines, burn's LayerNorm runs.
        let device = Device::flex();
        let ln = LayerNormConfig::new(8).init(&device);
        let x: Tensor<3> = Tensor::random([2, 3, 8], Distribution::Default, &device);
        let beta = ln.beta.as_ref().unwrap().val();
        assert!(layer_norm_ad(x.clone(), ln.gamma.val(), beta, 1e-5).is_none());
        assert!(softmax_ad(x.clone()).is_none());
        let a = layer_norm(&ln, 1e-5, x.clone());
        let b = ln.forward(x);
        assert_eq!(max_rel(a, b), 0.0);
    }
}
