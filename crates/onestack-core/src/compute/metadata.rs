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
