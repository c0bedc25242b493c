//! `COPY … TO …` on the cluster, as the statement says.
//!
//! Two things go wrong when a `COPY` plan is sent to the scheduler as it is:
//!
//! 1. **Its options are dropped.** datafusion-proto encodes the target, the
//!    partition columns and the file type of a `CopyTo`, not the statement's
//!    `OPTIONS (...)`: `COPY … TO 'x.csv' OPTIONS ('format.has_header'
//!    'false')` wrote a header on the cluster, `single_file_output` and
//!    `execution.keep_partition_by_columns` were ignored.
//! 2. **A relative target is resolved by whichever process writes it.** A
//!    path such as `out/x.parquet` means the client's working directory, as
//!    it does for reads (DataFusion makes a read path absolute where the
//!    statement is planned); executors would write it under their own.
//!
//! The client therefore sends `COPY` as a [`CopyNode`] (a logical extension
//! node holding the whole `CopyTo`, its target made absolute), encoded by
//! [`crate::inline::SluiceLogicalCodec`] as `sluice.v1.CopyTo`; the
//! scheduler's planner turns it back into DataFusion's `CopyTo`
//! ([`restore`]) before planning it.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchemaRef, Result};
use datafusion::datasource::file_format::file_type_to_format;
use datafusion::datasource::file_format::format_as_file_type;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::dml::CopyTo;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use prost::Message as _;
use sluice_proto::pb::CopyTo as CopyToProto;

/// Marks a node encoded by this module.
pub(crate) const MAGIC: &[u8] = b"sluice.v1.CopyTo\0";

/// A whole `CopyTo`, options included, as a logical extension node.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CopyNode {
    pub copy: CopyTo,
}

impl fmt::Debug for CopyNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.copy, f)
    }
}

impl PartialOrd for CopyNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.copy.partial_cmp(&other.copy)
    }
}

impl UserDefinedLogicalNodeCore for CopyNode {
    fn name(&self) -> &str {
        "CopyTo"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![self.copy.input.as_ref()]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.copy.output_schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "CopyTo: format={} output_url={} options: (",
            self.copy.file_type.get_ext(),
            self.copy.output_url
        )?;
        let mut options: Vec<_> = self.copy.options.iter().collect();
        options.sort();
        let shown: Vec<String> = options.iter().map(|(k, v)| format!("{k} {v}")).collect();
        write!(f, "{})", shown.join(", "))
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        let input = inputs
            .pop()
            .ok_or_else(|| DataFusionError::Internal("CopyTo needs one input".to_string()))?;
        Ok(Self { copy: CopyTo { input: Arc::new(input), ..self.copy.clone() } })
    }
}

/// `url` made absolute when it is a relative local path, against this
/// process's working directory.
fn absolute(url: &str) -> Result<String> {
    let is_url = url.contains("://") || url.starts_with("file:");
    let path = std::path::Path::new(url);
    if is_url || path.is_absolute() {
        return Ok(url.to_string());
    }
    let cwd = std::env::current_dir()
        .map_err(|e| DataFusionError::Execution(format!("COPY to the relative path {url}: {e}")))?;
    let mut joined = cwd.join(path).display().to_string();
    // A trailing slash says "a folder"; keep it.
    if url.ends_with('/') && !joined.ends_with('/') {
        joined.push('/');
    }
    Ok(joined)
}

/// The client's side: every `CopyTo` of `plan` as a [`CopyNode`] with an
/// absolute target.
pub fn for_cluster(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up(|node| match node {
        LogicalPlan::Copy(copy) => {
            let copy = CopyTo { output_url: absolute(&copy.output_url)?, ..copy };
            Ok(Transformed::yes(LogicalPlan::Extension(Extension {
                node: Arc::new(CopyNode { copy }),
            })))
        }
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

/// The scheduler's side: every [`CopyNode`] back as DataFusion's `CopyTo`.
///
/// A `COPY` with `OPTIONS` gets `session`'s own format for its file type,
/// as the SQL planner gave it on the client: the decoded format carries a
/// full set of options (the encoding writes defaults), and DataFusion
/// applies statement options to such a format without their `format.`
/// prefix ("Config value \"format\" not found on CsvOptions").
pub fn restore(
    plan: LogicalPlan,
    session: &dyn datafusion::catalog::Session,
) -> Result<LogicalPlan> {
    let formats = session.as_any().downcast_ref::<datafusion::execution::context::SessionState>();
    plan.transform_up(|node| match &node {
        LogicalPlan::Extension(e) => match e.node.as_any().downcast_ref::<CopyNode>() {
            Some(c) => {
                let mut copy = c.copy.clone();
                if !copy.options.is_empty()
                    && let Some(factory) =
                        formats.and_then(|s| s.get_file_format_factory(&copy.file_type.get_ext()))
                {
                    copy.file_type = format_as_file_type(factory);
                }
                Ok(Transformed::yes(LogicalPlan::Copy(copy)))
            }
            None => Ok(Transformed::no(node)),
        },
        _ => Ok(Transformed::no(node)),
    })
    .map(|t| t.data)
}

/// Encodes `node` when it is a [`CopyNode`]; `Ok(false)` otherwise.
pub(crate) fn try_encode(
    node: &Extension,
    buf: &mut Vec<u8>,
    formats: &dyn LogicalExtensionCodec,
) -> Result<bool> {
    let Some(c) = node.node.as_any().downcast_ref::<CopyNode>() else { return Ok(false) };
    let mut file_type = Vec::new();
    formats.try_encode_file_format(&mut file_type, file_type_to_format(&c.copy.file_type)?)?;
    let proto = CopyToProto {
        output_url: c.copy.output_url.clone(),
        partition_by: c.copy.partition_by.clone(),
        options: c.copy.options.clone().into_iter().collect(),
        file_type,
    };
    buf.extend_from_slice(MAGIC);
    proto.encode(buf).map_err(|e| DataFusionError::Internal(format!("encoding COPY: {e}")))?;
    Ok(true)
}

/// Decodes a node [`try_encode`] wrote (`buf` without [`MAGIC`]).
pub(crate) fn decode(
    buf: &[u8],
    inputs: &[LogicalPlan],
    ctx: &TaskContext,
    formats: &dyn LogicalExtensionCodec,
) -> Result<Extension> {
    let proto = CopyToProto::decode(buf)
        .map_err(|e| DataFusionError::Internal(format!("decoding COPY: {e}")))?;
    let [input] = inputs else {
        return Err(DataFusionError::Internal(format!("COPY has one input, got {}", inputs.len())));
    };
    let file_type = format_as_file_type(formats.try_decode_file_format(&proto.file_type, ctx)?);
    let options: HashMap<String, String> = proto.options.into_iter().collect();
    let copy = CopyTo::new(
        Arc::new(input.clone()),
        proto.output_url,
        proto.partition_by,
        file_type,
        options,
    );
    Ok(Extension { node: Arc::new(CopyNode { copy }) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inline::SluiceLogicalCodec;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn copy_options_and_an_absolute_target_survive_the_plan_encoding() {
        let ctx = SessionContext::new();
        let df = ctx
            .sql("COPY (VALUES (1, 'a')) TO 'out/x.csv' STORED AS CSV OPTIONS ('format.has_header' 'false')")
            .await
            .expect("plan");
        let plan = for_cluster(df.logical_plan().clone()).expect("rewrite");
        let codec = SluiceLogicalCodec::default();
        let bytes =
            datafusion_proto::bytes::logical_plan_to_bytes_with_extension_codec(&plan, &codec)
                .expect("encode");
        let back = datafusion_proto::bytes::logical_plan_from_bytes_with_extension_codec(
            &bytes,
            &ctx.task_ctx(),
            &codec,
        )
        .expect("decode");
        let LogicalPlan::Copy(copy) = restore(back, &ctx.state()).expect("restore") else {
            panic!("not a COPY")
        };
        assert_eq!(copy.options.get("format.has_header").map(String::as_str), Some("false"));
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(copy.output_url, cwd.join("out/x.csv").display().to_string());
    }

    #[test]
    fn urls_and_absolute_paths_are_kept() {
        for url in ["s3://b/k/", "file:///tmp/x", "/tmp/x.parquet"] {
            assert_eq!(absolute(url).expect("url"), url);
        }
        assert!(absolute("out/").expect("relative").ends_with("/out/"));
    }
}
