//! Compiles the load tool's own echo proto (the bare tonic ceiling) with
//! protox, the same pure-Rust path as `switchboard-proto`: no system
//! `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto");
    // protox prints no rerun-if-changed of its own.
    println!("cargo:rerun-if-changed={}", proto_root.display());
    let file_descriptors = protox::compile([proto_root.join("echo/v1/echo.proto")], [&proto_root])?;
    tonic_prost_build::configure().compile_fds(file_descriptors)?;
    Ok(())
}
