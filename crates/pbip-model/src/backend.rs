//! The compute backends compiled into this build, and the burn [`Device`] for each.
//!
//! The model has one code path over burn's run-time [`Device`]; what differs between builds is
//! which backends exist. `flex` (pure Rust, CPU) is always there; the others are cargo features:
//!
//! | device         | backend                                  | cargo feature |
//! |----------------|------------------------------------------|---------------|
//! | `cpu`          | burn-flex (vendored, pbip's CPU kernels) | (always)      |
//! | `tch-cpu`      | libtorch on the CPU through burn-tch     | `tch`         |
//! | `cuda[:N]`     | libtorch CUDA (`tch`) or burn's CubeCL CUDA (`cuda`) | `tch` or `cuda` |
//! | `wgpu[:N]`     | burn-wgpu (Vulkan / Metal)               | `wgpu`        |
//!
//! A device whose backend is not compiled in is an error naming the feature and the build
//! command, never a silent fall back to the CPU.

use burn::tensor::Device;

/// Which backend a device runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// burn-flex on the CPU (always compiled).
    Flex,
    /// libtorch's CPU kernels (`tch` feature).
    TchCpu,
    /// An NVIDIA GPU: libtorch CUDA with the `tch` feature, else burn's `cuda` backend.
    Cuda,
    /// A GPU through wgpu (`wgpu` feature).
    Wgpu,
}

/// A backend that cannot be used in this build or on this machine.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend is not compiled into this binary.
    #[error(
        "device `{device}` needs a pbip built with the `{feature}` cargo feature: {build}; \
         `pbip doctor` lists what this build has"
    )]
    NotCompiled {
        /// The device asked for.
        device: String,
        /// The cargo feature that provides it.
        feature: &'static str,
        /// The command that builds it.
        build: &'static str,
    },
    /// The backend is compiled in but the device is not there.
    #[error("device `{device}`: {message}")]
    Unavailable {
        /// The device asked for.
        device: String,
        /// What is missing.
        message: String,
    },
}

#[cfg_attr(feature = "tch", allow(dead_code))]
const TCH_BUILD: &str = "LIBTORCH_USE_PYTORCH=1 cargo build --release -p pbip --features tch \
     (with a python on PATH whose torch is 2.9.0; see README, GPU)";
#[cfg_attr(feature = "wgpu", allow(dead_code))]
const WGPU_BUILD: &str = "cargo build --release -p pbip --features wgpu";

/// One compiled-in backend as `pbip doctor` reports it.
#[derive(Debug, Clone)]
pub struct BackendInfo {
    /// Device names it serves (`cpu`, `tch-cpu`, `cuda[:N]`, `wgpu[:N]`).
    pub devices: &'static str,
    /// What it is.
    pub description: String,
    /// Whether this binary has it.
    pub compiled: bool,
    /// Visible devices or why there are none (only for compiled GPU backends).
    pub detail: Option<String>,
}

/// Every backend pbip knows, compiled in or not.
pub fn backends() -> Vec<BackendInfo> {
    vec![
        BackendInfo {
            devices: "cpu",
            description: "burn-flex (pure Rust, vendored with pbip's kernels)".into(),
            compiled: true,
            detail: Some(format!(
                "{} CPU threads",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            )),
        },
        BackendInfo {
            devices: "tch-cpu, cuda[:N]",
            description: format!(
                "libtorch {} through burn-tch (cargo feature `tch`)",
                tch_impl::LIBTORCH_VERSION
            ),
            compiled: cfg!(feature = "tch"),
            detail: tch_impl::detail(),
        },
        BackendInfo {
            devices: "cuda[:N]",
            description: "burn CubeCL CUDA (cargo feature `cuda`)".into(),
            compiled: cfg!(feature = "cuda"),
            detail: None,
        },
        BackendInfo {
            devices: "wgpu[:N]",
            description: "burn wgpu: Vulkan / Metal (cargo feature `wgpu`)".into(),
            compiled: cfg!(feature = "wgpu"),
            detail: None,
        },
    ]
}

/// The burn device for `kind` (and GPU `index`, default 0). `name` is the user's spelling, for
/// messages.
pub fn device(kind: BackendKind, index: Option<usize>, name: &str) -> Result<Device, BackendError> {
    match kind {
        BackendKind::Flex => Ok(Device::flex()),
        BackendKind::TchCpu => tch_impl::cpu(name),
        BackendKind::Cuda => cuda(index, name),
        BackendKind::Wgpu => wgpu(index, name),
    }
}

#[cfg(feature = "tch")]
fn cuda(index: Option<usize>, name: &str) -> Result<Device, BackendError> {
    tch_impl::cuda(index, name)
}

#[cfg(all(feature = "cuda", not(feature = "tch")))]
fn cuda(index: Option<usize>, _name: &str) -> Result<Device, BackendError> {
    Ok(Device::cuda(index.unwrap_or(0)))
}

#[cfg(not(any(feature = "tch", feature = "cuda")))]
fn cuda(_index: Option<usize>, name: &str) -> Result<Device, BackendError> {
    Err(BackendError::NotCompiled {
        device: name.into(),
        feature: "tch",
        build: TCH_BUILD,
    })
}

#[cfg(feature = "wgpu")]
fn wgpu(index: Option<usize>, _name: &str) -> Result<Device, BackendError> {
    use burn::tensor::DeviceKind;
    Ok(Device::wgpu(match index {
        Some(i) => DeviceKind::DiscreteGpu(i),
        None => DeviceKind::DefaultDevice,
    }))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu(_index: Option<usize>, name: &str) -> Result<Device, BackendError> {
    Err(BackendError::NotCompiled {
        device: name.into(),
        feature: "wgpu",
        build: WGPU_BUILD,
    })
}

/// The GPU backend `device: gpu` means: CUDA when the build has it (`tch` or `cuda`), else wgpu
/// (an error then names the features when neither is compiled in).
pub fn first_gpu_kind() -> BackendKind {
    if cfg!(any(feature = "tch", feature = "cuda")) || !cfg!(feature = "wgpu") {
        BackendKind::Cuda
    } else {
        BackendKind::Wgpu
    }
}

/// The burn device for a configured `device:` (see [`pbip_config::Device`] for the spellings).
pub fn device_for(choice: pbip_config::Device) -> Result<Device, BackendError> {
    let (kind, index) = kind_of(choice);
    device(kind, index, &choice.to_string())
}

/// The backend (and GPU index) a `device:` choice runs on in this build.
pub fn kind_of(choice: pbip_config::Device) -> (BackendKind, Option<usize>) {
    use pbip_config::Device as D;
    match choice {
        D::Cpu => (BackendKind::Flex, None),
        D::TchCpu => (BackendKind::TchCpu, None),
        D::Cuda(i) => (BackendKind::Cuda, i),
        D::Wgpu(i) => (BackendKind::Wgpu, i),
        D::Gpu => (first_gpu_kind(), None),
    }
}

impl BackendKind {
    /// Whether the backend computes in bf16 ([`crate::Precision::Bf16`]): flex (through f32
    /// conversions), libtorch CPU and CUDA, CubeCL CUDA do; wgpu does not (WGSL has no bf16).
    pub fn supports_bf16(self) -> bool {
        !matches!(self, BackendKind::Wgpu)
    }
}

/// Free and total memory of a GPU, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuMemory {
    /// Bytes free now (device-wide: other processes' allocations count as used).
    pub free_bytes: u64,
    /// Bytes on the device.
    pub total_bytes: u64,
}

/// The memory of the GPU a configured `device:` names, when this build can read it: libtorch
/// CUDA devices (`tch` feature, through the CUDA runtime's `cudaMemGetInfo`). `None` for the CPU
/// backends, wgpu, burn's CubeCL CUDA, an absent device, or a CUDA runtime that cannot be loaded.
pub fn gpu_memory(choice: pbip_config::Device) -> Option<GpuMemory> {
    use pbip_config::Device as D;
    match choice {
        D::Cuda(i) => tch_impl::memory(i.unwrap_or(0)),
        D::Gpu if first_gpu_kind() == BackendKind::Cuda => tch_impl::memory(0),
        _ => None,
    }
}

/// The burn device named `name` (a `device:` spelling), for tests and benchmarks that take it
/// from the environment.
pub fn device_named(name: &str) -> Result<Device, BackendError> {
    let choice: pbip_config::Device =
        name.parse()
            .map_err(|message: String| BackendError::Unavailable {
                device: name.into(),
                message,
            })?;
    device_for(choice)
}

#[cfg(feature = "tch")]
#[allow(deprecated)] // burn-tch is deprecated upstream; it is the CUDA route that builds offline
mod tch_impl {
    use super::BackendError;
    use burn::tensor::Device;

    /// The libtorch version this build links (torch-sys 0.22 requires it).
    pub const LIBTORCH_VERSION: &str = "2.9.0";

    pub fn cpu(_name: &str) -> Result<Device, BackendError> {
        Ok(Device::libtorch())
    }

    /// libtorch registers its CUDA kernels from `libtorch_cuda.so`'s static initialisers; when the
    /// linker dropped that library as unused (`--as-needed`), CUDA reads as absent. Loading it
    /// explicitly (once; a failure just leaves CUDA absent) makes the wheel's CUDA visible.
    fn load_torch_cuda() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let dir = option_env!("PBIP_LIBTORCH_LIB").unwrap_or("");
            let full = std::path::Path::new(dir).join("libtorch_cuda.so");
            for candidate in [full.as_os_str(), std::ffi::OsStr::new("libtorch_cuda.so")] {
                // SAFETY: loading libtorch's own CUDA library runs its registration code, which
                // is what linking it would have run; the handle is leaked so it stays loaded.
                if let Ok(lib) = unsafe { libloading::Library::new(candidate) } {
                    std::mem::forget(lib);
                    break;
                }
            }
        });
    }

    pub fn cuda_count() -> usize {
        load_torch_cuda();
        usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
    }

    pub fn cuda(index: Option<usize>, name: &str) -> Result<Device, BackendError> {
        let count = cuda_count();
        let i = index.unwrap_or(0);
        if count == 0 {
            return Err(BackendError::Unavailable {
                device: name.into(),
                message: "libtorch sees no CUDA device (no NVIDIA driver, CUDA_VISIBLE_DEVICES \
                          empty, or a CPU-only torch build); `pbip doctor` shows what it found"
                    .into(),
            });
        }
        if i >= count {
            return Err(BackendError::Unavailable {
                device: name.into(),
                message: format!(
                    "there are {count} CUDA device(s): cuda:0 … cuda:{}",
                    count - 1
                ),
            });
        }
        Ok(Device::libtorch_cuda(i))
    }

    /// The CUDA runtime libtorch loaded (libtorch_cuda links it; opening it by its soname returns
    /// the copy already in the process).
    fn cudart() -> Option<&'static libloading::Library> {
        static LIB: std::sync::OnceLock<Option<libloading::Library>> = std::sync::OnceLock::new();
        LIB.get_or_init(|| {
            load_torch_cuda();
            [
                "libcudart.so.12",
                "libcudart.so.13",
                "libcudart.so.11.0",
                "libcudart.so",
            ]
            .into_iter()
            // SAFETY: the CUDA runtime's initialisers are what libtorch_cuda already ran.
            .find_map(|name| unsafe { libloading::Library::new(name) }.ok())
        })
        .as_ref()
    }

    pub fn memory(index: usize) -> Option<super::GpuMemory> {
        if index >= cuda_count() {
            return None;
        }
        let lib = cudart()?;
        let device = i32::try_from(index).ok()?;
        // SAFETY: the signatures are the CUDA runtime API's (cudaError_t is a C int); the
        // previous current device is restored before returning.
        unsafe {
            let get_device = lib
                .get::<unsafe extern "C" fn(*mut i32) -> i32>(b"cudaGetDevice\0")
                .ok()?;
            let set_device = lib
                .get::<unsafe extern "C" fn(i32) -> i32>(b"cudaSetDevice\0")
                .ok()?;
            let mem_get_info = lib
                .get::<unsafe extern "C" fn(*mut usize, *mut usize) -> i32>(b"cudaMemGetInfo\0")
                .ok()?;
            let mut previous = 0i32;
            if get_device(&mut previous) != 0 || set_device(device) != 0 {
                return None;
            }
            let (mut free, mut total) = (0usize, 0usize);
            let rc = mem_get_info(&mut free, &mut total);
            set_device(previous);
            (rc == 0).then_some(super::GpuMemory {
                free_bytes: free as u64,
                total_bytes: total as u64,
            })
        }
    }

    pub fn detail() -> Option<String> {
        let n = cuda_count();
        Some(if n == 0 {
            format!(
                "no CUDA device visible; libtorch from {}",
                option_env!("PBIP_LIBTORCH_LIB").unwrap_or("(unknown)")
            )
        } else {
            let free: Vec<String> = (0..n)
                .filter_map(|i| {
                    memory(i).map(|m| {
                        format!(
                            "cuda:{i} {:.1} of {:.1} GiB free",
                            m.free_bytes as f64 / (1u64 << 30) as f64,
                            m.total_bytes as f64 / (1u64 << 30) as f64
                        )
                    })
                })
                .collect();
            format!(
                "{n} CUDA device(s) (cuda:0 … cuda:{}{}), cuDNN {}; libtorch from {}",
                n - 1,
                if free.is_empty() {
                    String::new()
                } else {
                    format!("; {}", free.join(", "))
                },
                if tch::Cuda::cudnn_is_available() {
                    "available"
                } else {
                    "absent"
                },
                option_env!("PBIP_LIBTORCH_LIB").unwrap_or("(unknown)")
            )
        })
    }
}

#[cfg(not(feature = "tch"))]
mod tch_impl {
    use super::{BackendError, TCH_BUILD};
    use burn::tensor::Device;

    pub const LIBTORCH_VERSION: &str = "2.9.0";

    pub fn cpu(name: &str) -> Result<Device, BackendError> {
        Err(BackendError::NotCompiled {
            device: name.into(),
            feature: "tch",
            build: TCH_BUILD,
        })
    }

    pub fn detail() -> Option<String> {
        None
    }

    pub fn memory(_index: usize) -> Option<super::GpuMemory> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flex_is_always_there() {
        assert!(device(BackendKind::Flex, None, "cpu").is_ok());
        assert!(backends()[0].compiled);
    }

    #[cfg(not(feature = "tch"))]
    #[test]
    fn tch_cpu_without_the_feature_names_the_feature_and_the_command() {
        let e = device(BackendKind::TchCpu, None, "tch-cpu")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("`tch` cargo feature"), "{e}");
        assert!(e.contains("LIBTORCH_USE_PYTORCH=1"), "{e}");
    }

    #[cfg(not(any(feature = "tch", feature = "cuda")))]
    #[test]
    fn cuda_without_a_gpu_backend_is_an_error_not_the_cpu() {
        let e = device(BackendKind::Cuda, Some(1), "cuda:1")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("cuda:1") && e.contains("`tch`"), "{e}");
    }

    #[cfg(feature = "tch")]
    #[test]
    fn tch_cpu_runs_a_matmul() {
        use burn::tensor::{Tensor, TensorData};
        let d = device(BackendKind::TchCpu, None, "tch-cpu").expect("tch-cpu");
        let a: Tensor<2> = Tensor::from_data(TensorData::new(vec![1f32, 2., 3., 4.], [2, 2]), &d);
        let v: Vec<f32> = a
            .clone()
            .matmul(a)
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32");
        assert_eq!(v, vec![7., 10., 15., 22.]);
    }
}
