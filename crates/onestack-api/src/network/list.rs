//! Neutron's list semantics over rendered resources: `?attr=value` filters (repeated = any of),
//! `fields`, `sort_key`/`sort_dir`, `limit`/`marker` with `<collection>_links`.

use crate::error::{ApiError, ApiResult};
use axum::Json;
use serde_json::{json, Map, Value};
use std::cmp::Ordering;

const CONTROL: &[&str] = &[
    "fields",
    "limit",
    "marker",
    "sort_key",
    "sort_dir",
    "page_reverse",
    "verbose",
];

fn pairs(raw: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub fn fields_param(raw: &str) -> Vec<String> {
    pairs(raw)
        .into_iter()
        .filter(|(k, _)| k == "fields")
        .flat_map(|(_, v)| v.split(',').map(str::to_string).collect::<Vec<_>>())
        .filter(|f| !f.is_empty())
        .collect()
}

pub fn project_fields(v: Value, fields: &[String]) -> Value {
    if fields.is_empty() {
        return v;
    }
    match v {
        Value::Object(o) => {
            Value::Object(o.into_iter().filter(|(k, _)| fields.contains(k)).collect())
        }
        other => other,
    }
}

/// Does `item[key]` match the filter value `want`?
fn matches(item: &Value, key: &str, want: &str) -> bool {
    // `fixed_ips=ip_address=198.18.1.5` / `fixed_ips=subnet_id=…`
    if key == "fixed_ips" {
        let (k, v) = want.split_once('=').unwrap_or(("ip_address", want));
        return item
            .get("fixed_ips")
            .and_then(Value::as_array)
            .is_some_and(|a| {
                a.iter()
                    .any(|f| f.get(k).and_then(Value::as_str) == Some(v))
            });
    }
    // tenant_id and project_id are one attribute.
    let got = item.get(key).or_else(|| match key {
        "tenant_id" => item.get("project_id"),
        _ => None,
    });
    match got {
        None => false,
        Some(Value::String(s)) => s == want,
        Some(Value::Bool(b)) => want.eq_ignore_ascii_case(if *b { "true" } else { "false" }),
        Some(Value::Number(n)) => n.to_string() == want,
        Some(Value::Null) => want.is_empty() || want == "None",
        Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(want)),
        Some(Value::Object(_)) => false,
    }
}

fn compare(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        (x, y) => x.to_string().cmp(&y.to_string()),
    }
}

pub fn respond(
    collection: &str,
    items: Vec<Value>,
    raw: &str,
    base_url: &str,
) -> ApiResult<Json<Value>> {
    let params = pairs(raw);
    // Filters: same key repeated means any of its values.
    let mut filters: Vec<(String, Vec<String>)> = Vec::new();
    for (k, v) in params
        .iter()
        .filter(|(k, _)| !CONTROL.contains(&k.as_str()))
    {
        match filters.iter_mut().find(|(fk, _)| fk == k) {
            Some((_, vs)) => vs.push(v.clone()),
            None => filters.push((k.clone(), vec![v.clone()])),
        }
    }
    let mut items: Vec<Value> = items
        .into_iter()
        .filter(|it| {
            filters
                .iter()
                .all(|(k, vs)| vs.iter().any(|v| matches(it, k, v)))
        })
        .collect();

    let keys: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "sort_key")
        .map(|(_, v)| v.as_str())
        .collect();
    let dirs: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "sort_dir")
        .map(|(_, v)| v.as_str())
        .collect();
    for d in &dirs {
        if *d != "asc" && *d != "desc" {
            return Err(ApiError::bad_request(format!(
                "{d} is an invalid value for sort_dir, valid values are 'asc' and 'desc'"
            )));
        }
    }
    if !keys.is_empty() {
        if let Some(bad) = keys
            .iter()
            .find(|k| items.first().is_some_and(|i| i.get(**k).is_none()))
        {
            return Err(ApiError::bad_request(format!(
                "{bad} is an invalid attribute for sort_keys"
            )));
        }
        items.sort_by(|a, b| {
            for (i, k) in keys.iter().enumerate() {
                let o = compare(
                    a.get(*k).unwrap_or(&Value::Null),
                    b.get(*k).unwrap_or(&Value::Null),
                );
                let o = if dirs.get(i) == Some(&"desc") {
                    o.reverse()
                } else {
                    o
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
    }

    let limit = match params.iter().find(|(k, _)| k == "limit") {
        Some((_, v)) => Some(v.parse::<usize>().map_err(|_| {
            ApiError::bad_request(format!(
                "Invalid input for limit. Reason: '{v}' is not an integer."
            ))
        })?),
        None => None,
    };
    if let Some((_, marker)) = params.iter().find(|(k, _)| k == "marker") {
        let pos = items
            .iter()
            .position(|i| i.get("id").and_then(Value::as_str) == Some(marker))
            .ok_or_else(|| ApiError::not_found(format!("Marker {marker} could not be found.")))?;
        items.drain(..=pos);
    }
    let mut body = Map::new();
    if let Some(limit) = limit.filter(|l| *l > 0) {
        if items.len() > limit {
            items.truncate(limit);
            if let Some(last) = items
                .last()
                .and_then(|i| i.get("id"))
                .and_then(Value::as_str)
            {
                let mut s = form_urlencoded::Serializer::new(String::new());
                for (k, v) in params.iter().filter(|(k, _)| k != "marker") {
                    s.append_pair(k, v);
                }
                s.append_pair("marker", last);
                body.insert(
                    format!("{collection}_links"),
                    json!([{"rel": "next", "href": format!("{base_url}/v2.0/{}?{}", collection.replace('_', "-"), s.finish())}]),
                );
            }
        }
    }
    let fields = fields_param(raw);
    let items: Vec<Value> = items
        .into_iter()
        .map(|i| project_fields(i, &fields))
        .collect();
    body.insert(collection.to_string(), Value::Array(items));
    Ok(Json(Value::Object(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items() -> Vec<Value> {
        vec![
            json!({"id": "a", "name": "x", "admin_state_up": true, "project_id": "p1", "fixed_ips": [{"ip_address": "198.18.1.5", "subnet_id": "s"}]}),
            json!({"id": "b", "name": "y", "admin_state_up": false, "project_id": "p2", "fixed_ips": []}),
            json!({"id": "c", "name": "x", "admin_state_up": true, "project_id": "p2", "fixed_ips": []}),
        ]
    }

    fn ids(v: &Value, c: &str) -> Vec<String> {
        v[c].as_array()
            .expect("list")
            .iter()
            .map(|i| i["id"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn filters_fields_sort_and_pages() {
        let Json(v) = respond("ports", items(), "name=x", "http://h").expect("ok");
        assert_eq!(ids(&v, "ports"), ["a", "c"]);
        let Json(v) = respond(
            "ports",
            items(),
            "admin_state_up=False&tenant_id=p2",
            "http://h",
        )
        .expect("ok");
        assert_eq!(ids(&v, "ports"), ["b"]);
        let Json(v) = respond(
            "ports",
            items(),
            "fixed_ips=ip_address%3D198.18.1.5",
            "http://h",
        )
        .expect("ok");
        assert_eq!(ids(&v, "ports"), ["a"]);
        let Json(v) = respond("ports", items(), "id=a&id=b", "http://h").expect("ok");
        assert_eq!(ids(&v, "ports"), ["a", "b"]);
        let Json(v) = respond(
            "ports",
            items(),
            "sort_key=name&sort_dir=desc&sort_key=id&sort_dir=asc",
            "http://h",
        )
        .expect("ok");
        assert_eq!(ids(&v, "ports"), ["b", "a", "c"]);
        let Json(v) = respond("ports", items(), "limit=2", "http://h").expect("ok");
        assert_eq!(ids(&v, "ports"), ["a", "b"]);
        let next = v["ports_links"][0]["href"]
            .as_str()
            .expect("next")
            .to_string();
        assert!(next.ends_with("limit=2&marker=b"), "{next}");
        let Json(v) = respond("ports", items(), "limit=2&marker=b", "http://h").expect("ok");
        assert_eq!(ids(&v, "ports"), ["c"]);
        assert!(v.get("ports_links").is_none());
        let Json(v) = respond("ports", items(), "fields=id&fields=name", "http://h").expect("ok");
        assert_eq!(v["ports"][0], json!({"id": "a", "name": "x"}));
        assert!(respond("ports", items(), "marker=zz", "http://h").is_err());
        assert!(respond("ports", items(), "sort_dir=up", "http://h").is_err());
        assert!(respond("ports", items(), "limit=x", "http://h").is_err());
    }
}
