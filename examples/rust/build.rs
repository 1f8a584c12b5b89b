//! Generates the gRPC client from sluice's .proto, as a vendor's build
//! would: protox compiles it (no system protoc), tonic-prost-build writes
//! the Rust code into OUT_DIR, and src/main.rs includes it.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In a copy of this example: wherever you keep sluice.proto.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = root.join("sluice/v1/sluice.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    // The well-known types it imports (Timestamp, Duration) are built into
    // protox.
    let fds = protox::compile([&file], [&root])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
