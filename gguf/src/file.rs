//! [`GgufFile`]: what the header part of a GGUF file holds, and typed access to its metadata.
//!
//! The typed getters never panic: a missing key or a value of another type is an error naming
//! the file, the key, what was expected and what was found. Integer getters accept any integer
//! type whose value fits; float getters also accept integers.

use crate::error::{ErrorKind, GgufError};
use crate::tensor::TensorInfo;
use crate::value::Value;

/// The header, metadata and tensor infos of one GGUF file.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufFile {
    /// The file's name in errors: its path, or the name given to [`crate::parse`].
    pub source: String,
    /// 2 or 3.
    pub version: u32,
    /// Key-value pairs in file order; keys are unique.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    /// `general.alignment`, or 32.
    pub alignment: u64,
    /// The byte where tensor data starts: the end of the tensor infos rounded up to `alignment`.
    pub data_offset: u64,
}

impl GgufFile {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The tensor named `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The value of `key`, or an error saying it is missing.
    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| {
            GgufError::new(
                &self.source,
                ErrorKind::MissingKey {
                    key: key.to_string(),
                },
            )
        })
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: String) -> GgufError {
        let kind = ErrorKind::WrongType {
            key: key.to_string(),
            expected,
            found,
        };
        GgufError::new(&self.source, kind)
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.require(key)? {
            Value::String(s) => Ok(s),
            other => Err(self.wrong_type(key, "a string", other.describe())),
        }
    }

    /// An integer value of any type that fits in u64.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let value = self.require(key)?;
        value
            .as_integer()
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| self.wrong_type(key, "a non-negative integer", value.describe()))
    }

    /// A float value, or an integer converted to f64.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        match self.require(key)? {
            Value::F32(v) => Ok(f64::from(*v)),
            Value::F64(v) => Ok(*v),
            other => match other.as_integer() {
                Some(v) => Ok(v as f64),
                None => Err(self.wrong_type(key, "a number", other.describe())),
            },
        }
    }

    /// A bool value.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.require(key)? {
            Value::Bool(b) => Ok(*b),
            other => Err(self.wrong_type(key, "a bool", other.describe())),
        }
    }

    /// An array value of any element type.
    pub fn get_array(&self, key: &str) -> Result<&[Value], GgufError> {
        match self.require(key)? {
            Value::Array(items) => Ok(items),
            other => Err(self.wrong_type(key, "an array", other.describe())),
        }
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let items = self.get_array(key).map_err(|e| match e.into_kind() {
            ErrorKind::WrongType { found, .. } => {
                self.wrong_type(key, "an array of strings", found)
            }
            kind => GgufError::new(&self.source, kind),
        })?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.as_str()),
                other => {
                    let found = format!("{} at index {i}", other.describe());
                    Err(self.wrong_type(key, "an array of strings", found))
                }
            })
            .collect()
    }
}
