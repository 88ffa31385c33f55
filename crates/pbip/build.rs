//! With the `tch` feature, put the libtorch folder torch-sys linked against
//! (`DEP_TCH_LIBTORCH_LIB`) in the binary's rpath, so `pbip` runs without LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
