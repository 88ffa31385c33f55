//! Mixed precision of the MiT backbone (bf16 autocast, as `torch.autocast(dtype=torch.bfloat16)`
//! does for the ops that pay).
//!
//! With [`Precision::Bf16`] the parameters stay f32 (the optimiser updates f32 master weights);
//! inside each attention and Mix-FFN sub-block and each patch embedding the input and the weights
//! are cast to bf16, so the linear layers, convolutions, GELU and the attention products run in
//! bf16; the attention softmax, every LayerNorm and the residual stream stay f32, and the stage
//! outputs (and so the head and every loss) are f32. The casts are autodiff ops: the gradient of
//! a bf16 use of a weight flows back through the cast and reaches the f32 parameter as f32.
//!
//! [`Precision::F32`] (the default) casts nothing: the f32 path is exactly the reference path.

use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::module::{conv2d as conv2d_op, linear as linear_op};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// Floating-point precision of the backbone's compute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (the reference).
    #[default]
    F32,
    /// bf16 autocast: linear layers, convolutions, GELU and attention products in bf16;
    /// LayerNorm, softmax, the residual stream, the head and the losses in f32.
    Bf16,
}

impl Precision {
    /// The dtype sub-blocks compute in.
    pub fn compute_dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }

    /// Config / log spelling (`f32`, `bf16`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

/// `x` in `dtype` (no op when it already is).
pub(crate) fn cast<const D: usize>(x: Tensor<D>, dtype: DType) -> Tensor<D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}

/// `x` in the compute dtype of `precision`.
pub(crate) fn enter<const D: usize>(x: Tensor<D>, precision: Precision) -> Tensor<D> {
    cast(x, precision.compute_dtype())
}

/// `x` back in f32 (the residual stream, LayerNorm and softmax inputs).
pub(crate) fn leave<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    cast(x, DType::F32)
}

/// `nn.Linear` on `x` in `x`'s dtype (weights cast to it).
pub(crate) fn linear<const D: usize>(l: &Linear, x: Tensor<D>) -> Tensor<D> {
    let dtype = x.dtype();
    if dtype == l.weight.val().dtype() {
        return l.forward(x);
    }
    linear_op(
        x,
        cast(l.weight.val(), dtype),
        l.bias.as_ref().map(|b| cast(b.val(), dtype)),
    )
}

/// `nn.Conv2d` on `x` in `x`'s dtype (weights cast to it). A conv without explicit padding (none
/// in MiT) runs in f32 and its output is cast back to `x`'s dtype.
pub(crate) fn conv2d(c: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let dtype = x.dtype();
    if dtype == c.weight.val().dtype() {
        return c.forward(x);
    }
    let pads = match &c.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(*top, *bottom), (*left, *right)],
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Same => return cast(c.forward(leave(x)), dtype),
    };
    conv2d_op(
        x,
        cast(c.weight.val(), dtype),
        c.bias.as_ref().map(|b| cast(b.val(), dtype)),
        ConvOptions::new_with_padding(c.stride, pads, c.dilation, c.groups),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Distribution, Tensor};

    fn max_rel(a: Tensor<2>, b: Tensor<2>) -> f32 {
        let scale = b.clone().abs().max().into_scalar::<f32>().max(1e-6);
        (a - b).abs().max().into_scalar::<f32>() / scale
    }

    #[test]
    fn f32_precision_casts_nothing() {
        let device = burn::tensor::Device::flex();
        let x: Tensor<2> = Tensor::random([3, 4], Distribution::Normal(0.0, 1.0), &device);
        let y = enter(x.clone(), Precision::F32);
        assert_eq!(y.dtype(), DType::F32);
        assert_eq!(y.into_data(), x.into_data());
        let l = LinearConfig::new(4, 5).init(&device);
        let x: Tensor<2> = Tensor::random([3, 4], Distribution::Normal(0.0, 1.0), &device);
        assert_eq!(linear(&l, x.clone()).into_data(), l.forward(x).into_data());
    }

    #[test]
    fn bf16_linear_and_conv_compute_in_bf16_close_to_f32() {
        let device = burn::tensor::Device::flex();
        let l = LinearConfig::new(32, 16).init(&device);
        let x: Tensor<2> = Tensor::random([8, 32], Distribution::Normal(0.0, 1.0), &device);
        let y = linear(&l, enter(x.clone(), Precision::Bf16));
        assert_eq!(y.dtype(), DType::BF16);
        // bf16 keeps 8 significant bits: relative error a few 1e-3 on sums of 32 products.
        let err = max_rel(leave(y), l.forward(x));
        assert!(err > 0.0 && err < 2e-2, "bf16 linear rel. error {err}");

        let c = Conv2dConfig::new([4, 6], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&device);
        let x: Tensor<4> = Tensor::random([2, 4, 5, 5], Distribution::Normal(0.0, 1.0), &device);
        let y = conv2d(&c, enter(x.clone(), Precision::Bf16));
        assert_eq!(y.dtype(), DType::BF16);
        assert_eq!(y.dims(), [2, 6, 5, 5]);
        let err = max_rel(leave(y).reshape([2, 150]), c.forward(x).reshape([2, 150]));
        assert!(err > 0.0 && err < 2e-2, "bf16 conv rel. error {err}");
    }
}
