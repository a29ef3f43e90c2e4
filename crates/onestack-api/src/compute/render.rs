//! Nova's JSON shapes at microversion 2.1: exactly the fields the api-ref lists, no more (strict
//! clients reject extra keys).

use super::ComputeState;
use onestack_core::compute::{server_status, state::VmState};
use onestack_core::policy::AuthContext;
use onestack_store::{FlavorRecord, InstanceRecord, KeypairRecord};
use serde_json::{json, Value};
use sha2::{Digest, Sha224};

fn links(s: &ComputeState, collection: &str, id: &str) -> Value {
    json!([
        {"rel": "self", "href": format!("{}/v2.1/{collection}/{id}", s.base_url)},
        {"rel": "bookmark", "href": format!("{}/{collection}/{id}", s.base_url)},
    ])
}

pub fn flavor(s: &ComputeState, f: &FlavorRecord) -> Value {
    json!({
        "id": f.id,
        "name": f.name,
        "ram": f.memory_mb,
        "vcpus": f.vcpus,
        "disk": f.root_gb,
        "swap": if f.swap_mb == 0 { json!("") } else { json!(f.swap_mb) },
        "OS-FLV-EXT-DATA:ephemeral": f.ephemeral_gb,
        "OS-FLV-DISABLED:disabled": f.disabled,
        "os-flavor-access:is_public": f.is_public,
        "rxtx_factor": 1.0,
        "links": links(s, "flavors", &f.id),
    })
}

pub fn flavor_brief(s: &ComputeState, f: &FlavorRecord) -> Value {
    json!({"id": f.id, "name": f.name, "links": links(s, "flavors", &f.id)})
}

pub fn keypair(k: &KeypairRecord, private_key: Option<&str>) -> Value {
    let mut v = json!({
        "name": k.name,
        "public_key": k.public_key,
        "fingerprint": k.fingerprint,
        "user_id": k.user_id,
    });
    if let (Some(p), Some(o)) = (private_key, v.as_object_mut()) {
        o.insert("private_key".into(), json!(p));
    }
    v
}

/// The full keypair of `GET /os-keypairs/{name}` (with id, created_at and deleted fields).
pub fn keypair_detail(k: &KeypairRecord, id: i64) -> Value {
    json!({
        "name": k.name,
        "public_key": k.public_key,
        "fingerprint": k.fingerprint,
        "user_id": k.user_id,
        "created_at": nova_time(&k.created_at),
        "deleted": false,
        "deleted_at": null,
        "updated_at": null,
        "id": id,
    })
}

/// Nova prints naive ISO times with microseconds in a few places (`launched_at`, keypairs).
pub fn nova_time(t: &str) -> String {
    format!("{}.000000", t.trim_end_matches('Z'))
}

/// Nova's `hostId`: a per-project hash of the host, so tenants can tell co-location apart
/// without learning host names.
pub fn host_id(project: &str, host: Option<&str>) -> String {
    match host {
        Some(h) => hex::encode(Sha224::digest(format!("{project}{h}").as_bytes())),
        None => String::new(),
    }
}

pub fn server_brief(s: &ComputeState, i: &InstanceRecord) -> Value {
    json!({"id": i.id, "name": i.name, "links": links(s, "servers", &i.id)})
}

pub fn server(s: &ComputeState, ctx: &AuthContext, i: &InstanceRecord, addresses: Value) -> Value {
    let status = server_status(i);
    let groups: Vec<String> = serde_json::from_str(&i.security_groups).unwrap_or_default();
    let mut v = json!({
        "id": i.id,
        "name": i.name,
        "status": status,
        "tenant_id": i.project_id,
        "user_id": i.user_id,
        "metadata": i.metadata,
        "hostId": host_id(&i.project_id, i.host.as_deref()),
        "image": if i.image_id.is_empty() { json!("") } else {
            json!({"id": i.image_id, "links": [{"rel": "bookmark",
                   "href": format!("{}/images/{}", s.base_url, i.image_id)}]})
        },
        "flavor": {"id": i.flavor_id, "links": [{"rel": "bookmark",
                   "href": format!("{}/flavors/{}", s.base_url, i.flavor_id)}]},
        "created": i.created_at,
        "updated": i.updated_at,
        "addresses": addresses,
        "accessIPv4": i.access_ipv4,
        "accessIPv6": i.access_ipv6,
        "links": links(s, "servers", &i.id),
        "OS-DCF:diskConfig": "MANUAL",
        "OS-EXT-AZ:availability_zone": i.availability_zone.clone().unwrap_or_default(),
        "config_drive": if i.config_drive { "True" } else { "" },
        "key_name": i.key_name,
        "OS-SRV-USG:launched_at": i.launched_at.as_deref().map(nova_time),
        "OS-SRV-USG:terminated_at": i.terminated_at.as_deref().map(nova_time),
        "OS-EXT-STS:task_state": i.task_state,
        "OS-EXT-STS:vm_state": i.vm_state,
        "OS-EXT-STS:power_state": i.power_state,
        "os-extended-volumes:volumes_attached": [],
        "security_groups": groups.iter().map(|g| json!({"name": g})).collect::<Vec<_>>(),
    });
    let Some(o) = v.as_object_mut() else {
        return v;
    };
    if matches!(status, "ACTIVE" | "BUILD" | "REBUILD") {
        o.insert("progress".into(), json!(0));
    }
    if ctx.is_admin() {
        o.insert("OS-EXT-SRV-ATTR:host".into(), json!(i.host));
        o.insert(
            "OS-EXT-SRV-ATTR:instance_name".into(),
            json!(onestack_core::compute::metadata::instance_name(i.seq)),
        );
        o.insert("OS-EXT-SRV-ATTR:hypervisor_hostname".into(), json!(i.node));
    }
    let vm = VmState::parse(&i.vm_state);
    if matches!(vm, Some(VmState::Error) | Some(VmState::Deleted)) {
        if let (Some(code), Some(msg)) = (i.fault_code, &i.fault_message) {
            let mut fault = json!({"code": code, "message": msg,
                                   "created": i.fault_created.clone().unwrap_or_default()});
            // Details (tracebacks in Nova) are for admins, or for any 500-free fault.
            if ctx.is_admin() || code != 500 {
                if let Some(f) = fault.as_object_mut() {
                    f.insert(
                        "details".into(),
                        json!(i.fault_details.clone().unwrap_or_default()),
                    );
                }
            }
            o.insert("fault".into(), fault);
        }
    }
    v
}
