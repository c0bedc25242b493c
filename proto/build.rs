//! Compiles Sluice's wire contract (`proto/sluice/v1/*.proto`) into
//! `OUT_DIR` with prost. Needs `protoc` (Debian: protobuf-compiler).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/sluice/v1/errors.proto",
        "proto/sluice/v1/plans.proto",
        "proto/sluice/v1/tables.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    prost_build::Config::new().compile_protos(&files, &["proto"])?;
    Ok(())
}
