//! Typed access to the fields of a JSON object, with errors that name the file, the field and
//! the expected type.

use crate::error::FrontendError;
use serde_json::{Map, Value};

pub struct Fields<'a> {
    pub file: &'a str,
    /// Prefix for nested objects (`rope_scaling.`), so errors name the full path.
    pub prefix: String,
    pub obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    pub fn new(file: &'a str, value: &'a Value) -> Result<Fields<'a>, FrontendError> {
        let obj = value.as_object().ok_or_else(|| {
            FrontendError::new(file, None, "expected a JSON object at the top level")
        })?;
        Ok(Fields {
            file,
            prefix: String::new(),
            obj,
        })
    }

    pub fn error(&self, key: &str, message: impl Into<String>) -> FrontendError {
        FrontendError::new(self.file, Some(&format!("{}{key}", self.prefix)), message)
    }

    /// The value, treating JSON `null` as absent.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn typed<T>(
        &self,
        key: &str,
        what: &str,
        f: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, FrontendError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => f(v)
                .map(Some)
                .ok_or_else(|| self.error(key, format!("expected {what}, found {}", describe(v)))),
        }
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>, FrontendError> {
        self.typed(key, "a non-negative integer", |v| {
            v.as_u64().map(|n| n as usize)
        })
    }

    /// A required positive integer.
    pub fn positive(&self, key: &str) -> Result<usize, FrontendError> {
        match self.opt_usize(key)? {
            None => Err(self.error(key, "missing (expected a positive integer)")),
            Some(0) => Err(self.error(key, "expected a positive integer, found 0")),
            Some(n) => Ok(n),
        }
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, FrontendError> {
        self.typed(key, "a number", Value::as_f64)
    }

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64, FrontendError> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, FrontendError> {
        Ok(self
            .typed(key, "true or false", Value::as_bool)?
            .unwrap_or(default))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>, FrontendError> {
        self.typed(key, "a string", Value::as_str)
    }

    pub fn opt_object(&self, key: &str) -> Result<Option<Fields<'a>>, FrontendError> {
        Ok(self
            .typed(key, "an object", Value::as_object)?
            .map(|obj| Fields {
                file: self.file,
                prefix: format!("{}{key}.", self.prefix),
                obj,
            }))
    }

    pub fn opt_str_array(&self, key: &str) -> Result<Option<Vec<&'a str>>, FrontendError> {
        self.typed(key, "an array of strings", |v| {
            v.as_array()?
                .iter()
                .map(Value::as_str)
                .collect::<Option<Vec<_>>>()
        })
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("{n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}
