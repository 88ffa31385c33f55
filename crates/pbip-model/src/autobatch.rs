//! `inference.batch_size: auto`: patches per forward pass from the free memory of the device the
//! model runs on.
//!
//! On a CUDA device (libtorch, `tch` feature) the free memory is read with `cudaMemGetInfo`
//! before and after one probe pass of [`PROBE_BATCH`] patches through the evaluation path.
//! libtorch's caching allocator keeps the blocks of the probe's peak reserved after the pass, so
//! the drop in free memory is the probe's peak footprint; later passes reuse those blocks. The
//! batch is the number of patches whose footprint fits in [`HEADROOM`] of the memory that was free
//! before the probe, capped at [`MAX_AUTO_BATCH`].
//!
//! The CPU backends gain nothing from batches beyond a few dozen patches (each kernel already uses
//! every core), so `auto` is [`CPU_AUTO_BATCH`] there. A GPU backend whose free memory pbip cannot
//! read (wgpu, burn's CubeCL CUDA) also gets [`CPU_AUTO_BATCH`], with a warning naming the key to
//! set instead. Every choice comes with a sentence saying how it was made, for the run's log.

use burn::tensor::{Device, Tensor};

use crate::{ClassNet, EvalConfig, Gate, MergeMethod, ModelError, backend, evaluate};

/// Patches in the probe pass.
pub const PROBE_BATCH: usize = 4;
/// Fraction of the free device memory the chosen batch may take.
pub const HEADROOM: f64 = 0.8;
/// Largest batch `auto` picks (beyond it a GPU is saturated and latency only grows).
pub const MAX_AUTO_BATCH: usize = 512;
/// `auto` where free memory cannot be measured (the CPU backends, wgpu, CubeCL CUDA).
pub const CPU_AUTO_BATCH: usize = 32;
/// A probe whose footprint reads below this is not a measurement (another process freed memory
/// meanwhile, or the allocator had the blocks already).
const MIN_PROBE_FOOTPRINT_BYTES: u64 = 1 << 20;

/// The batch size `auto` chose and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPlan {
    /// Patches per forward pass.
    pub batch_size: usize,
    /// One sentence for the log: the device, the memory figures and the rule applied.
    pub explanation: String,
    /// Whether the size comes from a memory measurement (false: the fixed fallback).
    pub measured: bool,
}

/// The batch size for `free_before_bytes` of free device memory when a probe of `probe_batch`
/// patches took `free_before_bytes - free_after_bytes`; `None` when that difference is not a
/// usable measurement.
pub fn batch_from_probe(
    free_before_bytes: u64,
    free_after_bytes: u64,
    probe_batch: usize,
) -> Option<usize> {
    let footprint = free_before_bytes.checked_sub(free_after_bytes)?;
    if footprint < MIN_PROBE_FOOTPRINT_BYTES || probe_batch == 0 {
        return None;
    }
    let per_patch = footprint as f64 / probe_batch as f64;
    let fits = (free_before_bytes as f64 * HEADROOM / per_patch).floor();
    Some((fits as usize).clamp(1, MAX_AUTO_BATCH))
}

fn fallback(explanation: String) -> BatchPlan {
    BatchPlan {
        batch_size: CPU_AUTO_BATCH,
        explanation,
        measured: false,
    }
}

/// The plan on the CPU backends (no probe): `None` for a GPU device.
pub fn cpu_plan(choice: pbip_config::Device) -> Option<BatchPlan> {
    use pbip_config::Device as D;
    match choice {
        D::Cpu | D::TchCpu => Some(fallback(format!(
            "inference.batch_size auto on `{choice}`: {CPU_AUTO_BATCH} (the CPU kernels already \
             use every core; larger batches only cost memory)"
        ))),
        D::Cuda(_) | D::Wgpu(_) | D::Gpu => None,
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Chooses the inference batch size for `model` on `device` (the configured `choice`) and input
/// patches of `side_px` pixels, running one probe pass on a GPU whose memory can be read.
pub fn plan_batch(
    model: &ClassNet,
    eval: &EvalConfig,
    device: &Device,
    choice: pbip_config::Device,
    side_px: usize,
) -> Result<BatchPlan, ModelError> {
    if let Some(plan) = cpu_plan(choice) {
        return Ok(plan);
    }
    let Some(before) = backend::gpu_memory(choice) else {
        tracing::warn!(
            "inference.batch_size auto on `{choice}`: this backend cannot report free GPU memory; \
             using {CPU_AUTO_BATCH}"
        );
        return Ok(fallback(format!(
            "inference.batch_size auto on `{choice}`: {CPU_AUTO_BATCH}, because this backend \
             cannot report free GPU memory (only libtorch CUDA, the `tch` build, can); set \
             inference.batch_size to a number to choose another size"
        )));
    };
    let images: Tensor<4> = Tensor::zeros([PROBE_BATCH, 3, side_px, side_px], device);
    let gate = Gate::Predicted {
        threshold: 0.5,
        merge: MergeMethod::Mean,
    };
    let out = evaluate(model, images, &gate, eval)?;
    // reading the result back waits for the pass to finish on the device
    crate::util::to_vec(out.fused)?;
    let after = backend::gpu_memory(choice).unwrap_or(before);
    Ok(
        match batch_from_probe(before.free_bytes, after.free_bytes, PROBE_BATCH) {
            Some(batch_size) => BatchPlan {
                batch_size,
                explanation: format!(
                    "inference.batch_size auto on `{choice}`: {batch_size} patches of {side_px} px \
                     ({:.1} of {:.1} GiB free; a probe of {PROBE_BATCH} patches took {:.0} MiB; \
                     batch = {HEADROOM} x free / per-patch, at most {MAX_AUTO_BATCH})",
                    gib(before.free_bytes),
                    gib(before.total_bytes),
                    before.free_bytes.saturating_sub(after.free_bytes) as f64 / (1u64 << 20) as f64,
                ),
                measured: true,
            },
            None => {
                tracing::warn!(
                    "inference.batch_size auto on `{choice}`: the probe pass did not change the \
                     free GPU memory measurably; using {CPU_AUTO_BATCH}"
                );
                fallback(format!(
                    "inference.batch_size auto on `{choice}`: {CPU_AUTO_BATCH}, because the probe \
                 pass did not change the free memory measurably ({:.2} -> {:.2} GiB free: another \
                 process on the GPU?); set inference.batch_size to a number to choose",
                    gib(before.free_bytes),
                    gib(after.free_bytes)
                ))
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    #[test]
    fn batch_fits_the_headroom_of_free_memory() {
        // 4 patches took 400 MiB: 100 MiB each; 0.8 x 10 GiB / 100 MiB = 81.92 -> 81
        assert_eq!(
            batch_from_probe(10 * GIB, 10 * GIB - 400 * MIB, 4),
            Some(81)
        );
        // capped on a large GPU
        assert_eq!(
            batch_from_probe(140 * GIB, 140 * GIB - 40 * MIB, 4),
            Some(MAX_AUTO_BATCH)
        );
        // at least one patch even when one barely fits
        assert_eq!(batch_from_probe(GIB, GIB - 900 * MIB, 1), Some(1));
    }

    #[test]
    fn a_probe_that_freed_or_took_nothing_is_not_a_measurement() {
        assert_eq!(batch_from_probe(10 * GIB, 10 * GIB, 4), None);
        assert_eq!(batch_from_probe(10 * GIB, 10 * GIB + MIB, 4), None);
        assert_eq!(batch_from_probe(10 * GIB, 10 * GIB - 1000, 4), None);
        assert_eq!(batch_from_probe(10 * GIB, 9 * GIB, 0), None);
    }

    #[test]
    fn cpu_auto_is_the_fixed_cpu_size_and_gpus_probe() {
        for choice in [pbip_config::Device::Cpu, pbip_config::Device::TchCpu] {
            let plan = cpu_plan(choice).expect("a CPU plan");
            assert_eq!(plan.batch_size, CPU_AUTO_BATCH);
            assert!(!plan.measured);
            assert!(
                plan.explanation.contains(&format!("`{choice}`")),
                "{}",
                plan.explanation
            );
        }
        assert!(cpu_plan(pbip_config::Device::Cuda(None)).is_none());
        assert!(cpu_plan(pbip_config::Device::Gpu).is_none());
    }

    #[cfg(not(any(feature = "tch", feature = "cuda", feature = "wgpu")))]
    #[test]
    fn a_gpu_without_a_memory_reading_falls_back_loudly() {
        assert!(backend::gpu_memory(pbip_config::Device::Cuda(Some(0))).is_none());
    }
}
