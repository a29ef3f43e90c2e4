//! What a guest learns about itself: the OpenStack `meta_data.json`, `network_data.json` and the
//! EC2 `meta-data` tree, as Nova serves them on the config drive and the metadata service.

use onestack_store::InstanceRecord;
use serde_json::{json, Map, Value};

/// The OpenStack metadata versions Nova serves, oldest first.
pub const OPENSTACK_VERSIONS: &[&str] = &[
    "2012-08-10",
    "2013-04-04",
    "2013-10-17",
    "2015-10-15",
    "2016-06-30",
    "2016-10-06",
    "2017-02-22",
    "2018-08-27",
    "2020-10-14",
];

/// The EC2 id CirrOS and cloud-init expect (`i-%08x`).
pub fn ec2_id(seq: i64) -> String {
    format!("i-{seq:08x}")
}

/// The hypervisor-side name (`instance-%08x`, Nova's `instance_name_template`).
pub fn instance_name(seq: i64) -> String {
    format!("instance-{seq:08x}")
}

/// `meta_data.json`.
pub fn meta_data(inst: &InstanceRecord, public_key: Option<(&str, &str)>) -> Value {
    let mut keys = Map::new();
    let mut key_list = Vec::new();
    if let Some((name, data)) = public_key {
        keys.insert(name.to_string(), Value::String(data.to_string()));
        key_list.push(json!({"name": name, "type": "ssh", "data": data}));
    }
    use base64::Engine;
    use rand::RngCore;
    let mut seed = [0u8; 512];
    rand::thread_rng().fill_bytes(&mut seed);
    json!({
        "uuid": inst.id,
        "name": inst.name,
        "hostname": inst.hostname,
        "launch_index": inst.launch_index,
        "availability_zone": inst.availability_zone.clone().unwrap_or_else(|| "nova".into()),
        "project_id": inst.project_id,
        "meta": inst.metadata,
        "public_keys": keys,
        "keys": key_list,
        "random_seed": base64::engine::general_purpose::STANDARD.encode(seed),
        "devices": [],
    })
}

/// `network_data.json` for NICs given as (port id, MAC, network id, MTU).
pub fn network_data(nics: &[(String, String, String, u32)], dns: &[String]) -> Value {
    let links: Vec<Value> = nics
        .iter()
        .enumerate()
        .map(|(i, (port, mac, _, mtu))| {
            json!({"id": format!("tap{i}"), "vif_id": port, "type": "phy", "mtu": mtu,
                   "ethernet_mac_address": mac})
        })
        .collect();
    let networks: Vec<Value> = nics
        .iter()
        .enumerate()
        .map(|(i, (_, _, net, _))| {
            json!({"id": format!("network{i}"), "type": "ipv4_dhcp", "link": format!("tap{i}"),
                   "network_id": net})
        })
        .collect();
    let services: Vec<Value> = dns
        .iter()
        .map(|d| json!({"type": "dns", "address": d}))
        .collect();
    json!({"links": links, "networks": networks, "services": services})
}

/// The EC2 `meta-data` document as a JSON object (the config drive's `ec2/*/meta-data.json`).
pub fn ec2_meta_data(
    inst: &InstanceRecord,
    public_key: Option<(&str, &str)>,
    local_ipv4: &str,
) -> Value {
    let mut doc = json!({
        "ami-id": format!("ami-{:08x}", 0),
        "ami-launch-index": inst.launch_index,
        "hostname": inst.hostname,
        "instance-action": "none",
        "instance-id": ec2_id(inst.seq),
        "instance-type": inst.flavor_name,
        "local-hostname": inst.hostname,
        "local-ipv4": local_ipv4,
        "placement": {"availability-zone": inst.availability_zone.clone().unwrap_or_else(|| "nova".into())},
        "public-hostname": inst.hostname,
        "public-ipv4": "",
        "reservation-id": inst.reservation_id,
        "security-groups": serde_json::from_str::<Value>(&inst.security_groups).unwrap_or(json!([])),
    });
    if let (Some((name, data)), Some(obj)) = (public_key, doc.as_object_mut()) {
        obj.insert(
            "public-keys".into(),
            json!({"0": {"_name": format!("0={name}"), "openssh-key": data}}),
        );
    }
    doc
}

/// The EC2 metadata versions Nova's metadata service lists at `/`.
pub const EC2_VERSIONS: &[&str] = &[
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
];

/// One answer of the metadata service.
#[derive(Debug, PartialEq)]
pub enum MetaAnswer {
    Text(String),
    Json(Value),
    Bytes(Vec<u8>),
    NotFound,
}

/// Resolves a metadata service path (`/openstack/latest/meta_data.json`,
/// `/latest/meta-data/public-keys/0/openssh-key`, …) against what the server may know of itself.
pub fn serve_path(cd: &crate::compute::proto::ConfigDrive, path: &str) -> MetaAnswer {
    let path = path.split('?').next().unwrap_or_default();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let user_data = || -> Option<Vec<u8>> {
        use base64::Engine;
        let compact: String = cd.user_data.as_deref()?.split_whitespace().collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .ok()
    };
    let list = |items: Vec<String>| MetaAnswer::Text(items.join("\n"));
    match parts.as_slice() {
        [] => list(
            EC2_VERSIONS
                .iter()
                .chain(&["latest"])
                .map(|s| s.to_string())
                .collect(),
        ),
        ["openstack"] => list(
            OPENSTACK_VERSIONS
                .iter()
                .chain(&["latest"])
                .map(|s| s.to_string())
                .collect(),
        ),
        ["openstack", v, rest @ ..] if *v == "latest" || OPENSTACK_VERSIONS.contains(v) => {
            match rest {
                [] => {
                    let mut items = vec!["meta_data.json", "password", "vendor_data.json"];
                    if cd.user_data.is_some() {
                        items.push("user_data");
                    }
                    items.extend(["network_data.json", "vendor_data2.json"]);
                    list(items.into_iter().map(str::to_string).collect())
                }
                ["meta_data.json"] => MetaAnswer::Json(cd.meta_data.clone()),
                ["network_data.json"] => MetaAnswer::Json(cd.network_data.clone()),
                ["vendor_data.json"] => MetaAnswer::Json(cd.vendor_data.clone()),
                ["vendor_data2.json"] => MetaAnswer::Json(json!({})),
                ["password"] => MetaAnswer::Text(String::new()),
                ["user_data"] => user_data().map_or(MetaAnswer::NotFound, MetaAnswer::Bytes),
                _ => MetaAnswer::NotFound,
            }
        }
        [v, rest @ ..] if *v == "latest" || EC2_VERSIONS.contains(v) => match rest {
            [] => {
                let mut items = vec!["meta-data/".to_string()];
                if cd.user_data.is_some() {
                    items.push("user-data".into());
                }
                list(items)
            }
            ["user-data"] => user_data().map_or(MetaAnswer::NotFound, MetaAnswer::Bytes),
            ["meta-data", keys @ ..] => ec2_tree(&cd.ec2_meta_data, keys),
            _ => MetaAnswer::NotFound,
        },
        _ => MetaAnswer::NotFound,
    }
}

/// Walks the EC2 document: objects are directories (entries end in `/`), scalars are files. The
/// `public-keys` directory lists `0=name` as EC2 does.
fn ec2_tree(doc: &Value, keys: &[&str]) -> MetaAnswer {
    let mut node = doc;
    for k in keys {
        // `public-keys/0=name/` works as `public-keys/0/`.
        let k = k.split('=').next().unwrap_or(k);
        match node.get(k) {
            Some(n) => node = n,
            None => return MetaAnswer::NotFound,
        }
    }
    match node {
        Value::Object(o) => {
            let in_keys = keys.last() == Some(&"public-keys");
            let items: Vec<String> = o
                .iter()
                .filter(|(k, _)| !k.starts_with('_'))
                .map(|(k, v)| match v {
                    Value::Object(inner) if in_keys => inner
                        .get("_name")
                        .and_then(Value::as_str)
                        .unwrap_or(k)
                        .to_string(),
                    Value::Object(_) => format!("{k}/"),
                    _ => k.clone(),
                })
                .collect();
            MetaAnswer::Text(items.join("\n"))
        }
        Value::Array(a) => MetaAnswer::Text(
            a.iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Value::String(s) => MetaAnswer::Text(s.clone()),
        other => MetaAnswer::Text(other.to_string()),
    }
}

#[cfg(test)]
mod serve_tests {
    use super::*;
    use crate::compute::proto::ConfigDrive;

    fn cd() -> ConfigDrive {
        use base64::Engine;
        ConfigDrive {
            meta_data: json!({"uuid": "u-1", "hostname": "vm1"}),
            network_data: json!({"links": []}),
            vendor_data: json!({}),
            ec2_meta_data: json!({
                "instance-id": "i-00000001",
                "hostname": "vm1",
                "placement": {"availability-zone": "nova"},
                "public-keys": {"0": {"_name": "0=mykey", "openssh-key": "ssh-ed25519 AAAA k"}},
                "security-groups": ["default", "web"],
            }),
            user_data: Some(
                base64::engine::general_purpose::STANDARD.encode("#!/bin/sh\necho hi\n"),
            ),
        }
    }

    #[test]
    fn openstack_and_ec2_layouts() {
        let c = cd();
        assert!(
            matches!(serve_path(&c, "/"), MetaAnswer::Text(t) if t.ends_with("2009-04-04\nlatest"))
        );
        assert!(
            matches!(serve_path(&c, "/openstack"), MetaAnswer::Text(t) if t.contains("2012-08-10") && t.ends_with("latest"))
        );
        assert!(
            matches!(serve_path(&c, "/openstack/latest/"), MetaAnswer::Text(t) if t.contains("user_data") && t.contains("network_data.json"))
        );
        assert_eq!(
            serve_path(&c, "/openstack/latest/meta_data.json"),
            MetaAnswer::Json(json!({"uuid": "u-1", "hostname": "vm1"}))
        );
        assert_eq!(
            serve_path(&c, "/openstack/2012-08-10/user_data"),
            MetaAnswer::Bytes(b"#!/bin/sh\necho hi\n".to_vec())
        );
        assert_eq!(
            serve_path(&c, "/latest/user-data"),
            MetaAnswer::Bytes(b"#!/bin/sh\necho hi\n".to_vec())
        );
        assert_eq!(
            serve_path(&c, "/2009-04-04/meta-data/instance-id"),
            MetaAnswer::Text("i-00000001".into())
        );
        assert_eq!(
            serve_path(&c, "/latest/meta-data/placement/availability-zone"),
            MetaAnswer::Text("nova".into())
        );
        assert_eq!(
            serve_path(&c, "/latest/meta-data/public-keys/"),
            MetaAnswer::Text("0=mykey".into())
        );
        assert_eq!(
            serve_path(&c, "/latest/meta-data/public-keys/0/openssh-key"),
            MetaAnswer::Text("ssh-ed25519 AAAA k".into())
        );
        assert_eq!(
            serve_path(&c, "/latest/meta-data/security-groups"),
            MetaAnswer::Text("default\nweb".into())
        );
        let MetaAnswer::Text(listing) = serve_path(&c, "/latest/meta-data/") else {
            panic!("listing")
        };
        assert!(
            listing.contains("placement/")
                && listing.contains("instance-id")
                && listing.contains("public-keys/")
        );
        for missing in [
            "/nope",
            "/openstack/1999/meta_data.json",
            "/latest/meta-data/nope",
            "/openstack/latest/nope",
        ] {
            assert_eq!(serve_path(&c, missing), MetaAnswer::NotFound, "{missing}");
        }
        let none = ConfigDrive {
            user_data: None,
            ..cd()
        };
        assert_eq!(serve_path(&none, "/latest/user-data"), MetaAnswer::NotFound);
    }
}
