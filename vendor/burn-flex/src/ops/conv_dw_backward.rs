//! pbip change (see `PBIP-CHANGES.md`): direct f32 backward kernels for 2D convolutions.
//!
//! burn's defaults compute the weight gradient of a grouped convolution with one `conv2d` and
//! one `slice_assign` per group (thousands of calls for a depthwise convolution with 1024 or
//! 2048 channels), the input gradient through a transposed convolution that runs one tiny
//! GEMM per (batch, channel), and the bias gradient through a materialised `swap_dims` +
//! `reshape` of the whole output gradient. For the canonical depthwise case (one input and one
//! output channel per group) these are replaced by direct per-plane loops, parallel over planes
//! or channels; the bias gradient of any 2D convolution becomes a per-channel sum.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::DType;
use burn_backend::ops::ConvOptions;
use burn_backend::ops::conv::calculate_conv_output_size;
use burn_std::{Bytes, Shape};

use crate::{FlexTensor, Layout};

/// Depthwise 2D convolution with symmetric padding on f32 tensors of the usual shapes.
pub(crate) fn is_depthwise_f32(
    x: &FlexTensor,
    weight: &FlexTensor,
    output_grad: &FlexTensor,
    options: &ConvOptions<2>,
) -> bool {
    let xs = x.layout().shape();
    let ws = weight.layout().shape();
    let gs = output_grad.layout().shape();
    if x.dtype() != DType::F32 || weight.dtype() != DType::F32 || output_grad.dtype() != DType::F32
    {
        return false;
    }
    if xs.num_dims() != 4 || ws.num_dims() != 4 || gs.num_dims() != 4 {
        return false;
    }
    let c = xs[1];
    if ws[1] != 1 || ws[0] != c || options.groups != c || options.is_asymmetric() {
        return false;
    }
    let [sh, sw] = options.stride;
    let [ph, pw] = options.padding_begin();
    let [dh, dw] = options.dilation;
    let oh = calculate_conv_output_size(ws[2], sh, ph, dh, xs[2]);
    let ow = calculate_conv_output_size(ws[3], sw, pw, dw, xs[3]);
    gs[0] == xs[0] && gs[1] == c && gs[2] == oh && gs[3] == ow
}

/// Range of output positions `o` whose input `o*stride + k*dilation - pad` is in `[0, in_size)`.
#[inline]
fn valid_out_range(
    k: usize,
    dilation: usize,
    pad: usize,
    stride: usize,
    in_size: usize,
    out_size: usize,
) -> (usize, usize) {
    let offset = k * dilation;
    let start = if offset >= pad {
        0
    } else {
        (pad - offset).div_ceil(stride)
    };
    let threshold = in_size + pad;
    let end = if offset >= threshold {
        0
    } else {
        (threshold - offset).div_ceil(stride)
    };
    let end = end.min(out_size);
    (start.min(end), end)
}

struct Geometry {
    batch: usize,
    channels: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
    k_h: usize,
    k_w: usize,
    stride: [usize; 2],
    pad: [usize; 2],
    dilation: [usize; 2],
    oh_ranges: Vec<(usize, usize)>,
    ow_ranges: Vec<(usize, usize)>,
}

impl Geometry {
    fn new(x_shape: &Shape, w_shape: &Shape, g_shape: &Shape, options: &ConvOptions<2>) -> Self {
        let [stride_h, stride_w] = options.stride;
        let [pad_h, pad_w] = options.padding_begin();
        let [dil_h, dil_w] = options.dilation;
        let (in_h, in_w, out_h, out_w) = (x_shape[2], x_shape[3], g_shape[2], g_shape[3]);
        let (k_h, k_w) = (w_shape[2], w_shape[3]);
        Self {
            batch: x_shape[0],
            channels: x_shape[1],
            in_h,
            in_w,
            out_h,
            out_w,
            k_h,
            k_w,
            stride: options.stride,
            pad: [pad_h, pad_w],
            dilation: options.dilation,
            oh_ranges: (0..k_h)
                .map(|kh| valid_out_range(kh, dil_h, pad_h, stride_h, in_h, out_h))
                .collect(),
            ow_ranges: (0..k_w)
                .map(|kw| valid_out_range(kw, dil_w, pad_w, stride_w, in_w, out_w))
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Input gradient: dx[ih, iw] += w[kh, kw] * dy[oh, ow] with ih = oh*s + kh*d - p (the transpose
// of the forward gather), one (batch, channel) plane at a time.
// ---------------------------------------------------------------------------------------------

#[inline(always)]
fn x_grad_plane(geo: &Geometry, dx: &mut [f32], dy: &[f32], w: &[f32]) {
    let [sh, sw] = geo.stride;
    let [ph, pw] = geo.pad;
    let [dh, dw] = geo.dilation;
    for oh in 0..geo.out_h {
        let dy_row = &dy[oh * geo.out_w..(oh + 1) * geo.out_w];
        for kh in 0..geo.k_h {
            let (oh0, oh1) = geo.oh_ranges[kh];
            if oh < oh0 || oh >= oh1 {
                continue;
            }
            let ih = oh * sh + kh * dh - ph;
            let dx_row = &mut dx[ih * geo.in_w..(ih + 1) * geo.in_w];
            for kw in 0..geo.k_w {
                let (ow0, ow1) = geo.ow_ranges[kw];
                if ow0 >= ow1 {
                    continue;
                }
                let wv = w[kh * geo.k_w + kw];
                let iw0 = ow0 * sw + kw * dw - pw;
                if sw == 1 {
                    let n = ow1 - ow0;
                    let src = &dy_row[ow0..ow1];
                    let dst = &mut dx_row[iw0..iw0 + n];
                    for (d, &g) in dst.iter_mut().zip(src) {
                        *d += wv * g;
                    }
                } else {
                    let mut iw = iw0;
                    for &g in &dy_row[ow0..ow1] {
                        dx_row[iw] += wv * g;
                        iw += sw;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Weight gradient: dw[c, kh, kw] = sum_b sum_{oh, ow} dy[b, c, oh, ow] * x[b, c, ih, iw].
// Row dot products in f32 with 16 independent lanes (vectorisable), accumulated over rows and
// batches in f64.
// ---------------------------------------------------------------------------------------------

#[inline(always)]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let n = a.len().min(b.len());
    let mut acc = [0.0f32; L];
    let chunks = n / L;
    for i in 0..chunks {
        let aa = &a[i * L..i * L + L];
        let bb = &b[i * L..i * L + L];
        for l in 0..L {
            acc[l] += aa[l] * bb[l];
        }
    }
    let mut s = 0.0f32;
    for i in chunks * L..n {
        s += a[i] * b[i];
    }
    for v in acc {
        s += v;
    }
    s
}

#[inline(always)]
fn w_grad_channel(geo: &Geometry, c: usize, x: &[f32], dy: &[f32], out: &mut [f32]) {
    let [sh, sw] = geo.stride;
    let [ph, pw] = geo.pad;
    let [dh, dw] = geo.dilation;
    let in_plane = geo.in_h * geo.in_w;
    let out_plane = geo.out_h * geo.out_w;
    let mut acc = vec![0.0f64; geo.k_h * geo.k_w];
    let mut strided = Vec::new();
    for b in 0..geo.batch {
        let base = (b * geo.channels + c) * in_plane;
        let xp = &x[base..base + in_plane];
        let gbase = (b * geo.channels + c) * out_plane;
        let gp = &dy[gbase..gbase + out_plane];
        for kh in 0..geo.k_h {
            let (oh0, oh1) = geo.oh_ranges[kh];
            for kw in 0..geo.k_w {
                let (ow0, ow1) = geo.ow_ranges[kw];
                if oh0 >= oh1 || ow0 >= ow1 {
                    continue;
                }
                let iw0 = ow0 * sw + kw * dw - pw;
                let n = ow1 - ow0;
                let mut s = 0.0f64;
                for oh in oh0..oh1 {
                    let ih = oh * sh + kh * dh - ph;
                    let g_row = &gp[oh * geo.out_w + ow0..oh * geo.out_w + ow1];
                    let x_row = &xp[ih * geo.in_w..(ih + 1) * geo.in_w];
                    let d = if sw == 1 {
                        dot_f32(g_row, &x_row[iw0..iw0 + n])
                    } else {
                        strided.clear();
                        strided.extend((0..n).map(|i| x_row[iw0 + i * sw]));
                        dot_f32(g_row, &strided)
                    };
                    s += d as f64;
                }
                acc[kh * geo.k_w + kw] += s;
            }
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = a as f32;
    }
}

#[cfg(all(feature = "std", target_arch = "x86_64"))]
mod x86 {
    use super::Geometry;
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn x_plane_avx512(geo: &Geometry, dx: &mut [f32], dy: &[f32], w: &[f32]) {
        super::x_grad_plane(geo, dx, dy, w)
    }
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn x_plane_avx2(geo: &Geometry, dx: &mut [f32], dy: &[f32], w: &[f32]) {
        super::x_grad_plane(geo, dx, dy, w)
    }
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn w_channel_avx512(
        geo: &Geometry,
        c: usize,
        x: &[f32],
        dy: &[f32],
        out: &mut [f32],
    ) {
        super::w_grad_channel(geo, c, x, dy, out)
    }
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn w_channel_avx2(
        geo: &Geometry,
        c: usize,
        x: &[f32],
        dy: &[f32],
        out: &mut [f32],
    ) {
        super::w_grad_channel(geo, c, x, dy, out)
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

fn x_plane(isa: Isa, geo: &Geometry, dx: &mut [f32], dy: &[f32], w: &[f32]) {
    match isa {
        // SAFETY: features detected at run time.
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        Isa::Avx512 => unsafe { x86::x_plane_avx512(geo, dx, dy, w) },
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        Isa::Avx2 => unsafe { x86::x_plane_avx2(geo, dx, dy, w) },
        Isa::Generic => x_grad_plane(geo, dx, dy, w),
    }
}

fn w_channel(isa: Isa, geo: &Geometry, c: usize, x: &[f32], dy: &[f32], out: &mut [f32]) {
    match isa {
        // SAFETY: features detected at run time.
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        Isa::Avx512 => unsafe { x86::w_channel_avx512(geo, c, x, dy, out) },
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        Isa::Avx2 => unsafe { x86::w_channel_avx2(geo, c, x, dy, out) },
        Isa::Generic => w_grad_channel(geo, c, x, dy, out),
    }
}

/// Input gradient of a depthwise conv2d (`is_depthwise_f32` must hold).
pub(crate) fn depthwise_x_backward(
    x: FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let weight = weight.to_contiguous();
    let dy = output_grad.to_contiguous();
    let geo = Geometry::new(
        x.layout().shape(),
        weight.layout().shape(),
        dy.layout().shape(),
        options,
    );
    let in_plane = geo.in_h * geo.in_w;
    let out_plane = geo.out_h * geo.out_w;
    let k = geo.k_h * geo.k_w;
    let mut dx = vec![0.0f32; geo.batch * geo.channels * in_plane];
    let w: &[f32] = weight.storage();
    let g: &[f32] = dy.storage();
    let isa = isa();
    let work = |bc: usize, plane: &mut [f32]| {
        let c = bc % geo.channels;
        x_plane(
            isa,
            &geo,
            plane,
            &g[bc * out_plane..(bc + 1) * out_plane],
            &w[c * k..(c + 1) * k],
        );
    };
    if in_plane > 0 {
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            dx.par_chunks_mut(in_plane)
                .enumerate()
                .for_each(|(bc, p)| work(bc, p));
        }
        #[cfg(not(feature = "rayon"))]
        for (bc, p) in dx.chunks_mut(in_plane).enumerate() {
            work(bc, p);
        }
    }
    FlexTensor::new(
        Bytes::from_elems(dx),
        Layout::contiguous(x.layout().shape().clone()),
        DType::F32,
    )
}

/// Weight gradient of a depthwise conv2d (`is_depthwise_f32` must hold).
pub(crate) fn depthwise_weight_backward(
    x: FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let x = x.to_contiguous();
    let dy = output_grad.to_contiguous();
    let w_shape = weight.layout().shape().clone();
    let geo = Geometry::new(x.layout().shape(), &w_shape, dy.layout().shape(), options);
    let k = geo.k_h * geo.k_w;
    let mut dw = vec![0.0f32; geo.channels * k];
    let xd: &[f32] = x.storage();
    let g: &[f32] = dy.storage();
    let isa = isa();
    if k > 0 {
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            dw.par_chunks_mut(k)
                .enumerate()
                .for_each(|(c, o)| w_channel(isa, &geo, c, xd, g, o));
        }
        #[cfg(not(feature = "rayon"))]
        for (c, o) in dw.chunks_mut(k).enumerate() {
            w_channel(isa, &geo, c, xd, g, o);
        }
    }
    FlexTensor::new(
        Bytes::from_elems(dw),
        Layout::contiguous(w_shape),
        DType::F32,
    )
}

/// Bias gradient of any 2D convolution: the per-channel sum of an f32 `[B, C, H, W]` gradient
/// (f64 accumulation). `None` for other dtypes or ranks.
pub(crate) fn conv2d_bias_backward_f32(output_grad: &FlexTensor) -> Option<FlexTensor> {
    if output_grad.dtype() != DType::F32 || output_grad.layout().shape().num_dims() != 4 {
        return None;
    }
    let dy = output_grad.to_contiguous();
    let s = dy.layout().shape();
    let (batch, channels, plane) = (s[0], s[1], s[2] * s[3]);
    let g: &[f32] = dy.storage();
    let sum_channel = |c: usize| -> f32 {
        let mut acc = 0.0f64;
        for b in 0..batch {
            let base = (b * channels + c) * plane;
            let p = &g[base..base + plane];
            let mut lanes = [0.0f32; 16];
            let chunks = plane / 16;
            for i in 0..chunks {
                for l in 0..16 {
                    lanes[l] += p[i * 16 + l];
                }
            }
            let mut r = 0.0f64;
            for &v in &p[chunks * 16..] {
                r += v as f64;
            }
            for v in lanes {
                r += v as f64;
            }
            acc += r;
        }
        acc as f32
    };
    #[cfg(feature = "rayon")]
    let out: Vec<f32> = {
        use rayon::prelude::*;
        (0..channels).into_par_iter().map(sum_channel).collect()
    };
    #[cfg(not(feature = "rayon"))]
    let out: Vec<f32> = (0..channels).map(sum_channel).collect();
    Some(FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(Shape::from(vec![channels])),
        DType::F32,
    ))
}

// ---------------------------------------------------------------------------------------------
// Fallbacks: burn-backend 0.22.1's default `conv2d_{x,weight,bias}_backward` (crate-private
// there), copied for the shapes the kernels above do not cover.
// ---------------------------------------------------------------------------------------------

pub(crate) mod fallback {
    use alloc::vec;
    use burn_backend::TensorMetadata;
    use burn_backend::ops::conv::{calculate_padding_out, pad_asymmetric_conv_input};
    use burn_backend::ops::{ConvOptions, ConvTransposeOptions, FloatTensorOps, ModuleOps};
    use burn_backend::tensor::FloatTensor;
    use burn_std::{Shape, Slice};

    use crate::Flex;

    type T = FloatTensor<Flex>;

    fn crop_asymmetric_input_grad(
        grad: T,
        input_shape: &Shape,
        padding: &[(usize, usize); 2],
    ) -> T {
        let mut ranges = input_shape
            .iter()
            .map(|&size| Slice::from(0..size))
            .collect::<alloc::vec::Vec<_>>();
        for (dim, (begin, _)) in padding.iter().enumerate() {
            ranges[dim + 2] = Slice::from(*begin..*begin + input_shape[dim + 2]);
        }
        Flex::float_slice(grad, &ranges)
    }

    pub(crate) fn x_backward(x: T, weight: T, output_grad: T, options: ConvOptions<2>) -> T {
        if options.is_asymmetric() {
            let input_shape = x.shape();
            let padding = options.padding;
            let (x, options) = pad_asymmetric_conv_input::<Flex, 2>(x, options);
            let grad = x_backward_symmetric(x, weight, output_grad, options);
            return crop_asymmetric_input_grad(grad, &input_shape, &padding);
        }
        x_backward_symmetric(x, weight, output_grad, options)
    }

    fn x_backward_symmetric(x: T, weight: T, output_grad: T, options: ConvOptions<2>) -> T {
        let weight_shape = weight.shape();
        let [_b, _c, height_in, width_in] = x.shape().dims();
        let [_, _, height_out, width_out] = output_grad.shape().dims();
        let [_co, _, kernel_size_1, kernel_size_2] = weight_shape.dims();
        let padding_1_out = calculate_padding_out(
            kernel_size_1,
            options.stride[0],
            options.padding_begin()[0],
            options.dilation[0],
            height_in,
            height_out,
        );
        let padding_2_out = calculate_padding_out(
            kernel_size_2,
            options.stride[1],
            options.padding_begin()[1],
            options.dilation[1],
            width_in,
            width_out,
        );
        Flex::conv_transpose2d(
            output_grad,
            weight,
            None,
            ConvTransposeOptions::new(
                options.stride,
                options.padding_begin(),
                [padding_1_out, padding_2_out],
                options.dilation,
                options.groups,
            ),
        )
    }

    pub(crate) fn weight_backward(x: T, weight: T, output_grad: T, options: ConvOptions<2>) -> T {
        let (x, options) = pad_asymmetric_conv_input::<Flex, 2>(x, options);
        let weight_dtype = weight.dtype();
        let weight_shape = weight.shape();
        let weight_device = weight.device();
        match options.groups == 1 {
            true => grad_no_groups(x, output_grad, weight_shape, options),
            false => grad_groups(
                x,
                Flex::float_zeros(weight_shape, &weight_device, weight_dtype.into()),
                output_grad,
                options,
            ),
        }
    }

    pub(crate) fn bias_backward(x: T, bias: T, output_grad: T) -> T {
        let [batch_size, _, _, _] = x.shape().dims();
        let [_, channels_out, height_out, width_out] = output_grad.shape().dims();
        let grad = Flex::float_swap_dims(output_grad, 0, 1);
        let grad = Flex::float_reshape(
            grad,
            Shape::new([channels_out, batch_size * height_out * width_out]),
        );
        let grad = Flex::float_sum_dim(grad, 1);
        Flex::float_reshape(grad, bias.shape())
    }

    fn grad_no_groups(x: T, output_grad: T, weight_shape: Shape, options: ConvOptions<2>) -> T {
        let x_swapped = Flex::float_swap_dims(x, 0, 1);
        let output_grad_swapped = Flex::float_swap_dims(output_grad, 0, 1);
        let weight_grad_swapped = Flex::conv2d(
            x_swapped,
            output_grad_swapped,
            None,
            ConvOptions::new(options.dilation, options.padding_begin(), options.stride, 1),
        );
        let mut weight_grad = Flex::float_swap_dims(weight_grad_swapped, 0, 1);
        if weight_grad.shape() != weight_shape {
            let slices = vec![
                Slice::from(0..weight_shape[0]),
                Slice::from(0..weight_shape[1]),
                Slice::from(0..weight_shape[2]),
                Slice::from(0..weight_shape[3]),
            ];
            weight_grad = Flex::float_slice(weight_grad, &slices);
        }
        weight_grad
    }

    fn grad_groups(x: T, mut weight_grad: T, output_grad: T, options: ConvOptions<2>) -> T {
        let [channels_out, increment_ci, kernel_size_1, kernel_size_2] = weight_grad.shape().dims();
        let increment_co = channels_out / options.groups;
        let x_swapped = Flex::float_swap_dims(x, 0, 1);
        let output_grad_swapped = Flex::float_swap_dims(output_grad, 0, 1);
        for g in 0..options.groups {
            let start_idx_ci = g * increment_ci;
            let end_idx_ci = (g + 1) * increment_ci;
            let start_idx_co = g * increment_co;
            let end_idx_co = (g + 1) * increment_co;
            let x_slice = vec![Slice::new(
                start_idx_ci as isize,
                Some(end_idx_ci as isize),
                1,
            )];
            let x = Flex::float_slice(x_swapped.clone(), &x_slice);
            let grad_slice = vec![Slice::new(
                start_idx_co as isize,
                Some(end_idx_co as isize),
                1,
            )];
            let grad = Flex::float_slice(output_grad_swapped.clone(), &grad_slice);
            let mut weight_grad_tmp = Flex::conv2d(
                x,
                grad,
                None,
                ConvOptions::new(options.dilation, options.padding_begin(), options.stride, 1),
            );
            weight_grad_tmp = Flex::float_swap_dims(weight_grad_tmp, 0, 1);
            let [_, _, kernel_size_1_tmp, kernel_size_2_tmp] = weight_grad_tmp.shape().dims();
            if kernel_size_1_tmp != kernel_size_1 || kernel_size_2_tmp != kernel_size_2 {
                let slices = vec![
                    Slice::from(0..increment_co),
                    Slice::from(0..increment_ci),
                    Slice::from(0..kernel_size_1),
                    Slice::from(0..kernel_size_2),
                ];
                weight_grad_tmp = Flex::float_slice(weight_grad_tmp, &slices);
            }
            weight_grad = Flex::float_slice_assign(
                weight_grad,
                &[
                    Slice::from(start_idx_co..end_idx_co),
                    Slice::from(0..increment_ci),
                    Slice::from(0..kernel_size_1),
                    Slice::from(0..kernel_size_2),
                ],
                weight_grad_tmp,
            );
        }
        weight_grad
    }
}
