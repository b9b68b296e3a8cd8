//! With the `cuda` feature, tells the linker where `tools/cuda/env.sh` put the CUDA libraries'
//! unversioned names and the libcuda stub (`CUDA_LINK_DIR`): the pip wheels ship only `.so.N`
//! files and no libcuda, and candle links them by bare name. Link-time only: at run time the
//! binary loads the driver's `libcuda.so.1` and the `.so.N` libraries from `LD_LIBRARY_PATH`.

fn main() {
    println!("cargo:rerun-if-env-changed=CUDA_LINK_DIR");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    if let Some(dir) = std::env::var_os("CUDA_LINK_DIR") {
        println!("cargo:rustc-link-search=native={}", dir.to_string_lossy());
    }
}
