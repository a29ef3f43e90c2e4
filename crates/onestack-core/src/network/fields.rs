//! Reading a Neutron request object (`{"network": {…}}`'s inner map) with the error messages
//! Neutron gives: unknown attributes and wrong types are 400s naming the attribute.

use crate::{CoreError, CoreResult};
use serde_json::{Map, Value};

pub struct Fields<'a> {
    map: &'a Map<String, Value>,
}

pub fn bad(message: impl Into<String>) -> CoreError {
    CoreError::Typed {
        status: 400,
        kind: "HTTPBadRequest",
        message: message.into(),
    }
}

fn invalid(key: &str, reason: impl std::fmt::Display) -> CoreError {
    bad(format!("Invalid input for {key}. Reason: {reason}."))
}

impl<'a> Fields<'a> {
    /// Refuses attributes outside `allowed` (Neutron: "Unrecognized attribute(s)").
    pub fn new(map: &'a Map<String, Value>, allowed: &[&str]) -> CoreResult<Self> {
        let unknown: Vec<&str> = map
            .keys()
            .map(String::as_str)
            .filter(|k| !allowed.contains(k))
            .collect();
        if !unknown.is_empty() {
            return Err(bad(format!(
                "Unrecognized attribute(s) '{}'",
                unknown.join(", ")
            )));
        }
        Ok(Fields { map })
    }

    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    pub fn raw(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    pub fn string(&self, key: &str, max: usize) -> CoreResult<Option<String>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
            Some(Value::String(_)) => Err(invalid(
                key,
                format!("'{key}' exceeds maximum length of {max}"),
            )),
            Some(v) => Err(invalid(key, format!("'{v}' is not a valid string"))),
        }
    }

    /// A string or JSON null.
    pub fn nullable_string(&self, key: &str, max: usize) -> CoreResult<Option<Option<String>>> {
        match self.map.get(key) {
            Some(Value::Null) => Ok(Some(None)),
            _ => Ok(self.string(key, max)?.map(Some)),
        }
    }

    /// A boolean; Neutron also takes "true"/"false" strings (convert_to_boolean).
    pub fn boolean(&self, key: &str) -> CoreResult<Option<bool>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(invalid(
                key,
                format!("'{v}' cannot be converted to boolean"),
            )),
        }
    }

    pub fn integer(&self, key: &str, min: i64, max: i64) -> CoreResult<Option<i64>> {
        let v = match self.map.get(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            Some(_) => None,
        };
        match v {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            Some(n) => Err(invalid(
                key,
                format!("'{n}' is not in range {min} through {max}"),
            )),
            None => Err(invalid(key, "not an integer")),
        }
    }

    pub fn list(&self, key: &str) -> CoreResult<Option<&'a Vec<Value>>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(invalid(key, format!("'{v}' is not a list"))),
        }
    }

    pub fn string_list(&self, key: &str) -> CoreResult<Option<Vec<String>>> {
        let Some(items) = self.list(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(invalid(key, format!("'{other}' is not a valid string"))),
            })
            .collect::<CoreResult<Vec<_>>>()
            .map(Some)
    }

    /// An object, or None for absent/null.
    pub fn object(&self, key: &str) -> CoreResult<Option<&'a Map<String, Value>>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(v) => Err(invalid(key, format!("'{v}' is not a dictionary"))),
        }
    }
}

/// Each element of a list of objects, as Fields with the allowed keys.
pub fn objects<'a>(key: &str, items: &'a [Value], allowed: &[&str]) -> CoreResult<Vec<Fields<'a>>> {
    items
        .iter()
        .map(|v| match v {
            Value::Object(m) => Fields::new(m, allowed),
            other => Err(invalid(key, format!("'{other}' is not a dictionary"))),
        })
        .collect()
}
