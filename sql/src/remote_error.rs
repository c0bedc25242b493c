//! DataFusion errors across the cluster: raised on an executor or the
//! scheduler, shown on the client as DataFusion shows them on one process.
//!
//! Ballista turns a failed task into text with `{:?}` and wraps it twice
//! ("Job … failed: Job failed due to stage 2 failed: Task failed due to
//! runtime execution error: DataFusionError(ArrowError(DivideByZero, None))").
//! A user then reads Rust debug output instead of "Arrow error: Divide by
//! zero error", and DataFusion's expected-error patterns no longer match.
//!
//! The executor ([`carry`]) and the scheduler's planner replace such an
//! error by one that carries a [`RemoteError`] (layers of kind + message,
//! the class and the retry hint) in its debug text; the client ([`unwrap`])
//! finds it in the job's failure message and rebuilds the same
//! `DataFusionError` layer by layer, so its `Display` is the original one.
//!
//! Errors Ballista itself acts on are left alone: retryable IO errors and
//! anything holding a `BallistaError` (fetch failures lead to a map-stage
//! rerun, cancellations are not failures).

use std::error::Error as StdError;
use std::fmt;

use ballista_core::error::BallistaError;
use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use sluice_proto::ErrorClass;
use sluice_proto::remote_error::{
    ArrowErrorKind, ErrorClassPb, ErrorKind, ErrorLayer, RemoteError, find_in, to_text,
};

/// `e` as a [`RemoteError`], raised at `origin` ("executor", "scheduler").
pub fn encode(e: &DataFusionError, origin: &str) -> RemoteError {
    let mut layers = Vec::new();
    push_layers(e, &mut layers);
    let (class, retryable) = classify(e);
    RemoteError {
        layers,
        class: ErrorClassPb::from(class) as i32,
        retryable,
        origin: origin.to_string(),
    }
}

fn layer(kind: ErrorKind, message: impl Into<String>) -> ErrorLayer {
    ErrorLayer { kind: kind as i32, message: message.into(), arrow_kind: 0 }
}

fn push_layers(e: &DataFusionError, out: &mut Vec<ErrorLayer>) {
    use DataFusionError as D;
    match e {
        D::Context(ctx, inner) => {
            out.push(layer(ErrorKind::Context, ctx.clone()));
            push_layers(inner, out);
        }
        D::Diagnostic(_, inner) => push_layers(inner, out),
        D::Shared(inner) => push_layers(inner, out),
        D::Collection(errs) => match errs.first() {
            Some(first) => push_layers(first, out),
            None => out.push(layer(ErrorKind::Other, e.to_string())),
        },
        D::ArrowError(a, _) => out.push(arrow_layer(a)),
        D::IoError(io) => out.push(layer(ErrorKind::Io, io.to_string())),
        D::NotImplemented(m) => out.push(layer(ErrorKind::NotImplemented, m.clone())),
        D::Internal(m) => out.push(layer(ErrorKind::Internal, m.clone())),
        D::Plan(m) => out.push(layer(ErrorKind::Plan, m.clone())),
        D::Configuration(m) => out.push(layer(ErrorKind::Configuration, m.clone())),
        D::Execution(m) => out.push(layer(ErrorKind::Execution, m.clone())),
        D::ResourcesExhausted(m) => out.push(layer(ErrorKind::ResourcesExhausted, m.clone())),
        D::Substrait(m) => out.push(layer(ErrorKind::Substrait, m.clone())),
        D::Ffi(m) => out.push(layer(ErrorKind::Ffi, m.clone())),
        D::External(inner) => {
            if let Some(df) = inner.downcast_ref::<DataFusionError>() {
                push_layers(df, out);
            } else if let Some(c) = inner.downcast_ref::<Carried>() {
                out.extend(c.error.layers.iter().cloned());
            } else if let Some(a) = inner.downcast_ref::<ArrowError>() {
                // An operator passing an Arrow error on (a shuffle writer's
                // stream): DataFusion raises it as an Arrow error.
                out.push(arrow_layer(a));
            } else if let Some(b) = inner.downcast_ref::<BallistaError>() {
                match b {
                    BallistaError::ArrowError(a) => out.push(arrow_layer(a)),
                    BallistaError::DataFusionError(df) => push_layers(df, out),
                    other => out.push(layer(ErrorKind::External, other.to_string())),
                }
            } else {
                out.push(layer(ErrorKind::External, inner.to_string()));
            }
        }
        other => out.push(layer(ErrorKind::Other, other.strip_backtrace())),
    }
}

fn arrow_layer(a: &ArrowError) -> ErrorLayer {
    use ArrowErrorKind as K;
    let (kind, message) = match a {
        ArrowError::NotYetImplemented(m) => (K::NotYetImplemented, m.clone()),
        ArrowError::ExternalError(e) => (K::External, e.to_string()),
        ArrowError::CastError(m) => (K::Cast, m.clone()),
        ArrowError::MemoryError(m) => (K::Memory, m.clone()),
        ArrowError::ParseError(m) => (K::Parse, m.clone()),
        ArrowError::SchemaError(m) => (K::Schema, m.clone()),
        ArrowError::ComputeError(m) => (K::Compute, m.clone()),
        ArrowError::ArithmeticOverflow(m) => (K::ArithmeticOverflow, m.clone()),
        ArrowError::DivideByZero => (K::DivideByZero, String::new()),
        ArrowError::AvroError(m) => (K::Avro, m.clone()),
        ArrowError::CsvError(m) => (K::Csv, m.clone()),
        ArrowError::JsonError(m) => (K::Json, m.clone()),
        ArrowError::IoError(m, _) => (K::Io, m.clone()),
        ArrowError::IpcError(m) => (K::Ipc, m.clone()),
        ArrowError::InvalidArgumentError(m) => (K::InvalidArgument, m.clone()),
        ArrowError::ParquetError(m) => (K::Parquet, m.clone()),
        ArrowError::CDataInterface(m) => (K::CDataInterface, m.clone()),
        ArrowError::DictionaryKeyOverflowError => (K::DictionaryKeyOverflow, String::new()),
        ArrowError::RunEndIndexOverflowError => (K::RunEndIndexOverflow, String::new()),
        ArrowError::OffsetOverflowError(n) => (K::OffsetOverflow, n.to_string()),
    };
    ErrorLayer { kind: ErrorKind::Arrow as i32, message, arrow_kind: kind as i32 }
}

/// Who can fix `e`, and whether running it again can succeed.
pub fn classify(e: &DataFusionError) -> (ErrorClass, bool) {
    use DataFusionError as D;
    match e.find_root() {
        D::IoError(_) | D::ObjectStore(_) => (ErrorClass::External, true),
        // An unreadable Parquet file: the store failed mid-read (DataFusion
        // reports a failed footer fetch as a Parquet error holding only the
        // store's message) or the file is damaged. Retried a bounded number
        // of times, as Spark retries any task failure.
        D::ParquetError(_) => (ErrorClass::External, true),
        D::ResourcesExhausted(_) => (ErrorClass::External, false),
        D::Internal(_) | D::ExecutionJoin(_) | D::Ffi(_) => (ErrorClass::Internal, false),
        D::External(inner) => match inner.downcast_ref::<Carried>() {
            Some(c) => (c.error.error_class(), c.error.retryable),
            None => (ErrorClass::Internal, false),
        },
        // Planning errors, bad values in the data (casts, division by
        // zero, overflows), unsupported features: the query must change.
        _ => (ErrorClass::User, false),
    }
}

/// Rebuilds the error `r` describes: the same variants with the same
/// messages, so it displays as it did where it was raised.
pub fn decode(r: &RemoteError) -> DataFusionError {
    let mut layers = r.layers.iter().rev();
    let mut error = match layers.next() {
        Some(root) => root_error(root),
        None => DataFusionError::Execution("an error without a message".to_string()),
    };
    for l in layers {
        error = match l.kind() {
            ErrorKind::Context => DataFusionError::Context(l.message.clone(), Box::new(error)),
            // Only context layers wrap others; anything else is kept as a
            // context line so no text is lost.
            _ => DataFusionError::Context(root_error(l).to_string(), Box::new(error)),
        };
    }
    error
}

fn root_error(l: &ErrorLayer) -> DataFusionError {
    use DataFusionError as D;
    let m = l.message.clone();
    match l.kind() {
        ErrorKind::Arrow => D::ArrowError(Box::new(arrow_error(l)), None),
        ErrorKind::Io => D::IoError(std::io::Error::other(m)),
        ErrorKind::NotImplemented => D::NotImplemented(m),
        ErrorKind::Internal => D::Internal(m),
        ErrorKind::Plan => D::Plan(m),
        ErrorKind::Configuration => D::Configuration(m),
        ErrorKind::Execution => D::Execution(m),
        ErrorKind::ResourcesExhausted => D::ResourcesExhausted(m),
        ErrorKind::Substrait => D::Substrait(m),
        ErrorKind::Ffi => D::Ffi(m),
        // Kinds without a constructor from text keep their whole text.
        ErrorKind::External | ErrorKind::Context | ErrorKind::Other | ErrorKind::Unspecified => {
            D::External(Box::new(Message(m)))
        }
    }
}

fn arrow_error(l: &ErrorLayer) -> ArrowError {
    use ArrowErrorKind as K;
    let m = l.message.clone();
    match l.arrow_kind() {
        K::NotYetImplemented => ArrowError::NotYetImplemented(m),
        K::Cast => ArrowError::CastError(m),
        K::Memory => ArrowError::MemoryError(m),
        K::Parse => ArrowError::ParseError(m),
        K::Schema => ArrowError::SchemaError(m),
        K::Compute => ArrowError::ComputeError(m),
        K::ArithmeticOverflow => ArrowError::ArithmeticOverflow(m),
        K::DivideByZero => ArrowError::DivideByZero,
        K::Avro => ArrowError::AvroError(m),
        K::Csv => ArrowError::CsvError(m),
        K::Json => ArrowError::JsonError(m),
        K::Io => ArrowError::IoError(m.clone(), std::io::Error::other(m)),
        K::Ipc => ArrowError::IpcError(m),
        K::InvalidArgument => ArrowError::InvalidArgumentError(m),
        K::Parquet => ArrowError::ParquetError(m),
        K::CDataInterface => ArrowError::CDataInterface(m),
        K::DictionaryKeyOverflow => ArrowError::DictionaryKeyOverflowError,
        K::RunEndIndexOverflow => ArrowError::RunEndIndexOverflowError,
        K::OffsetOverflow => ArrowError::OffsetOverflowError(m.parse().unwrap_or_default()),
        K::External | K::Unspecified => ArrowError::ExternalError(Box::new(Message(m))),
    }
}

/// A plain message (an external error's text).
#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Message {}

/// An error on its way out of a process: its debug form is the encoded
/// [`RemoteError`], its display the original text followed by it (Ballista
/// puts either into its failure messages).
pub struct Carried {
    error: RemoteError,
    display: String,
}

impl fmt::Debug for Carried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_text(&self.error))
    }
}

impl fmt::Display for Carried {
    /// The original text, then the encoded error: Ballista formats task
    /// errors with `{}` in some paths and `{:?}` in others.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.display, to_text(&self.error))
    }
}

impl StdError for Carried {}

/// Whether Ballista acts on `e` itself (so it must reach Ballista as it
/// is): a retryable IO error, a fetch failure (a map-stage rerun) or a
/// cancellation, wherever in the chain, under any wrapper.
fn ballista_acts_on(e: &DataFusionError) -> bool {
    if matches!(e.find_root(), DataFusionError::IoError(_)) {
        return true;
    }
    let mut source: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(b) = s.downcast_ref::<BallistaError>()
            && ballista_error_acted_on(b)
        {
            return true;
        }
        if let Some(DataFusionError::External(inner)) = s.downcast_ref::<DataFusionError>()
            && let Some(b) = inner.downcast_ref::<BallistaError>()
            && ballista_error_acted_on(b)
        {
            return true;
        }
        source = s.source();
    }
    false
}

fn ballista_error_acted_on(e: &BallistaError) -> bool {
    match e {
        BallistaError::FetchFailed(..)
        | BallistaError::Cancelled
        | BallistaError::IoError(_)
        | BallistaError::TonicError(_)
        | BallistaError::GrpcError(_)
        | BallistaError::GrpcConnectionError(_) => true,
        BallistaError::DataFusionError(inner) => ballista_acts_on(inner),
        _ => false,
    }
}

/// `e` ready to leave the process at `origin`: an error carrying its
/// [`RemoteError`], unless Ballista acts on it (then unchanged).
pub fn carry(e: DataFusionError, origin: &str) -> DataFusionError {
    if ballista_acts_on(&e)
        || matches!(&e, DataFusionError::External(inner) if inner.is::<Carried>())
    {
        return e;
    }
    let error = encode(&e, origin);
    let display = e.strip_backtrace();
    DataFusionError::External(Box::new(Carried { error, display }))
}

/// The error raised in the cluster, when `e` (what Ballista handed the
/// client) carries one; otherwise `e` itself.
pub fn unwrap(e: DataFusionError) -> DataFusionError {
    match remote(&e) {
        Some(r) => decode(&r),
        None => e,
    }
}

/// The [`RemoteError`] `e` carries, if any.
pub fn remote(e: &DataFusionError) -> Option<RemoteError> {
    let mut source: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(c) = s.downcast_ref::<Carried>() {
            return Some(c.error.clone());
        }
        source = s.source();
    }
    find_in(&e.to_string()).or_else(|| find_in(&format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the client sees after Ballista wrapped the carried error.
    fn through_ballista(e: DataFusionError) -> DataFusionError {
        let carried = carry(e, "executor");
        let task = format!(
            "Task failed due to runtime execution error: {:?}",
            BallistaError::DataFusionError(Box::new(carried))
        );
        DataFusionError::Execution(format!(
            "Job abc failed: Job failed due to stage 2 failed: {task}\n"
        ))
    }

    #[test]
    fn errors_display_as_they_were_raised() {
        let cases = vec![
            DataFusionError::ArrowError(Box::new(ArrowError::DivideByZero), None),
            DataFusionError::ArrowError(
                Box::new(ArrowError::CastError(
                    "Cannot cast string 'a' to value of Int64 type".into(),
                )),
                None,
            ),
            DataFusionError::Execution("Arithmetic overflow".into()),
            DataFusionError::Plan("no field named x".into()),
            DataFusionError::Internal("bad state".into()),
            DataFusionError::NotImplemented("this".into()),
            DataFusionError::ResourcesExhausted("Failed to allocate".into()),
            DataFusionError::Context(
                "while reading".into(),
                Box::new(DataFusionError::Execution("inner".into())),
            ),
            DataFusionError::External(Box::new(Message("a UDF's own error".into()))),
        ];
        for e in cases {
            let want = e.strip_backtrace();
            let got = unwrap(through_ballista(e));
            assert_eq!(got.strip_backtrace(), want);
        }
    }

    #[test]
    fn classes_travel_with_the_error() {
        let user =
            through_ballista(DataFusionError::ArrowError(Box::new(ArrowError::DivideByZero), None));
        let r = remote(&user).expect("carried");
        assert_eq!(
            (r.error_class(), r.retryable, r.origin.as_str()),
            (ErrorClass::User, false, "executor")
        );
        let oom = through_ballista(DataFusionError::ResourcesExhausted("x".into()));
        assert_eq!(remote(&oom).expect("carried").error_class(), ErrorClass::External);
        let bug = through_ballista(DataFusionError::Internal("x".into()));
        assert_eq!(remote(&bug).expect("carried").error_class(), ErrorClass::Internal);
    }

    #[test]
    fn errors_ballista_acts_on_pass_unchanged() {
        let io = DataFusionError::IoError(std::io::Error::other("connection reset"));
        assert!(matches!(carry(io, "executor"), DataFusionError::IoError(_)));
        let fetch = DataFusionError::External(Box::new(BallistaError::FetchFailed(
            "e1".into(),
            1,
            0,
            "gone".into(),
        )));
        let kept = carry(fetch, "executor");
        assert!(remote(&kept).is_none(), "{kept:?}");
    }

    #[test]
    fn shared_arrow_errors_are_carried() {
        let e = DataFusionError::Shared(std::sync::Arc::new(DataFusionError::External(Box::new(
            ArrowError::DivideByZero,
        ))));
        assert!(!ballista_acts_on(&e));
        let carried = carry(e, "executor");
        let decoded = decode(&remote(&carried).expect("carried"));
        assert_eq!(decoded.strip_backtrace(), "Arrow error: Divide by zero error");
        // What Ballista's shuffle writer hands on: its own Arrow error.
        let e = DataFusionError::Shared(std::sync::Arc::new(DataFusionError::External(Box::new(
            BallistaError::ArrowError(Box::new(ArrowError::DivideByZero)),
        ))));
        assert!(!ballista_acts_on(&e));
        let decoded = decode(&remote(&carry(e, "executor")).expect("carried"));
        assert_eq!(decoded.strip_backtrace(), "Arrow error: Divide by zero error");
    }

    #[test]
    fn plain_errors_are_returned_as_they_are() {
        let e = DataFusionError::Execution("Job x failed: executor lost".into());
        assert_eq!(unwrap(e).strip_backtrace(), "Execution error: Job x failed: executor lost");
    }
}
