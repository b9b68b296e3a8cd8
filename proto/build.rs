//! Generates the `vidcascade.v1` messages and services from `vidcascade/v1/*.proto`.
//!
//! Uses `protox` (a pure-Rust protobuf compiler) so no system `protoc` is needed,
//! then hands the descriptors to `tonic-prost-build`. The encoded descriptor set,
//! source comments included, is also written to
//! `$OUT_DIR/vidcascade_descriptor.bin` for gRPC server reflection. With the `json` feature,
//! `pbjson-build` adds serde impls in the proto3 JSON mapping.

use std::{env, error::Error, fs, path::PathBuf};

/// Every file of the package, relative to the include root (this crate's directory).
const PROTOS: [&str; 4] = [
    "vidcascade/v1/common.proto",
    "vidcascade/v1/text_encoder.proto",
    "vidcascade/v1/video_stage.proto",
    "vidcascade/v1/gateway.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    // A directory makes cargo rerun when any file below it changes.
    println!("cargo:rerun-if-changed=vidcascade");

    let mut compiler = protox::Compiler::new(["."])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(PROTOS)?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptors = compiler.encode_file_descriptor_set();
    fs::write(out_dir.join("vidcascade_descriptor.bin"), &descriptors)?;

    tonic_prost_build::configure().compile_fds(compiler.file_descriptor_set())?;
    // The `json` feature: proto3 JSON for every message (written to `vidcascade.v1.serde.rs`).
    if env::var_os("CARGO_FEATURE_JSON").is_some() {
        pbjson_build::Builder::new()
            .register_descriptors(&descriptors)?
            .build(&[".vidcascade.v1"])?;
    }
    Ok(())
}
