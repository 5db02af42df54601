//! Compiles `proto/` with protox (pure Rust: no system `protoc`), writes the
//! file descriptor set that server reflection serves, and generates the
//! tonic clients and servers.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let proto_file = proto_root.join("switchboard/v1/switchboard.proto");
    // protox prints no rerun-if-changed of its own.
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let file_descriptors = protox::compile([&proto_file], [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // compile_fds does not write the descriptor set reflection needs.
    std::fs::write(
        out_dir.join("switchboard_descriptor.bin"),
        file_descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(file_descriptors)?;
    Ok(())
}
