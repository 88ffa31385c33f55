//! Host-side tensors: the shared [`HostTensor`] / [`TensorMap`] of `pbip-weights`.

pub use pbip_weights::{HostTensor, TensorMap};
