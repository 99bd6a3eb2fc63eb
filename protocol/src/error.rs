//! The JSON error body every client-visible error uses: `{"detail": msg, "error": {"code": code, "message": msg}}`.
//! `detail` keeps the original module's clients working; `error.code` is the stable part.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub detail: String,
    pub error: ErrorDetail,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> ErrorBody {
        let message = message.into();
        ErrorBody {
            detail: message.clone(),
            error: ErrorDetail {
                code: code.to_string(),
                message,
            },
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising two strings cannot fail; keep a valid body even if it somehow did.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"detail":"internal error","error":{"code":"internal","message":"internal error"}}"#.into()
        })
    }
}
