//! Types every Sluice process shares on the wire: network addresses and the
//! classification of errors that drives retries and exit codes.
//!
//! This is the lowest crate of the workspace (`proto` ← `sql` ← {`scheduler`,
//! `executor`} ← `client`). Sluice's own protobuf messages are compiled here
//! from `proto/sluice/v1/*.proto` by `build.rs` ([`pb`]); the scheduler and
//! executors otherwise speak Ballista's protocol.

mod addr;
pub mod catalog;
mod error;
pub mod etcd;
pub mod logging;
pub mod remote_error;
pub mod tls;

/// Messages generated from `proto/sluice/v1/*.proto`.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/sluice.v1.rs"));
}

/// KEDA's external scaler protocol (`proto/externalscaler/externalscaler.proto`).
pub mod externalscaler {
    include!(concat!(env!("OUT_DIR"), "/externalscaler.rs"));
}

pub use addr::HostPort;
pub use error::{Error, ErrorClass, Result};

/// Stack size of every Tokio worker thread Sluice creates. DataFusion plans
/// and (de)serialises plans recursively; a backfill's chunk query overflows
/// the 2 MiB default in unoptimised builds.
pub const WORKER_STACK_BYTES: usize = 32 * 1024 * 1024;

/// A multi-threaded Tokio runtime with [`WORKER_STACK_BYTES`] stacks.
///
/// # Errors
/// The I/O error when the runtime cannot start.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    install_crypto();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(WORKER_STACK_BYTES)
        .build()
}

/// Makes ring rustls's process-wide crypto provider (idempotent). Both ring
/// (tonic's TLS) and aws-lc-rs (deltalake's HTTP client) are compiled in,
/// and with two rustls picks neither: the first TLS config built would panic.
pub fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Runs a binary's async `main` on [`runtime`]; exit code 1 when the
/// runtime cannot start.
pub fn block_on_main<F: std::future::Future<Output = std::process::ExitCode>>(
    main: F,
) -> std::process::ExitCode {
    match runtime() {
        Ok(rt) => rt.block_on(main),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Resolves once `flag` holds `true` (a shutdown request); never when its
/// sender is dropped without setting it.
pub async fn until_true(flag: &mut tokio::sync::watch::Receiver<bool>) {
    while !*flag.borrow_and_update() {
        if flag.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Sluice's version, reported by every binary's `--version`.
pub const SLUICE_VERSION: &str = env!("CARGO_PKG_VERSION");
