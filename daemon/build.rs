//! Generates the gRPC plane's code from proto/sluice/v1/sluice.proto at
//! build time, with protox (a protobuf compiler in Rust) instead of a
//! system protoc: the README's two commands keep working on a fresh
//! machine, and the .proto stays the one source (no generated copy to
//! drift from it). The descriptor set is written beside the code for
//! server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let file = root.join("sluice/v1/sluice.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("sluice_v1_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        // The client is for tests and examples in Rust; without the
        // transport (the daemon has no tonic channel): they pass one in.
        .build_client(true)
        .build_transport(false)
        // Payloads stay `bytes::Bytes`: handed to the spool without a copy.
        .bytes(".sluice.v1")
        .compile_fds(fds)?;
    Ok(())
}
