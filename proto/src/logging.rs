//! Log output of every Sluice binary: `tracing` with text or JSON lines on
//! stderr, filtered by `RUST_LOG` (default: `info` for Sluice and Ballista,
//! `warn` for everything else).
//!
//! Ballista logs through the `log` crate; `tracing-subscriber` forwards those
//! records, so one filter and one format cover both.

use std::str::FromStr;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format '{other}'; expected text or json")),
        }
    }
}

/// The default filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "warn,sluice=info,sluice_scheduler=info,sluice_executor=info,sluice_client=info,ballista=info,ballista_scheduler=info,ballista_executor=info,ballista_core=warn";

/// Installs the global subscriber. Safe to call twice (the second call is a
/// no-op), which embedded clusters rely on.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _already_set = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
