//! With the `tch` feature, torch-sys reports the libtorch folder it linked against
//! (`DEP_TCH_LIBTORCH_LIB`); put it in the rpath of this crate's test and bench binaries so they
//! run without LD_LIBRARY_PATH, and hand it to the code (`PBIP_LIBTORCH_LIB`) for `pbip doctor` and
//! for loading libtorch's CUDA library.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:rustc-env=PBIP_LIBTORCH_LIB={dir}");
    }
}
