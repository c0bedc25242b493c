//! `RemoteError` (`proto/sluice/v1/errors.proto`) carried inside Ballista's
//! free-text failure messages.
//!
//! Ballista reports a failed task to the scheduler, and a failed job to the
//! client, as a string it builds itself (`"Job failed due to stage 2 failed:
//! Task failed due to runtime execution error: …{error:?}"`). Sluice puts the
//! encoded message into that string between two markers; the receiving side
//! finds the markers and decodes the message, so the error arrives as a type
//! whatever Ballista wrapped around it.
//!
//! ```text
//!  executor: DataFusionError ──encode──► "…⟨sluice.v1.RemoteError:BASE64⟩…" ──► scheduler ──► client
//!  client:   find the markers ──decode──► RemoteError ──► DataFusionError (sluice_sql::remote_error)
//! ```

use base64::Engine as _;
use prost::Message as _;

pub use crate::pb::{
    ArrowErrorKind, ErrorClass as ErrorClassPb, ErrorKind, ErrorLayer, RemoteError,
};

const OPEN: &str = "[[sluice.v1.RemoteError:";
const CLOSE: &str = "]]";

/// `error` as text to embed in a message: the markers around the base64 of
/// its protobuf encoding. Only base64 characters between the markers, so
/// Rust's `{:?}` formatting (which Ballista uses) leaves it unchanged.
pub fn to_text(error: &RemoteError) -> String {
    let bytes = error.encode_to_vec();
    format!("{OPEN}{}{CLOSE}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The first `RemoteError` embedded in `text`, if any (a message that does
/// not decode is ignored: it was not ours).
pub fn find_in(text: &str) -> Option<RemoteError> {
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let body = &rest[start + OPEN.len()..];
        let end = body.find(CLOSE)?;
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&body[..end])
            && let Ok(error) = RemoteError::decode(bytes.as_slice())
        {
            return Some(error);
        }
        rest = &body[end..];
    }
    None
}

impl From<crate::ErrorClass> for ErrorClassPb {
    fn from(c: crate::ErrorClass) -> Self {
        match c {
            crate::ErrorClass::User => ErrorClassPb::User,
            crate::ErrorClass::External => ErrorClassPb::External,
            crate::ErrorClass::Internal => ErrorClassPb::Internal,
        }
    }
}

impl RemoteError {
    /// The error's class (`Internal` when the sender did not say).
    pub fn error_class(&self) -> crate::ErrorClass {
        match self.class() {
            ErrorClassPb::User => crate::ErrorClass::User,
            ErrorClassPb::External => crate::ErrorClass::External,
            ErrorClassPb::Internal | ErrorClassPb::Unspecified => crate::ErrorClass::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RemoteError {
        RemoteError {
            layers: vec![ErrorLayer {
                kind: ErrorKind::Execution as i32,
                message: "boom \"quoted\"\nsecond line".into(),
                arrow_kind: 0,
            }],
            class: ErrorClassPb::User as i32,
            retryable: false,
            origin: "executor".into(),
        }
    }

    #[test]
    fn survives_debug_formatting_and_wrapping() {
        let text = to_text(&sample());
        // Ballista formats the error with {:?} inside its own sentences.
        let wrapped = format!(
            "Job 1 failed: Job failed due to stage 2 failed: Task failed due to runtime execution error: {:?}\n",
            format!("DataFusionError(External({text}))")
        );
        assert_eq!(find_in(&wrapped), Some(sample()));
    }

    #[test]
    fn text_without_a_message_or_with_a_broken_one_has_none() {
        assert_eq!(find_in("Job failed: plain text"), None);
        assert_eq!(find_in("[[sluice.v1.RemoteError:not base64!]]"), None);
        assert_eq!(find_in("[[sluice.v1.RemoteError:AAAA"), None);
        let good = to_text(&sample());
        assert_eq!(find_in(&format!("[[sluice.v1.RemoteError:%%]] then {good}")), Some(sample()));
    }
}
