//! `/v2/images`: create, list, show, JSON-patch update, delete, tags and (de)activation.

use super::ImageState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, JsonBody};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use onestack_core::image::{self, schema, Image, ListQuery, SORT_KEYS};
use serde_json::{json, Map, Value};

/// The image as Glance renders it: every attribute, free-form properties at the top level, and
/// the `self`/`file`/`schema` links.
pub fn render(img: &Image) -> Value {
    let mut doc = image::document(img);
    doc.insert("self".into(), json!(format!("/v2/images/{}", img.id)));
    doc.insert("file".into(), json!(format!("/v2/images/{}/file", img.id)));
    doc.insert("schema".into(), json!("/v2/schemas/image"));
    Value::Object(doc)
}

pub async fn create(
    State(state): State<ImageState>,
    Auth(ctx): Auth,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    let Value::Object(doc) = body else {
        return Err(ApiError::bad_request(
            "The request body must be a JSON object.",
        ));
    };
    let img = state.images.create(&ctx, doc).await?;
    let location = format!("{}/v2/images/{}", state.base_url, img.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(render(&img)),
    )
        .into_response())
}

pub async fn show(
    State(state): State<ImageState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(render(&state.images.get(&ctx, &id).await?)))
}

const PATCH_TYPES: &[&str] = &["application/openstack-images-v2.1-json-patch"];

pub async fn update(
    State(state): State<ImageState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if !PATCH_TYPES.contains(&ctype.as_str()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Unsupported Content-Type '{ctype}': use application/openstack-images-v2.1-json-patch."
            ),
        ));
    }
    if body.len() > crate::MAX_BODY_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request Entity Too Large",
        ));
    }
    let value: Value = crate::extract::parse_json(&body)?;
    let ops = schema::parse_patch(&value)?;
    Ok(Json(render(&state.images.patch(&ctx, &id, &ops).await?)))
}

pub async fn delete(
    State(state): State<ImageState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.images.delete(&ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn add_tag(
    State(state): State<ImageState>,
    Auth(ctx): Auth,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state.images.add_tag(&ctx, &id, &tag).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn remove_tag(
    State(state): State<ImageState>,
    Auth(ctx): Auth,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state.images.remove_tag(&ctx, &id, &tag).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn deactivate(
    State(state): State<ImageState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.images.set_active(&ctx, &id, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn reactivate(
    State(state): State<ImageState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.images.set_active(&ctx, &id, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Glance's `limit_param_default` and `api_limit_max`.
const DEFAULT_LIMIT: usize = 25;
const MAX_LIMIT: usize = 1000;

fn parse_bool(key: &str, v: &str) -> ApiResult<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "Invalid value '{v}' for parameter '{key}': expected a boolean."
        ))),
    }
}

fn parse_int(key: &str, v: &str) -> ApiResult<i64> {
    v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
        ApiError::bad_request(format!(
            "Invalid value '{v}' for parameter '{key}': expected a non-negative integer."
        ))
    })
}

fn check_sort_key(k: &str) -> ApiResult<()> {
    if SORT_KEYS.contains(&k) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "Invalid sort key: {k}. It must be one of: {}.",
            SORT_KEYS.join(", ")
        )))
    }
}

fn sort_dir(d: &str) -> ApiResult<bool> {
    match d {
        "asc" => Ok(false),
        "desc" => Ok(true),
        _ => Err(ApiError::bad_request(format!(
            "Invalid sort direction: {d}. It must be asc or desc."
        ))),
    }
}

/// Parses Glance's list query: filters, the two sort syntaxes, marker and limit.
fn parse_list_query(raw: &str) -> ApiResult<ListQuery> {
    let mut q = ListQuery {
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    let mut sort_keys = Vec::new();
    let mut sort_dirs = Vec::new();
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        let (k, v) = (k.into_owned(), v.into_owned());
        match k.as_str() {
            "limit" => {
                let n = parse_int("limit", &v)? as usize;
                q.limit = n.min(MAX_LIMIT);
            }
            "marker" => q.marker = Some(v),
            "sort_key" => {
                for key in v.split(',') {
                    check_sort_key(key.trim())?;
                    sort_keys.push(key.trim().to_string());
                }
            }
            "sort_dir" => {
                for d in v.split(',') {
                    sort_dirs.push(sort_dir(d.trim())?);
                }
            }
            "sort" => {
                for part in v.split(',') {
                    let (key, dir) = part.split_once(':').unwrap_or((part, "desc"));
                    check_sort_key(key.trim())?;
                    q.sort.push((key.trim().to_string(), sort_dir(dir.trim())?));
                }
            }
            "visibility" => {
                if !["public", "private", "shared", "community", "all"].contains(&v.as_str()) {
                    return Err(ApiError::bad_request(format!(
                        "Invalid visibility value: {v}"
                    )));
                }
                q.visibility = Some(v);
            }
            "member_status" => {
                if !["pending", "accepted", "rejected", "all"].contains(&v.as_str()) {
                    return Err(ApiError::bad_request(format!(
                        "Invalid member_status value: {v}"
                    )));
                }
                q.member_status = Some(v);
            }
            "tag" => q.tags.push(v),
            "size_min" => q.size_min = Some(parse_int(&k, &v)?),
            "size_max" => q.size_max = Some(parse_int(&k, &v)?),
            "protected" => q.protected = Some(parse_bool(&k, &v)?),
            "os_hidden" => q.os_hidden = Some(parse_bool(&k, &v)?),
            "created_at" | "updated_at" => {
                let (op, value) = match v.split_once(':') {
                    Some((op, rest)) if ["gt", "gte", "lt", "lte", "eq", "neq"].contains(&op) => {
                        (op.to_string(), rest.to_string())
                    }
                    _ => ("eq".to_string(), v.clone()),
                };
                let ts = chrono::DateTime::parse_from_rfc3339(&value).map_err(|_| {
                    ApiError::bad_request(format!(
                        "Invalid time format for {k}: '{value}'. Use ISO 8601, e.g. 2026-01-31T12:00:00Z."
                    ))
                })?;
                let norm = ts
                    .with_timezone(&chrono::Utc)
                    .format("%Y-%m-%dT%H:%M:%SZ")
                    .to_string();
                q.time_filters.push((k, op, norm));
            }
            _ => q.filters.push((k, v)),
        }
    }
    if !sort_keys.is_empty() {
        if !q.sort.is_empty() {
            return Err(ApiError::bad_request(
                "The 'sort' parameter cannot be combined with 'sort_key'/'sort_dir'.",
            ));
        }
        if sort_dirs.len() > 1 && sort_dirs.len() != sort_keys.len() {
            return Err(ApiError::bad_request(
                "The number of sort_dir values must be one or match the number of sort_key values.",
            ));
        }
        let default_dir = sort_dirs.first().copied().unwrap_or(true);
        q.sort = sort_keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| (k, sort_dirs.get(i).copied().unwrap_or(default_dir)))
            .collect();
    } else if !sort_dirs.is_empty() {
        q.sort = vec![("created_at".into(), sort_dirs[0])];
    }
    Ok(q)
}

pub async fn list(
    State(state): State<ImageState>,
    Auth(ctx): Auth,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let raw = raw.unwrap_or_default();
    let q = parse_list_query(&raw)?;
    let (page, more) = state.images.list(&ctx, &q).await?;
    let rest: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes())
        .filter(|(k, _)| k != "marker")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let encode = |pairs: &[(String, String)]| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            s.append_pair(k, v);
        }
        s.finish()
    };
    let mut body = Map::new();
    let first = if rest.is_empty() {
        "/v2/images".to_string()
    } else {
        format!("/v2/images?{}", encode(&rest))
    };
    body.insert("first".into(), json!(first));
    body.insert("schema".into(), json!("/v2/schemas/images"));
    if more {
        if let Some(last) = page.last() {
            let mut pairs = rest.clone();
            pairs.insert(0, ("marker".to_string(), last.id.clone()));
            body.insert(
                "next".into(),
                json!(format!("/v2/images?{}", encode(&pairs))),
            );
        }
    }
    body.insert(
        "images".into(),
        Value::Array(page.iter().map(render).collect()),
    );
    Ok(Json(Value::Object(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_query_syntaxes() {
        let q =
            parse_list_query("sort_key=name&sort_dir=asc&limit=5000&tag=a&tag=b&os_distro=debian")
                .expect("parse");
        assert_eq!(q.sort, vec![("name".to_string(), false)]);
        assert_eq!(q.limit, MAX_LIMIT);
        assert_eq!(q.tags, vec!["a", "b"]);
        assert_eq!(
            q.filters,
            vec![("os_distro".to_string(), "debian".to_string())]
        );
        let q = parse_list_query("sort=name:asc,size").expect("parse");
        assert_eq!(q.sort, vec![("name".into(), false), ("size".into(), true)]);
        let q = parse_list_query("created_at=gte:2026-01-01T00:00:00%2B01:00").expect("parse");
        assert_eq!(
            q.time_filters,
            vec![(
                "created_at".into(),
                "gte".into(),
                "2025-12-31T23:00:00Z".into()
            )]
        );
        for bad in [
            "limit=-1",
            "limit=x",
            "sort_key=password",
            "sort_dir=up",
            "visibility=x",
            "protected=maybe",
            "created_at=gt:yesterday",
        ] {
            assert!(parse_list_query(bad).is_err(), "{bad} accepted");
        }
    }
}
