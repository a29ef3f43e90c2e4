//! The image document as Glance's `image` schema defines it: which attributes exist, their types,
//! which are read-only or reserved, and how a JSON-patch applies to it. Messages follow Glance's.

use crate::{CoreError, CoreResult};
use serde_json::{Map, Value};

pub const DISK_FORMATS: &[&str] = &[
    "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop",
];
pub const CONTAINER_FORMATS: &[&str] = &[
    "ami",
    "ari",
    "aki",
    "bare",
    "ovf",
    "ova",
    "docker",
    "compressed",
];
pub const VISIBILITIES: &[&str] = &["public", "private", "shared", "community"];

/// Set only by the service.
pub const READ_ONLY: &[&str] = &[
    "id",
    "status",
    "created_at",
    "updated_at",
    "size",
    "virtual_size",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "self",
    "file",
    "schema",
    "direct_url",
    "stores",
];
/// Never accepted from a user.
pub const RESERVED: &[&str] = &["location", "locations", "deleted", "deleted_at"];
/// Columns of the image row that a user may set.
pub const BASE_WRITABLE: &[&str] = &[
    "name",
    "visibility",
    "protected",
    "os_hidden",
    "disk_format",
    "container_format",
    "min_disk",
    "min_ram",
    "tags",
    "owner",
];
/// Glance's `image_tag_quota` and `image_property_quota` defaults.
pub const MAX_TAGS: usize = 128;
pub const MAX_PROPERTIES: usize = 128;
const MAX_STRING: usize = 255;
/// Free-form property values may be long (e.g. a description), but not unbounded.
const MAX_PROPERTY_VALUE: usize = 65_535;

fn schema_error(detail: String) -> CoreError {
    CoreError::BadRequest(format!(
        "Provided object does not match schema 'image': {detail}"
    ))
}

fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn expect_nullable_string(key: &str, v: &Value, max: usize) -> CoreResult<()> {
    match v {
        Value::Null => Ok(()),
        Value::String(s) if s.chars().count() <= max => Ok(()),
        Value::String(_) => Err(schema_error(format!(
            "'{key}' is longer than {max} characters"
        ))),
        other => Err(schema_error(format!(
            "{other} is not of type 'string', 'null' (attribute '{key}')"
        ))),
    }
}

fn expect_enum(key: &str, v: &Value, allowed: &[&str], nullable: bool) -> CoreResult<()> {
    match v {
        Value::Null if nullable => Ok(()),
        Value::String(s) if allowed.contains(&s.as_str()) => Ok(()),
        other => Err(schema_error(format!(
            "{other} is not one of {allowed:?} (attribute '{key}')"
        ))),
    }
}

/// Checks every attribute of a would-be image document against the schema.
pub fn validate_document(doc: &Map<String, Value>) -> CoreResult<()> {
    let mut extra = 0usize;
    for (key, v) in doc {
        match key.as_str() {
            "id" => match v {
                Value::String(s) if is_uuid(s) => {}
                other => {
                    return Err(schema_error(format!(
                        "{other} does not match the UUID format (attribute 'id')"
                    )))
                }
            },
            "name" | "owner" => expect_nullable_string(key, v, MAX_STRING)?,
            "visibility" => expect_enum(key, v, VISIBILITIES, false)?,
            "disk_format" => expect_enum(key, v, DISK_FORMATS, true)?,
            "container_format" => expect_enum(key, v, CONTAINER_FORMATS, true)?,
            "protected" | "os_hidden" => {
                if !v.is_boolean() {
                    return Err(schema_error(format!(
                        "{v} is not of type 'boolean' (attribute '{key}')"
                    )));
                }
            }
            "min_disk" | "min_ram" => match v.as_i64() {
                Some(n) if (0..=i32::MAX as i64).contains(&n) => {}
                Some(n) => {
                    return Err(schema_error(format!(
                        "{n} is out of range for '{key}' (0 to {})",
                        i32::MAX
                    )))
                }
                None => {
                    return Err(schema_error(format!(
                        "{v} is not of type 'integer' (attribute '{key}')"
                    )))
                }
            },
            "tags" => {
                let Value::Array(tags) = v else {
                    return Err(schema_error(format!(
                        "{v} is not of type 'array' (attribute 'tags')"
                    )));
                };
                for t in tags {
                    validate_tag_value(t)?;
                }
                if tags.len() > MAX_TAGS {
                    return Err(CoreError::TooLarge(format!(
                        "Maximum number of tags exceeded: {} (limit {MAX_TAGS})",
                        tags.len()
                    )));
                }
            }
            "kernel_id" | "ramdisk_id" => match v {
                Value::Null => {}
                Value::String(s) if is_uuid(s) => {}
                other => {
                    return Err(schema_error(format!(
                        "{other} does not match the UUID format (attribute '{key}')"
                    )))
                }
            },
            k if READ_ONLY.contains(&k) => {}
            _ => {
                extra += 1;
                if key.is_empty() || key.chars().count() > MAX_STRING {
                    return Err(schema_error(format!(
                        "property names must be 1 to {MAX_STRING} characters: '{key}'"
                    )));
                }
                match v {
                    Value::String(s) if s.len() <= MAX_PROPERTY_VALUE => {}
                    Value::String(_) => {
                        return Err(schema_error(format!(
                            "the value of '{key}' is longer than {MAX_PROPERTY_VALUE} bytes"
                        )))
                    }
                    other => {
                        return Err(schema_error(format!(
                            "{other} is not of type 'string' (attribute '{key}', a {})",
                            type_name(other)
                        )))
                    }
                }
            }
        }
    }
    if extra > MAX_PROPERTIES {
        return Err(CoreError::TooLarge(format!(
            "Maximum number of properties exceeded: {extra} (limit {MAX_PROPERTIES})"
        )));
    }
    Ok(())
}

pub fn validate_tag_value(t: &Value) -> CoreResult<()> {
    match t {
        Value::String(s) if !s.is_empty() && s.chars().count() <= MAX_STRING => Ok(()),
        Value::String(_) => Err(schema_error(format!(
            "tags must be 1 to {MAX_STRING} characters: {t}"
        ))),
        other => Err(schema_error(format!(
            "{other} is not of type 'string' (an item of 'tags')"
        ))),
    }
}

/// One operation of an `application/openstack-images-v2.1-json-patch` body.
#[derive(Debug, Clone)]
pub struct PatchOp {
    pub op: String,
    pub path: Vec<String>,
    pub value: Option<Value>,
}

/// Parses the patch body: a list of `{"op", "path", "value"}` objects (RFC 6902 subset Glance
/// accepts: add, remove, replace).
pub fn parse_patch(body: &Value) -> CoreResult<Vec<PatchOp>> {
    let Value::Array(items) = body else {
        return Err(CoreError::BadRequest(
            "Request body must be a JSON array of operation objects.".into(),
        ));
    };
    let mut ops = Vec::with_capacity(items.len());
    for item in items {
        let Value::Object(o) = item else {
            return Err(CoreError::BadRequest(
                "Operations must be JSON objects.".into(),
            ));
        };
        let op = o.get("op").and_then(Value::as_str).ok_or_else(|| {
            CoreError::BadRequest("Operation objects must contain a string member 'op'.".into())
        })?;
        if !["add", "remove", "replace"].contains(&op) {
            return Err(CoreError::BadRequest(format!(
                "Invalid operation: `{op}`. It must be one of: add, remove, replace."
            )));
        }
        let path = o.get("path").and_then(Value::as_str).ok_or_else(|| {
            CoreError::BadRequest("Operation objects must contain a string member 'path'.".into())
        })?;
        let Some(rest) = path.strip_prefix('/') else {
            return Err(CoreError::BadRequest(format!(
                "Pointer `{path}` does not start with \"/\"."
            )));
        };
        let segments: Vec<String> = rest
            .split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        if segments.iter().any(String::is_empty) {
            return Err(CoreError::BadRequest(format!(
                "Pointer `{path}` contains an empty segment."
            )));
        }
        let value = o.get("value").cloned();
        if op != "remove" && value.is_none() {
            return Err(CoreError::BadRequest(format!(
                "Operation `{op}` requires a member named 'value'."
            )));
        }
        ops.push(PatchOp {
            op: op.to_string(),
            path: segments,
            value,
        });
    }
    Ok(ops)
}

/// Applies the operations to `doc` (a whole image document). Nested paths are allowed only into
/// `tags` (what jsonpatch-based clients such as openstacksdk generate for a list change).
pub fn apply_patch(doc: &mut Map<String, Value>, ops: &[PatchOp]) -> CoreResult<()> {
    for op in ops {
        let key = &op.path[0];
        if op.path.len() == 1 {
            match op.op.as_str() {
                "add" => {
                    doc.insert(key.clone(), op.value.clone().unwrap_or(Value::Null));
                }
                "replace" => {
                    if !doc.contains_key(key) {
                        return Err(CoreError::Conflict(format!(
                            "Property {key} does not exist."
                        )));
                    }
                    doc.insert(key.clone(), op.value.clone().unwrap_or(Value::Null));
                }
                _ => {
                    if doc.remove(key).is_none() {
                        return Err(CoreError::Conflict(format!(
                            "Property {key} does not exist."
                        )));
                    }
                }
            }
            continue;
        }
        if key != "tags" || op.path.len() != 2 {
            return Err(CoreError::BadRequest(format!(
                "Nested paths are not allowed: /{}",
                op.path.join("/")
            )));
        }
        let Some(Value::Array(tags)) = doc.get_mut("tags") else {
            return Err(CoreError::Conflict("Property tags does not exist.".into()));
        };
        let idx = &op.path[1];
        let position = if idx == "-" {
            None
        } else {
            Some(idx.parse::<usize>().map_err(|_| {
                CoreError::BadRequest(format!("Invalid array index in pointer: /tags/{idx}"))
            })?)
        };
        let out_of_range =
            || CoreError::Conflict(format!("Array index /tags/{idx} is out of range."));
        match (op.op.as_str(), position) {
            ("add", None) => tags.push(op.value.clone().unwrap_or(Value::Null)),
            ("add", Some(i)) if i <= tags.len() => {
                tags.insert(i, op.value.clone().unwrap_or(Value::Null))
            }
            ("replace", Some(i)) if i < tags.len() => {
                tags[i] = op.value.clone().unwrap_or(Value::Null)
            }
            ("remove", Some(i)) if i < tags.len() => {
                tags.remove(i);
            }
            _ => return Err(out_of_range()),
        }
    }
    Ok(())
}
