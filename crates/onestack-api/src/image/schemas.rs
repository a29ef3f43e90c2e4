//! `/v2/schemas/*`: the JSON schemas clients (glanceclient, some SDKs) use to validate and to
//! learn which attributes exist, built from the same lists the service validates with. Behind
//! Keystone authentication, as in Glance (only `/` and `/versions` are anonymous).

use crate::extract::Auth;
use axum::Json;
use onestack_core::image::schema::{CONTAINER_FORMATS, DISK_FORMATS, VISIBILITIES};
use serde_json::{json, Value};

fn nullable_enum(values: &[&str]) -> Value {
    let mut all: Vec<Value> = vec![Value::Null];
    all.extend(values.iter().map(|v| json!(v)));
    json!({"type": ["null", "string"], "enum": all})
}

fn image_schema() -> Value {
    let ro = |t: Value, d: &str| json!({"type": t, "readOnly": true, "description": d});
    let uuid_prop = |d: &str| json!({"type": ["null", "string"], "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$", "description": d, "is_base": false});
    json!({
        "name": "image",
        "additionalProperties": {"type": "string"},
        "links": [
            {"href": "{self}", "rel": "self"},
            {"href": "{file}", "rel": "enclosure"},
            {"href": "{schema}", "rel": "describedby"}
        ],
        "properties": {
            "id": {"type": "string", "description": "An identifier for the image", "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"},
            "name": {"type": ["null", "string"], "maxLength": 255, "description": "Descriptive name for the image"},
            "status": ro(json!("string"), "Status of the image").as_object().map(|o| {
                let mut o = o.clone();
                o.insert("enum".into(), json!(["queued", "saving", "active", "killed", "deleted", "uploading", "importing", "pending_delete", "deactivated"]));
                Value::Object(o)
            }).unwrap_or(Value::Null),
            "visibility": {"type": "string", "enum": VISIBILITIES, "description": "Scope of image accessibility"},
            "protected": {"type": "boolean", "description": "If true, image will not be deletable."},
            "os_hidden": {"type": "boolean", "description": "If true, image will not appear in default image list response."},
            "checksum": ro(json!(["null", "string"]), "md5 hash of image contents."),
            "os_hash_algo": ro(json!(["null", "string"]), "Algorithm to calculate the os_hash_value"),
            "os_hash_value": ro(json!(["null", "string"]), "Hexdigest of the image contents using the algorithm specified by the os_hash_algo"),
            "owner": {"type": ["null", "string"], "maxLength": 255, "description": "Owner of the image"},
            "size": ro(json!(["null", "integer"]), "Size of image file in bytes"),
            "virtual_size": ro(json!(["null", "integer"]), "Virtual size of image in bytes"),
            "container_format": nullable_enum(CONTAINER_FORMATS),
            "disk_format": nullable_enum(DISK_FORMATS),
            "created_at": ro(json!("string"), "Date and time of image registration"),
            "updated_at": ro(json!("string"), "Date and time of the last image modification"),
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 255}, "description": "List of strings related to the image"},
            "direct_url": ro(json!("string"), "URL to access the image file kept in external store"),
            "min_ram": {"type": "integer", "minimum": 0, "maximum": 2147483647, "description": "Amount of ram (in MB) required to boot image."},
            "min_disk": {"type": "integer", "minimum": 0, "maximum": 2147483647, "description": "Amount of disk space (in GB) required to boot image."},
            "self": ro(json!("string"), "An image self url"),
            "file": ro(json!("string"), "An image file url"),
            "schema": ro(json!("string"), "An image schema url"),
            "kernel_id": uuid_prop("ID of image stored in Glance that should be used as the kernel when booting an AMI-style image."),
            "ramdisk_id": uuid_prop("ID of image stored in Glance that should be used as the ramdisk when booting an AMI-style image."),
            "instance_uuid": {"type": "string", "description": "Metadata which can be used to record which instance this image is associated with.", "is_base": false},
            "architecture": {"type": "string", "description": "Operating system architecture as specified in https://docs.openstack.org/python-glanceclient/latest/cli/property-keys.html", "is_base": false},
            "os_distro": {"type": "string", "description": "Common name of operating system distribution as specified in https://docs.openstack.org/python-glanceclient/latest/cli/property-keys.html", "is_base": false},
            "os_version": {"type": "string", "description": "Operating system version as specified by the distributor.", "is_base": false},
            "description": {"type": "string", "description": "A human-readable string describing this image.", "is_base": false},
        }
    })
}

pub async fn image(_auth: Auth) -> Json<Value> {
    Json(image_schema())
}

pub async fn images(_auth: Auth) -> Json<Value> {
    Json(json!({
        "name": "images",
        "properties": {
            "images": {"type": "array", "items": image_schema()},
            "schema": {"type": "string"},
            "first": {"type": "string"},
            "next": {"type": "string"},
        },
        "links": [
            {"href": "{first}", "rel": "first"},
            {"href": "{next}", "rel": "next"},
            {"href": "{schema}", "rel": "describedby"}
        ]
    }))
}

fn member_schema() -> Value {
    json!({
        "name": "member",
        "properties": {
            "created_at": {"type": "string", "description": "Date and time of image member creation"},
            "image_id": {"type": "string", "description": "An identifier for the image"},
            "member_id": {"type": "string", "description": "An identifier for the image member (tenantId)"},
            "schema": {"type": "string", "readOnly": true},
            "status": {"type": "string", "enum": ["pending", "accepted", "rejected"], "description": "The status of this image member"},
            "updated_at": {"type": "string", "description": "Date and time of last modification of image member"},
        }
    })
}

pub async fn member(_auth: Auth) -> Json<Value> {
    Json(member_schema())
}

pub async fn members(_auth: Auth) -> Json<Value> {
    Json(json!({
        "name": "members",
        "properties": {
            "members": {"type": "array", "items": member_schema()},
            "schema": {"type": "string"},
        },
        "links": [{"href": "{schema}", "rel": "describedby"}]
    }))
}
