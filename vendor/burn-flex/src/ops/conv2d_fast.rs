//! pbip change (see `PBIP-CHANGES.md`): f32 2D convolution kernels for the shapes of a SegFormer
//! (MiT) encoder.
//!
//! * Stride-1 depthwise convolution (forward, input gradient, weight gradient) on zero-padded
//!   planes: with the plane copied into a padded buffer of row length `wp = w + 2·pw`, every
//!   kernel tap becomes one long contiguous axpy (forward, input gradient) or dot product
//!   (weight gradient) over the flattened plane, instead of one short run per output row. The
//!   `wp - ow` extra columns per row are junk in the accumulator (dropped) and zero in the
//!   gradient buffer (so they add nothing to the weight gradient). The input gradient is the
//!   forward correlation of the output gradient with the flipped kernel and padding
//!   `d·(k-1) - p`.
//! * Weight gradient of ungrouped convolutions (patch embeddings, spatial-reduction convs):
//!   one im2col matrix and one GEMM per chunk of batches (`dW = dY · colsᵀ`) instead of burn's
//!   convolution of the transposed input with the transposed output gradient, which runs
//!   many GEMMs with as few columns as the kernel has taps.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::DType;
use burn_backend::ops::ConvOptions;
use burn_backend::ops::conv::calculate_conv_output_size;
use burn_std::{Bytes, Shape};

use crate::{FlexTensor, Layout};

// ---------------------------------------------------------------------------------------------
// Shape checks
// ---------------------------------------------------------------------------------------------

fn is_f32(ts: &[&FlexTensor]) -> bool {
    ts.iter().all(|t| t.dtype() == DType::F32)
}

/// Canonical depthwise conv2d (one input and one output channel per group), symmetric padding,
/// stride 1, f32, 4-D.
pub(crate) fn is_depthwise_stride1(
    x: &FlexTensor,
    weight: &FlexTensor,
    options: &ConvOptions<2>,
) -> bool {
    let xs = x.layout().shape();
    let ws = weight.layout().shape();
    if !is_f32(&[x, weight]) || xs.num_dims() != 4 || ws.num_dims() != 4 {
        return false;
    }
    let c = xs[1];
    ws[1] == 1
        && ws[0] == c
        && options.groups == c
        && !options.is_asymmetric()
        && options.stride == [1, 1]
        && ws[2] > 0
        && ws[3] > 0
        && xs[2] + 2 * options.padding_begin()[0] >= options.dilation[0] * (ws[2] - 1) + 1
        && xs[3] + 2 * options.padding_begin()[1] >= options.dilation[1] * (ws[3] - 1) + 1
}

/// The input gradient of a stride-1 depthwise conv is a forward correlation with padding
/// `d·(k-1) - p`, which must not be negative.
pub(crate) fn depthwise_stride1_x_grad_ok(weight: &FlexTensor, options: &ConvOptions<2>) -> bool {
    let ws = weight.layout().shape();
    let p = options.padding_begin();
    options.dilation[0] * (ws[2] - 1) >= p[0] && options.dilation[1] * (ws[3] - 1) >= p[1]
}

// ---------------------------------------------------------------------------------------------
// Plane kernels (stride 1)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Plane {
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    ph: usize,
    pw: usize,
    dh: usize,
    dw: usize,
}

impl Plane {
    fn hp(&self) -> usize {
        self.h + 2 * self.ph
    }
    fn wp(&self) -> usize {
        self.w + 2 * self.pw
    }
    fn oh(&self) -> usize {
        self.hp() - self.dh * (self.kh - 1)
    }
    fn ow(&self) -> usize {
        self.wp() - self.dw * (self.kw - 1)
    }
    /// Length of the flattened accumulator range holding every valid output.
    fn span(&self) -> usize {
        (self.oh() - 1) * self.wp() + self.ow()
    }
}

/// Copies an `h × w` plane into the zero-padded `hp × wp` buffer.
#[inline(always)]
fn pad_plane(p: &Plane, src: &[f32], xp: &mut Vec<f32>) {
    let (hp, wp) = (p.hp(), p.wp());
    xp.clear();
    xp.resize(hp * wp, 0.0);
    for r in 0..p.h {
        let dst = (r + p.ph) * wp + p.pw;
        xp[dst..dst + p.w].copy_from_slice(&src[r * p.w..(r + 1) * p.w]);
    }
}

/// `out[oh, ow] = bias + Σ_taps w[i, j] · x[oh + i·dh − ph, ow + j·dw − pw]` for one plane.
#[inline(always)]
fn corr_plane(
    p: &Plane,
    x: &[f32],
    w: &[f32],
    bias: f32,
    out: &mut [f32],
    xp: &mut Vec<f32>,
    acc: &mut Vec<f32>,
) {
    pad_plane(p, x, xp);
    let (wp, oh, ow, span) = (p.wp(), p.oh(), p.ow(), p.span());
    acc.clear();
    acc.resize(span, bias);
    for i in 0..p.kh {
        for j in 0..p.kw {
            let wv = w[i * p.kw + j];
            let off = i * p.dh * wp + j * p.dw;
            let src = &xp[off..off + span];
            for (a, &s) in acc.iter_mut().zip(src) {
                *a += wv * s;
            }
        }
    }
    for r in 0..oh {
        out[r * ow..(r + 1) * ow].copy_from_slice(&acc[r * wp..r * wp + ow]);
    }
}

/// `dw[i, j] += Σ_{oh, ow} dy[oh, ow] · x[oh + i·dh − ph, ow + j·dw − pw]` for one plane.
#[inline(always)]
fn wgrad_plane(
    p: &Plane,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f64],
    xp: &mut Vec<f32>,
    gp: &mut Vec<f32>,
) {
    pad_plane(p, x, xp);
    let (wp, oh, ow, span) = (p.wp(), p.oh(), p.ow(), p.span());
    gp.clear();
    gp.resize(span, 0.0);
    for r in 0..oh {
        gp[r * wp..r * wp + ow].copy_from_slice(&dy[r * ow..(r + 1) * ow]);
    }
    const L: usize = 16;
    let chunks = span / L;
    for i in 0..p.kh {
        for j in 0..p.kw {
            let off = i * p.dh * wp + j * p.dw;
            let xs = &xp[off..off + span];
            let mut lanes = [0.0f32; L];
            for c in 0..chunks {
                let g = &gp[c * L..c * L + L];
                let xv = &xs[c * L..c * L + L];
                for l in 0..L {
                    lanes[l] += g[l] * xv[l];
                }
            }
            let mut s = 0.0f64;
            for t in chunks * L..span {
                s += (gp[t] * xs[t]) as f64;
            }
            for v in lanes {
                s += v as f64;
            }
            dw[i * p.kw + j] += s;
        }
    }
}

#[cfg(all(feature = "std", target_arch = "x86_64"))]
mod x86 {
    use super::Plane;
    use alloc::vec::Vec;

    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn corr_avx512(
        p: &Plane,
        x: &[f32],
        w: &[f32],
        b: f32,
        out: &mut [f32],
        xp: &mut Vec<f32>,
        acc: &mut Vec<f32>,
    ) {
        super::corr_plane(p, x, w, b, out, xp, acc)
    }
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn corr_avx2(
        p: &Plane,
        x: &[f32],
        w: &[f32],
        b: f32,
        out: &mut [f32],
        xp: &mut Vec<f32>,
        acc: &mut Vec<f32>,
    ) {
        super::corr_plane(p, x, w, b, out, xp, acc)
    }
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn wgrad_avx512(
        p: &Plane,
        x: &[f32],
        dy: &[f32],
        dw: &mut [f64],
        xp: &mut Vec<f32>,
        gp: &mut Vec<f32>,
    ) {
        super::wgrad_plane(p, x, dy, dw, xp, gp)
    }
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn wgrad_avx2(
        p: &Plane,
        x: &[f32],
        dy: &[f32],
        dw: &mut [f64],
        xp: &mut Vec<f32>,
        gp: &mut Vec<f32>,
    ) {
        super::wgrad_plane(p, x, dy, dw, xp, gp)
    }
}

#[derive(Clone, Copy)]
enum Isa {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    Avx512,
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    Avx2,
    Generic,
}

fn isa() -> Isa {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
            return Isa::Avx512;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Generic
}

#[allow(clippy::too_many_arguments)]
fn corr(
    isa: Isa,
    p: &Plane,
    x: &[f32],
    w: &[f32],
    b: f32,
    out: &mut [f32],
    xp: &mut Vec<f32>,
    acc: &mut Vec<f32>,
) {
    match isa {
        // SAFETY: features detected at run time (`isa`).
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        Isa::Avx512 => unsafe { x86::corr_avx512(p, x, w, b, out, xp, acc) },
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        Isa::Avx2 => unsafe { x86::corr_avx2(p, x, w, b, out, xp, acc) },
        Isa::Generic => corr_plane(p, x, w, b, out, xp, acc),
    }
}

fn wgrad(
    isa: Isa,
    p: &Plane,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f64],
    xp: &mut Vec<f32>,
    gp: &mut Vec<f32>,
) {
    match isa {
        // SAFETY: features detected at run time (`isa`).
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        Isa::Avx512 => unsafe { x86::wgrad_avx512(p, x, dy, dw, xp, gp) },
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        Isa::Avx2 => unsafe { x86::wgrad_avx2(p, x, dy, dw, xp, gp) },
        Isa::Generic => wgrad_plane(p, x, dy, dw, xp, gp),
    }
}

/// Runs `corr` on every `(batch, channel)` plane of `x` (`[B, C, H, W]`, contiguous), writing
/// `[B, C, OH, OW]`. `weights` is `[C, kh·kw]`.
fn corr_all(
    p: Plane,
    x: &[f32],
    batch: usize,
    channels: usize,
    weights: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let in_plane = p.h * p.w;
    let out_plane = p.oh() * p.ow();
    let k = p.kh * p.kw;
    let mut out = vec![0.0f32; batch * channels * out_plane];
    let isa = isa();
    let work = |bc: usize, o: &mut [f32], xp: &mut Vec<f32>, acc: &mut Vec<f32>| {
        let c = bc % channels;
        let b = bias.map_or(0.0, |b| b[c]);
        corr(
            isa,
            &p,
            &x[bc * in_plane..(bc + 1) * in_plane],
            &weights[c * k..(c + 1) * k],
            b,
            o,
            xp,
            acc,
        );
    };
    if out_plane == 0 {
        return out;
    }
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        out.par_chunks_mut(out_plane).enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |(xp, acc), (bc, o)| work(bc, o, xp, acc),
        );
    }
    #[cfg(not(feature = "rayon"))]
    {
        let (mut xp, mut acc) = (Vec::new(), Vec::new());
        for (bc, o) in out.chunks_mut(out_plane).enumerate() {
            work(bc, o, &mut xp, &mut acc);
        }
    }
    out
}

fn plane_of(x_shape: &Shape, w_shape: &Shape, pad: [usize; 2], dil: [usize; 2]) -> Plane {
    Plane {
        h: x_shape[2],
        w: x_shape[3],
        kh: w_shape[2],
        kw: w_shape[3],
        ph: pad[0],
        pw: pad[1],
        dh: dil[0],
        dw: dil[1],
    }
}

/// Stride-1 depthwise conv2d forward (`is_depthwise_stride1` must hold).
pub(crate) fn depthwise_stride1_forward(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let x = x.to_contiguous();
    let weight = weight.to_contiguous();
    let bias = bias.map(|b| b.to_contiguous());
    let xs = x.layout().shape().clone();
    let p = plane_of(
        &xs,
        weight.layout().shape(),
        options.padding_begin(),
        options.dilation,
    );
    let out = corr_all(
        p,
        x.storage(),
        xs[0],
        xs[1],
        weight.storage(),
        bias.as_ref().map(|b| b.storage::<f32>()),
    );
    FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(Shape::from(vec![xs[0], xs[1], p.oh(), p.ow()])),
        DType::F32,
    )
}

/// Input gradient of a stride-1 depthwise conv2d (`is_depthwise_stride1` and
/// `depthwise_stride1_x_grad_ok` must hold).
pub(crate) fn depthwise_stride1_x_backward(
    x: &FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let weight = weight.to_contiguous();
    let dy = output_grad.to_contiguous();
    let xs = x.layout().shape().clone();
    let ws = weight.layout().shape().clone();
    let gs = dy.layout().shape().clone();
    let (kh, kw) = (ws[2], ws[3]);
    let k = kh * kw;
    // flipped kernel
    let w: &[f32] = weight.storage();
    let mut wf = vec![0.0f32; w.len()];
    for c in 0..xs[1] {
        for i in 0..kh {
            for j in 0..kw {
                wf[c * k + i * kw + j] = w[c * k + (kh - 1 - i) * kw + (kw - 1 - j)];
            }
        }
    }
    let [dh, dw] = options.dilation;
    let [ph, pw] = options.padding_begin();
    let p = Plane {
        h: gs[2],
        w: gs[3],
        kh,
        kw,
        ph: dh * (kh - 1) - ph,
        pw: dw * (kw - 1) - pw,
        dh,
        dw,
    };
    debug_assert_eq!((p.oh(), p.ow()), (xs[2], xs[3]));
    let dx = corr_all(p, dy.storage(), gs[0], gs[1], &wf, None);
    FlexTensor::new(Bytes::from_elems(dx), Layout::contiguous(xs), DType::F32)
}

/// Weight gradient of a stride-1 depthwise conv2d (`is_depthwise_stride1` must hold).
pub(crate) fn depthwise_stride1_weight_backward(
    x: FlexTensor,
    weight: &FlexTensor,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let x = x.to_contiguous();
    let dy = output_grad.to_contiguous();
    let xs = x.layout().shape().clone();
    let ws = weight.layout().shape().clone();
    let p = plane_of(&xs, &ws, options.padding_begin(), options.dilation);
    let (batch, channels) = (xs[0], xs[1]);
    let in_plane = p.h * p.w;
    let out_plane = p.oh() * p.ow();
    let k = p.kh * p.kw;
    let xd: &[f32] = x.storage();
    let g: &[f32] = dy.storage();
    let isa = isa();
    let mut dwt = vec![0.0f32; channels * k];
    let work = |c: usize, o: &mut [f32], xp: &mut Vec<f32>, gp: &mut Vec<f32>| {
        let mut acc = vec![0.0f64; k];
        for b in 0..batch {
            let bc = b * channels + c;
            wgrad(
                isa,
                &p,
                &xd[bc * in_plane..(bc + 1) * in_plane],
                &g[bc * out_plane..(bc + 1) * out_plane],
                &mut acc,
                xp,
                gp,
            );
        }
        for (o, a) in o.iter_mut().zip(acc) {
            *o = a as f32;
        }
    };
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        dwt.par_chunks_mut(k).enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |(xp, gp), (c, o)| work(c, o, xp, gp),
        );
    }
    #[cfg(not(feature = "rayon"))]
    {
        let (mut xp, mut gp) = (Vec::new(), Vec::new());
        for (c, o) in dwt.chunks_mut(k).enumerate() {
            work(c, o, &mut xp, &mut gp);
        }
    }
    FlexTensor::new(Bytes::from_elems(dwt), Layout::contiguous(ws), DType::F32)
}

// ---------------------------------------------------------------------------------------------
// Weight gradient of ungrouped conv2d: im2col + GEMM
// ---------------------------------------------------------------------------------------------

/// f32, 4-D, groups 1, symmetric padding, output gradient of the matching shape.
pub(crate) fn is_dense_f32(
    x: &FlexTensor,
    weight: &FlexTensor,
    output_grad: &FlexTensor,
    options: &ConvOptions<2>,
) -> bool {
    let xs = x.layout().shape();
    let ws = weight.layout().shape();
    let gs = output_grad.layout().shape();
    if !is_f32(&[x, weight, output_grad])
        || xs.num_dims() != 4
        || ws.num_dims() != 4
        || gs.num_dims() != 4
        || options.groups != 1
        || options.is_asymmetric()
        || ws[1] != xs[1]
    {
        return false;
    }
    let [sh, sw] = options.stride;
    let [ph, pw] = options.padding_begin();
    let [dh, dw] = options.dilation;
    let oh = calculate_conv_output_size(ws[2], sh, ph, dh, xs[2]);
    let ow = calculate_conv_output_size(ws[3], sw, pw, dw, xs[3]);
    gs[0] == xs[0] && gs[1] == ws[0] && gs[2] == oh && gs[3] == ow
}

/// Upper bound on the im2col buffer (elements) per GEMM; larger problems are split by batch.
const COLS_MAX: usize = 16 * 1024 * 1024;

/// `dW[co, (ci, i, j)] = Σ_{b, oy, ox} dY[b, co, oy, ox] · x[b, ci, oy·sh + i·dh − ph, ox·sw + j·dw − pw]`
/// (`is_dense_f32` must hold).
pub(crate) fn dense_weight_backward(
    x: FlexTensor,
    weight: &FlexTensor,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let x = x.to_contiguous();
    let dy = output_grad.to_contiguous();
    let xs = x.layout().shape().clone();
    let ws = weight.layout().shape().clone();
    let gs = dy.layout().shape().clone();
    let (batch, ci, h, w) = (xs[0], xs[1], xs[2], xs[3]);
    let (co, kh, kw) = (ws[0], ws[2], ws[3]);
    let (oh, ow) = (gs[2], gs[3]);
    let [sh, sw] = options.stride;
    let [ph, pw] = options.padding_begin();
    let [dh, dw] = options.dilation;
    let kdim = ci * kh * kw;
    let s = oh * ow;
    let mut dwt = vec![0.0f32; co * kdim];
    if kdim == 0 || co == 0 || s == 0 || batch == 0 {
        return FlexTensor::new(Bytes::from_elems(dwt), Layout::contiguous(ws), DType::F32);
    }
    let xd: &[f32] = x.storage();
    let g: &[f32] = dy.storage();
    let per_batch = kdim * s;
    let chunk = (COLS_MAX / per_batch).clamp(1, batch);
    let mut cols: Vec<f32> = Vec::new();
    let mut gm: Vec<f32> = Vec::new();
    let mut b0 = 0;
    while b0 < batch {
        let nb = chunk.min(batch - b0);
        let pc = nb * s; // columns of this chunk
        cols.clear();
        cols.resize(kdim * pc, 0.0);
        gm.clear();
        gm.resize(co * pc, 0.0);
        // cols[(ci, i, j), (b, oy, ox)]
        let fill_row = |r: usize, row: &mut [f32]| {
            let c = r / (kh * kw);
            let i = (r / kw) % kh;
            let j = r % kw;
            for bb in 0..nb {
                let plane = &xd[((b0 + bb) * ci + c) * h * w..((b0 + bb) * ci + c + 1) * h * w];
                for oy in 0..oh {
                    let iy = (oy * sh + i * dh) as isize - ph as isize;
                    let dst = &mut row[bb * s + oy * ow..bb * s + (oy + 1) * ow];
                    if iy < 0 || iy >= h as isize {
                        continue; // stays zero
                    }
                    let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                    for (ox, d) in dst.iter_mut().enumerate() {
                        let ix = (ox * sw + j * dw) as isize - pw as isize;
                        if ix >= 0 && (ix as usize) < w {
                            *d = src[ix as usize];
                        }
                    }
                }
            }
        };
        // gm[co, (b, s)] = dY[b0 + b, co, s]
        let fill_g = |o: usize, row: &mut [f32]| {
            for bb in 0..nb {
                let src = &g[((b0 + bb) * co + o) * s..((b0 + bb) * co + o + 1) * s];
                row[bb * s..(bb + 1) * s].copy_from_slice(src);
            }
        };
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            cols.par_chunks_mut(pc)
                .enumerate()
                .for_each(|(r, row)| fill_row(r, row));
            gm.par_chunks_mut(pc)
                .enumerate()
                .for_each(|(o, row)| fill_g(o, row));
        }
        #[cfg(not(feature = "rayon"))]
        {
            for (r, row) in cols.chunks_mut(pc).enumerate() {
                fill_row(r, row);
            }
            for (o, row) in gm.chunks_mut(pc).enumerate() {
                fill_g(o, row);
            }
        }
        #[cfg(feature = "rayon")]
        let parallelism = if co * kdim * pc >= 192 * 192 * 192 {
            gemm::Parallelism::Rayon(0)
        } else {
            gemm::Parallelism::None
        };
        #[cfg(not(feature = "rayon"))]
        let parallelism = gemm::Parallelism::None;
        // dW[co × kdim] (+)= gm[co × pc] · colsᵀ[pc × kdim]
        // SAFETY: the pointers cover co·kdim, co·pc and kdim·pc elements with the strides given.
        unsafe {
            gemm::gemm(
                co,
                kdim,
                pc,
                dwt.as_mut_ptr(),
                1,
                kdim as isize,
                b0 > 0,
                gm.as_ptr(),
                1,
                pc as isize,
                cols.as_ptr(),
                pc as isize,
                1,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                parallelism,
            );
        }
        b0 += nb;
    }
    FlexTensor::new(Bytes::from_elems(dwt), Layout::contiguous(ws), DType::F32)
}
