//! The `sluice.*` session options.
//!
//! They are a DataFusion [`ConfigExtension`], so `SET sluice.x = y`, the
//! CLI's `--set sluice.x=y` and Ballista's key/value transport all reach them.
//! Ballista applies client keys on the scheduler and executors with errors
//! swallowed, so these options must be registered in all three places
//! ([`crate::session::cluster_session_config`] does it).
//!
//! The `skew.*` group configures hot-key salting. Its values are validated
//! here and travel with every job; the salting planner reads them.

use std::any::Any;

use datafusion::common::config::{ConfigEntry, ConfigExtension, ExtensionOptions};
use datafusion::error::{DataFusionError, Result};

/// Per-query Sluice options (`sluice.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct SluiceOptions {
    /// `sluice.skew.enabled`: detect hot keys and salt them.
    pub skew_enabled: bool,
    /// `sluice.skew.hot_key_share`: a key is hot when it holds more than this
    /// share of its input's rows (0 < share < 1).
    pub skew_hot_key_share: f64,
    /// `sluice.skew.buckets`: number of salt buckets a hot key is spread over
    /// (at most the join's shuffle partition count).
    pub skew_buckets: u32,
    /// `sluice.memory_tables.inline_max_bytes`: in-memory tables up to this
    /// size travel inside the plan (see [`crate::inline`]).
    pub inline_max_bytes: usize,
    /// `sluice.memory_tables.stage_url`: where larger in-memory tables are
    /// written for executors to read (a folder or `s3://` prefix every
    /// executor can read); empty: larger tables are an error.
    pub stage_url: String,
    /// `sluice.planner.static_for_adaptive_hazards`: a job of a shape
    /// Ballista's adaptive planner cannot finish runs on its static planner
    /// (`crate::cluster_plan::adaptive_hazard`); false keeps the adaptive
    /// planner (to reproduce the upstream bug).
    pub static_for_adaptive_hazards: bool,
    /// W3C `traceparent` of the span a job belongs to (set by the
    /// scheduler for its jobs when traces are on; executors put their task
    /// spans under it).
    pub trace_parent: String,
}

impl Default for SluiceOptions {
    fn default() -> Self {
        Self {
            skew_enabled: true,
            skew_hot_key_share: 0.01,
            skew_buckets: 32,
            inline_max_bytes: crate::inline::DEFAULT_INLINE_MAX_BYTES,
            stage_url: String::new(),
            static_for_adaptive_hazards: true,
            trace_parent: String::new(),
        }
    }
}

const KEYS: [(&str, &str); 7] = [
    ("skew.enabled", "Detect hot join/grouping keys and salt them (true|false)."),
    ("skew.hot_key_share", "A key is hot above this share of its input's rows, in (0, 1)."),
    (
        "skew.buckets",
        "Salt buckets a hot key is spread over, 2..=1024 (at most one per shuffle partition).",
    ),
    (
        "memory_tables.inline_max_bytes",
        "In-memory tables up to this many bytes travel inside the plan to the cluster.",
    ),
    (
        "memory_tables.stage_url",
        "Folder or s3:// prefix every executor can read, where larger in-memory tables are written for a query (empty: they are an error).",
    ),
    (
        "planner.static_for_adaptive_hazards",
        "Run a job whose shape Ballista's adaptive planner cannot finish (a sort or window over a UNION, a sort by a dictionary column, a recursive query) on its static planner (true|false).",
    ),
    (
        "trace.parent",
        "W3C traceparent of the span a job belongs to: executors put their task spans under it (set by the scheduler when traces are on).",
    ),
];

impl ConfigExtension for SluiceOptions {
    const PREFIX: &'static str = "sluice";
}

fn invalid(key: &str, value: &str, expected: &str) -> DataFusionError {
    DataFusionError::Configuration(format!(
        "invalid value '{value}' for sluice.{key}: expected {expected}"
    ))
}

impl ExtensionOptions for SluiceOptions {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let v = value.trim();
        match key {
            "skew.enabled" => {
                self.skew_enabled = v
                    .to_ascii_lowercase()
                    .parse()
                    .map_err(|_| invalid(key, value, "true or false"))?;
            }
            "skew.hot_key_share" => {
                let share: f64 =
                    v.parse().map_err(|_| invalid(key, value, "a number in (0, 1)"))?;
                if !(share > 0.0 && share < 1.0) {
                    return Err(invalid(key, value, "a number in (0, 1)"));
                }
                self.skew_hot_key_share = share;
            }
            "skew.buckets" => {
                let buckets: u32 =
                    v.parse().map_err(|_| invalid(key, value, "an integer in 2..=1024"))?;
                if !(2..=1024).contains(&buckets) {
                    return Err(invalid(key, value, "an integer in 2..=1024"));
                }
                self.skew_buckets = buckets;
            }
            "memory_tables.inline_max_bytes" => {
                self.inline_max_bytes = v
                    .parse()
                    .map_err(|_| invalid(key, value, "a number of bytes, e.g. 4194304"))?;
            }
            "memory_tables.stage_url" => self.stage_url = v.to_string(),
            "trace.parent" => self.trace_parent = v.to_string(),
            "planner.static_for_adaptive_hazards" => {
                self.static_for_adaptive_hazards = v
                    .to_ascii_lowercase()
                    .parse()
                    .map_err(|_| invalid(key, value, "true or false"))?;
            }
            _ => {
                let known: Vec<String> = KEYS.iter().map(|(k, _)| format!("sluice.{k}")).collect();
                return Err(DataFusionError::Configuration(format!(
                    "unknown setting sluice.{key}; known sluice settings: {}",
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        let values = [
            self.skew_enabled.to_string(),
            self.skew_hot_key_share.to_string(),
            self.skew_buckets.to_string(),
            self.inline_max_bytes.to_string(),
            self.stage_url.clone(),
            self.static_for_adaptive_hazards.to_string(),
            self.trace_parent.clone(),
        ];
        KEYS.iter()
            .zip(values)
            .map(|((key, description), value)| ConfigEntry {
                key: format!("{}.{key}", Self::PREFIX),
                value: Some(value),
                description,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionConfig;

    use super::*;

    #[test]
    fn settings_round_trip_through_key_value_pairs() {
        let mut config = SessionConfig::new().with_option_extension(SluiceOptions::default());
        config.options_mut().set("sluice.skew.buckets", "32").expect("valid");
        config.options_mut().set("sluice.skew.enabled", "FALSE").expect("valid");
        let entries = config.options().entries();
        let mut other = SessionConfig::new().with_option_extension(SluiceOptions::default());
        for e in entries.iter().filter(|e| e.key.starts_with("sluice.")) {
            let value = e.value.as_deref().expect("set");
            other.options_mut().set(&e.key, value).expect("round trip");
        }
        let opts = other.options().extensions.get::<SluiceOptions>().expect("registered");
        assert_eq!(opts.skew_buckets, 32);
        assert!(!opts.skew_enabled);
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        let mut config = SessionConfig::new().with_option_extension(SluiceOptions::default());
        let err = config.options_mut().set("sluice.nope", "1").expect_err("unknown");
        assert!(err.to_string().contains("unknown setting sluice.nope"), "{err}");
        let err = config.options_mut().set("sluice.skew.buckets", "1").expect_err("range");
        assert!(err.to_string().contains("2..=1024"), "{err}");
        let err = config.options_mut().set("sluice.skew.hot_key_share", "1.5").expect_err("range");
        assert!(err.to_string().contains("(0, 1)"), "{err}");
    }
}

/// The `sluice.*` options of a session (defaults when not registered).
pub fn of_session(ctx: &datafusion::prelude::SessionContext) -> SluiceOptions {
    ctx.state().config().options().extensions.get::<SluiceOptions>().cloned().unwrap_or_default()
}
