//! Tensor helpers shared by the model, losses and evaluation path.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::ModelError;
use crate::host::HostTensor;

/// Creates a burn tensor of rank `D` from a host tensor, checking the rank.
pub fn to_burn<const D: usize>(
    t: &HostTensor,
    device: &Device,
    name: &str,
) -> Result<Tensor<D>, ModelError> {
    if t.shape.len() != D {
        return Err(ModelError::Shape(format!(
            "tensor `{name}` has shape {:?}, expected rank {D}",
            t.shape
        )));
    }
    Ok(Tensor::from_data(
        TensorData::new(t.data.clone(), t.shape.clone()),
        device,
    ))
}

/// Reads a burn tensor back into host memory (f32).
pub fn to_host<const D: usize>(t: Tensor<D>) -> Result<HostTensor, ModelError> {
    let shape = t.dims().to_vec();
    let data = t
        .try_into_vec_as::<f32>()
        .map_err(|e| ModelError::Backend(format!("reading tensor: {e:?}")))?;
    Ok(HostTensor { shape, data })
}

/// Row-major values of a tensor as `Vec<f32>`.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, ModelError> {
    Ok(to_host(t)?.data)
}

/// Values of an integer tensor as `Vec<i64>`.
pub fn int_to_vec<const D: usize>(t: Tensor<D, Int>) -> Result<Vec<i64>, ModelError> {
    t.try_into_vec_as::<i64>()
        .map_err(|e| ModelError::Backend(format!("reading int tensor: {e:?}")))
}

/// Interpolation matrix `[out, in]` of 1-D linear resampling with `align_corners=True`
/// (PyTorch semantics: source = dst * (in-1)/(out-1); out == 1 samples index 0).
pub fn align_corners_matrix(in_len: usize, out_len: usize) -> Vec<f32> {
    let mut m = vec![0.0f32; out_len * in_len];
    if in_len == 0 || out_len == 0 {
        return m;
    }
    let scale = if out_len > 1 {
        (in_len as f64 - 1.0) / (out_len as f64 - 1.0)
    } else {
        0.0
    };
    for o in 0..out_len {
        let src = o as f64 * scale;
        let i0 = (src.floor() as usize).min(in_len - 1);
        let i1 = (i0 + 1).min(in_len - 1);
        let l = (src - i0 as f64) as f32;
        m[o * in_len + i0] += 1.0 - l;
        m[o * in_len + i1] += l;
    }
    m
}

/// Bilinear resize of `[B,C,H,W]` to `[B,C,out_h,out_w]` with `align_corners=True`, written
/// as two matrix products so that it is exact and differentiable on every backend.
pub fn resize_bilinear_align_corners(x: Tensor<4>, out_h: usize, out_w: usize) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    if h == out_h && w == out_w {
        return x;
    }
    let device = x.device();
    let ry: Tensor<2> = Tensor::from_data(
        TensorData::new(align_corners_matrix(h, out_h), [out_h, h]),
        &device,
    );
    let rx_t: Tensor<2> = Tensor::from_data(
        TensorData::new(align_corners_matrix(w, out_w), [out_w, w]),
        &device,
    )
    .transpose();
    // Width: [B*C*H, W] @ [W, out_w]
    let x = x.reshape([b * c * h, w]).matmul(rx_t);
    // Height: [B*C, H, out_w] -> [B*C, out_w, H] -> [(B*C*out_w), H] @ [H, out_h]
    let x = x
        .reshape([b * c, h, out_w])
        .swap_dims(1, 2)
        .reshape([b * c * out_w, h])
        .matmul(ry.transpose());
    x.reshape([b * c, out_w, out_h])
        .swap_dims(1, 2)
        .reshape([b, c, out_h, out_w])
}

/// L2-normalises along `dim`, dividing by `max(||x||, eps)` (PyTorch `F.normalize`).
///
/// Computed as `sqrt(max(||x||², eps²))` so that a zero vector has a finite gradient (the clamp
/// cuts the gradient path through `sqrt` at 0, whose derivative is infinite).
pub fn l2_normalize<const D: usize>(x: Tensor<D>, dim: usize, eps: f64) -> Tensor<D> {
    let n = x.clone().square().sum_dim(dim).clamp_min(eps * eps).sqrt();
    x / n
}

/// Integer index tensor.
pub fn index_tensor(idx: &[usize], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(v, [idx.len()]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_corners_matrix_endpoints_and_midpoints() {
        // 2 -> 3: rows [1,0], [0.5,0.5], [0,1]
        let m = align_corners_matrix(2, 3);
        assert_eq!(m, vec![1.0, 0.0, 0.5, 0.5, 0.0, 1.0]);
        // 3 -> 5: source positions 0, .5, 1, 1.5, 2
        let m = align_corners_matrix(3, 5);
        let expect = [
            1.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 1.0,
        ];
        assert_eq!(m, expect);
    }

    #[test]
    fn resize_matches_hand_computed_bilinear() {
        let device = Device::flex();
        // 2x2 image [[0,1],[2,3]] -> 3x3 align_corners: centre = 1.5, edges midpoints.
        let x: Tensor<4> = Tensor::from_data(
            TensorData::new(vec![0.0f32, 1.0, 2.0, 3.0], [1, 1, 2, 2]),
            &device,
        );
        let y = to_vec(resize_bilinear_align_corners(x, 3, 3)).unwrap();
        assert_eq!(y, vec![0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 2.5, 3.0]);
    }

    #[test]
    fn l2_normalize_zero_vector_is_finite() {
        let device = Device::flex();
        let x: Tensor<2> = Tensor::from_data(
            TensorData::new(vec![0.0f32, 0.0, 3.0, 4.0], [2, 2]),
            &device,
        );
        let y = to_vec(l2_normalize(x, 1, 1e-12)).unwrap();
        assert_eq!(y, vec![0.0, 0.0, 0.6, 0.8]);
    }
}
