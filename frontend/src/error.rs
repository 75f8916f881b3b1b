//! Errors of the frontend: every one names the file, the field (when one is at fault) and what
//! was expected, so a user can fix their input without reading kiln's source.

use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub struct FrontendError {
    /// The file (or `<embedded>` / `<spec>`) the problem is in.
    pub file: String,
    /// The field or key at fault, if any.
    pub field: Option<String>,
    pub message: String,
}

impl FrontendError {
    pub fn new(
        file: impl Into<String>,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> FrontendError {
        FrontendError {
            file: file.into(),
            field: field.map(str::to_string),
            message: message.into(),
        }
    }
}

impl fmt::Display for FrontendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: field `{field}`: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for FrontendError {}
