//! Compiles Sluice's wire contract (`proto/sluice/v1/*.proto`) into
//! `OUT_DIR` with prost, and the gRPC services with tonic. Needs `protoc`
//! (Debian: protobuf-compiler).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/sluice/v1/errors.proto",
        "proto/sluice/v1/plans.proto",
        "proto/sluice/v1/tables.proto",
        "proto/sluice/v1/backfill.proto",
        "proto/sluice/v1/catalog.proto",
        "proto/sluice/v1/drain.proto",
        // KEDA's external scaler protocol (served by the leader scheduler).
        "proto/externalscaler/externalscaler.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&files, &["proto"])?;
    Ok(())
}
