//! How every Sluice process builds its DataFusion session.
//!
//! ```text
//!  client (sluice sql)            scheduler                       executor
//!  cluster_session_config()  ──►  cluster_session_config()  ──►  cluster_session_config()
//!   + --set KEY=VALUE  ── key/value pairs travel with the job ──►  applied on each side
//!  client_state()                 scheduler_session_state()       executor_runtime_env()
//! ```
//!
//! All three register the same option extensions (Ballista's `ballista.*`,
//! object-store `s3.*`, Sluice's `sluice.*`), so a key set on the client means
//! the same thing on every process. Any change to defaults here changes them
//! cluster-wide.

use std::path::Path;
use std::sync::Arc;

use ballista_core::extension::{
    SessionConfigExt, ballista_aggregate_functions, ballista_scalar_functions,
    ballista_window_functions,
};
use ballista_core::object_store::S3Options;
use ballista_core::optimizer::ballista_default_optimizer_rules;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SessionState;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::SessionConfig;

use crate::error::{Error, Result};
use crate::options::SluiceOptions;
use crate::udf;

/// Default number of partitions a cluster query is planned with.
///
/// Ballista's own default (16) multiplies tasks, shuffle files and scheduling
/// round-trips; on small clusters that overhead dominates (see
/// `benchmarks/README.md`). Override with
/// `--set datafusion.execution.target_partitions=N`.
pub const DEFAULT_CLUSTER_TARGET_PARTITIONS: usize = 4;

/// The session configuration of a cluster query, identical on client,
/// scheduler and executor.
pub fn cluster_session_config() -> SessionConfig {
    SessionConfig::new_with_ballista()
        .with_option_extension(S3Options::default())
        .with_option_extension(SluiceOptions::default())
        .with_information_schema(true)
        .with_target_partitions(DEFAULT_CLUSTER_TARGET_PARTITIONS)
        // Ballista turns this off so that uncorrelated scalar subqueries
        // become joins (its `ScalarSubqueryExec` cannot cross stages), but
        // the join form gives wrong answers (`SELECT (SELECT DISTINCT 42 …)`
        // returned NULL and 42) and errors where DataFusion reports "more than
        // one row". Sluice's client evaluates such subqueries first, each as
        // a job of its own, and ships their values (`client::planner`).
        .set_bool("datafusion.optimizer.enable_physical_uncorrelated_scalar_subquery", true)
}

/// Ballista's hook for the gRPC endpoints it builds (to the scheduler, to
/// executors' Flight ports), made to speak the cluster's mutual TLS.
pub fn endpoint_override(
    tls: &sluice_proto::tls::ClusterTls,
) -> ballista_core::extension::EndpointOverrideFn {
    let tls = tls.clone();
    Arc::new(move |endpoint| tls.secure_endpoint(endpoint))
}

/// `config` whose Ballista clients (shuffle and result fetches, calls to the
/// scheduler) use the cluster's mutual TLS, when there is one.
pub fn with_cluster_tls(
    config: SessionConfig,
    tls: Option<&sluice_proto::tls::ClusterTls>,
) -> SessionConfig {
    match tls {
        Some(tls) => {
            config.with_ballista_override_create_grpc_client_endpoint(endpoint_override(tls))
        }
        None => config,
    }
}

/// The reference engine's configuration: plain single-process DataFusion
/// with its own defaults (all cores), plus the `sluice.*` options so that the
/// same `--set` lines are accepted by both engines.
pub fn local_session_config() -> SessionConfig {
    SessionConfig::new()
        .with_option_extension(S3Options::default())
        .with_option_extension(SluiceOptions::default())
        .with_information_schema(true)
}

/// A runtime environment whose object-store registry serves local files and
/// `s3://` URLs configured by the session's `s3.*` options (or the standard
/// `AWS_*` environment variables).
pub fn runtime_env(config: &SessionConfig, temp_dir: Option<&Path>) -> DfResult<Arc<RuntimeEnv>> {
    let s3 = config.options().extensions.get::<S3Options>().cloned().unwrap_or_default();
    let mut builder = RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(crate::storage::ObjectStores::new(s3)));
    if let Some(dir) = temp_dir {
        builder = builder.with_temp_file_path(dir);
    }
    Ok(Arc::new(builder.build()?))
}

/// The scheduler's session builder: Ballista's default rules and functions,
/// plus Sluice's runtime environment.
pub fn scheduler_session_state(config: SessionConfig) -> DfResult<SessionState> {
    let runtime = runtime_env(&config, None)?;
    Ok(SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_optimizer_rules(ballista_default_optimizer_rules())
        .with_scalar_functions(
            ballista_scalar_functions().into_iter().chain(udf::scalar_functions()).collect(),
        )
        .with_aggregate_functions(
            ballista_aggregate_functions().into_iter().chain(udf::aggregate_functions()).collect(),
        )
        .with_window_functions({
            let functions = ballista_window_functions();
            let wrapped = udf::ignore_nulls::wrappers(&functions);
            functions.into_iter().chain(wrapped).collect()
        })
        .with_query_planner(Arc::new(crate::cluster_plan::ClusterQueryPlanner))
        .build())
}

/// The scheduler's session builder: [`scheduler_session_state`] plus the
/// persistent catalog as the default schema (when one is configured) and
/// `CREATE EXTERNAL TABLE` limited to `roots`.
pub fn scheduler_session_builder(
    catalog: Option<crate::catalog::FileCatalog>,
    roots: crate::roots::DataRoots,
) -> impl Fn(SessionConfig) -> DfResult<SessionState> + Send + Sync + 'static {
    move |config| {
        let mut state = scheduler_session_state(config)?;
        crate::roots::guard_factories(state.table_factories_mut(), &roots);
        crate::roots::guard_plans(&mut state, &roots);
        if let Some(catalog) = &catalog {
            let schema =
                crate::catalog::CatalogSchema::new(catalog.clone(), state.runtime_env().clone())
                    .with_roots(roots.clone());
            let options = &state.config().options().catalog;
            let (default_catalog, default_schema) =
                (options.default_catalog.clone(), options.default_schema.clone());
            let provider = state.catalog_list().catalog(&default_catalog).ok_or_else(|| {
                datafusion::error::DataFusionError::Plan(format!(
                    "no default catalog {default_catalog}"
                ))
            })?;
            provider.register_schema(&default_schema, Arc::new(schema))?;
        }
        Ok(state)
    }
}

/// The client's session state before Ballista upgrades it for a remote
/// scheduler (`SessionContext::remote_with_state`).
pub fn client_state(config: SessionConfig) -> DfResult<SessionState> {
    let runtime = runtime_env(&config, None)?;
    Ok(SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_aggregate_functions(
            datafusion::functions_aggregate::all_default_aggregate_functions()
                .into_iter()
                .chain(udf::aggregate_functions())
                .collect(),
        )
        // Local runs (`--local`) plan partitioned writes in parallel too; a
        // remote session replaces this with Ballista's planner.
        .with_query_planner(Arc::new(crate::write::SluiceQueryPlanner))
        .build())
}

/// Registers Sluice's functions ([`crate::udf`]) on a local context.
pub fn register_functions(ctx: &datafusion::prelude::SessionContext) {
    for f in udf::aggregate_functions() {
        ctx.register_udaf(f.as_ref().clone());
    }
    for f in udf::scalar_functions() {
        ctx.register_udf(f.as_ref().clone());
    }
}

/// Applies `KEY=VALUE` settings to a session configuration.
///
/// Unknown keys are errors here, on the client, because Ballista would drop
/// them silently on the scheduler and executors.
///
/// # Errors
/// [`Error::InvalidSetting`] naming the key when it is unknown, reserved or
/// its value does not parse.
pub fn apply_settings(config: &mut SessionConfig, settings: &[(String, String)]) -> Result<()> {
    for (key, value) in settings {
        let key = key.trim();
        if !key.contains('.') {
            return Err(Error::InvalidSetting {
                key: key.to_string(),
                reason: "expected a namespaced key such as datafusion.execution.batch_size, ballista.shuffle.compression.codec or sluice.skew.enabled".to_string(),
            });
        }
        config.options_mut().set(key, value.trim()).map_err(|e| Error::InvalidSetting {
            key: key.to_string(),
            reason: clean_df_message(&e),
        })?;
    }
    Ok(())
}

/// Parses one `KEY=VALUE` command-line setting.
pub fn parse_setting(input: &str) -> Result<(String, String)> {
    match input.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(Error::InvalidSetting {
            key: input.to_string(),
            reason: "expected KEY=VALUE, e.g. datafusion.execution.batch_size=4096".to_string(),
        }),
    }
}

/// DataFusion nests errors ("Error setting config ... caused by ...") and
/// prefixes each with its kind; keep the innermost message, on one line,
/// without the Rust debug wrapping of parser errors.
pub fn clean_df_message(e: &DataFusionError) -> String {
    let root = match e {
        DataFusionError::Context(_, inner) => inner.find_root(),
        other => other.find_root(),
    };
    let mut msg = root.to_string();
    msg = msg.split("\n\nbacktrace").next().unwrap_or(&msg).to_string();
    loop {
        let before = msg.clone();
        for prefix in [
            "Invalid or Unsupported Configuration: ",
            "Error during planning: ",
            "Execution error: ",
            "SQL error: ",
            "Schema error: ",
            "This feature is not implemented: ",
        ] {
            if let Some(rest) = msg.strip_prefix(prefix) {
                msg = rest.to_string();
            }
        }
        for wrapper in ["ParserError(\"", "TokenizerError(\""] {
            if let Some(rest) = msg.strip_prefix(wrapper) {
                msg = rest.strip_suffix("\")").unwrap_or(rest).to_string();
            }
        }
        if msg == before {
            break;
        }
    }
    // A gRPC status from the scheduler arrives in its Debug form.
    if let Some(start) = msg.find("Status { code: ") {
        let rest = &msg[start + "Status { code: ".len()..];
        if let Some((code, tail)) = rest.split_once(", message: \"") {
            let text = tail.split("\", metadata:").next().unwrap_or(tail).replace("\\\"", "\"");
            msg = format!("{}{text} (gRPC {code})", &msg[..start]);
        }
    }
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn grpc_status_is_shown_as_its_message_and_code() {
        let e = DataFusionError::Execution(
            "Status { code: Unauthenticated, message: \"missing token: send `authorization`\", \
             metadata: MetadataMap { headers: {} }, source: None }"
                .to_string(),
        );
        assert_eq!(
            clean_df_message(&e),
            "missing token: send `authorization` (gRPC Unauthenticated)"
        );
    }

    #[test]
    fn known_keys_of_every_namespace_apply() {
        let mut config = cluster_session_config();
        apply_settings(
            &mut config,
            &settings(&[
                ("datafusion.execution.batch_size", "1234"),
                ("ballista.shuffle.compression.codec", "none"),
                ("sluice.skew.buckets", "8"),
            ]),
        )
        .expect("known keys");
        assert_eq!(config.batch_size(), 1234);
        let opts = config.options().extensions.get::<SluiceOptions>().expect("registered");
        assert_eq!(opts.skew_buckets, 8);
    }

    #[test]
    fn unknown_keys_are_errors_in_every_namespace() {
        for key in ["datafusion.execution.nope", "ballista.nope", "sluice.nope", "nope.x", "nope"] {
            let mut config = cluster_session_config();
            let err = apply_settings(&mut config, &settings(&[(key, "1")])).expect_err(key);
            assert!(err.to_string().contains(key.trim_start_matches("nope.")), "{key}: {err}");
        }
    }

    #[test]
    fn datafusion_messages_are_cleaned_to_one_line() {
        let parse = DataFusionError::SQL(
            Box::new(datafusion::sql::sqlparser::parser::ParserError::ParserError(
                "Expected: an SQL statement, found: SELEC".into(),
            )),
            None,
        );
        assert_eq!(clean_df_message(&parse), "Expected: an SQL statement, found: SELEC");
        let mut config = cluster_session_config();
        let err = config.options_mut().set("datafusion.execution.nope", "1").expect_err("unknown");
        let msg = clean_df_message(&err);
        assert!(!msg.contains('\n') && msg.contains("nope"), "{msg}");
    }

    #[test]
    fn parse_setting_needs_an_equals_sign() {
        assert_eq!(parse_setting("a.b=c=d").expect("ok"), ("a.b".into(), "c=d".into()));
        assert!(parse_setting("a.b").is_err());
        assert!(parse_setting("=x").is_err());
    }
}
