//! Operator views: hypervisors (real host figures from the agents), services, availability
//! zones, and the caller's absolute limits.

use super::ComputeState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, JsonBody};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use onestack_core::compute::usage::{parse_time, GroupBy, Metered, Period, ServerUsage};
use onestack_core::policy::AuthContext;
use onestack_store::{HostRecord, HostUsage};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

fn state_of(s: &ComputeState, h: &HostRecord) -> &'static str {
    if s.compute.host_alive(h) {
        "up"
    } else {
        "down"
    }
}

fn status_of(h: &HostRecord) -> &'static str {
    if h.enabled {
        "enabled"
    } else {
        "disabled"
    }
}

fn hypervisor_detail(s: &ComputeState, h: &HostRecord, u: &HostUsage) -> Value {
    json!({
        "id": h.num,
        "hypervisor_hostname": h.host,
        "state": state_of(s, h),
        "status": status_of(h),
        "vcpus": h.vcpus,
        "memory_mb": h.memory_mb,
        "local_gb": h.local_gb,
        "vcpus_used": u.vcpus,
        "memory_mb_used": u.memory_mb,
        "local_gb_used": u.disk_gb,
        "free_ram_mb": h.memory_mb - u.memory_mb,
        "free_disk_gb": h.local_gb - u.disk_gb,
        "hypervisor_type": h.hypervisor_type,
        "hypervisor_version": h.hypervisor_version,
        "current_workload": 0,
        "running_vms": u.instances,
        "disk_available_least": h.local_gb - u.disk_gb,
        "host_ip": h.host_ip,
        "cpu_info": h.cpu_info,
        "service": {"host": h.host, "id": h.num, "disabled_reason": h.disabled_reason},
    })
}

async fn hosts_with_usage(
    s: &ComputeState,
    ctx: &AuthContext,
    rule: &str,
) -> ApiResult<Vec<(HostRecord, HostUsage)>> {
    Ok(s.compute.hosts_with_usage(ctx, rule).await?)
}

pub async fn hypervisors(State(s): State<ComputeState>, Auth(ctx): Auth) -> ApiResult<Json<Value>> {
    let list: Vec<Value> = hosts_with_usage(&s, &ctx, "os_compute_api:os-hypervisors:list")
        .await?
        .iter()
        .map(|(h, _)| {
            json!({"id": h.num, "hypervisor_hostname": h.host, "state": state_of(&s, h),
                   "status": status_of(h)})
        })
        .collect();
    Ok(Json(json!({"hypervisors": list})))
}

pub async fn hypervisors_detail(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
) -> ApiResult<Json<Value>> {
    let list: Vec<Value> = hosts_with_usage(&s, &ctx, "os_compute_api:os-hypervisors:list-detail")
        .await?
        .iter()
        .map(|(h, u)| hypervisor_detail(&s, h, u))
        .collect();
    Ok(Json(json!({"hypervisors": list})))
}

pub async fn hypervisor(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(id): Path<std::collections::HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let want = id.get("id").cloned().unwrap_or_default();
    let all = hosts_with_usage(&s, &ctx, "os_compute_api:os-hypervisors:show").await?;
    let found = all
        .iter()
        .find(|(h, _)| h.num.to_string() == want)
        .ok_or_else(|| ApiError::not_found(format!("Hypervisor {want} could not be found.")))?;
    Ok(Json(
        json!({"hypervisor": hypervisor_detail(&s, &found.0, &found.1)}),
    ))
}

/// `GET /os-hypervisors/{id}/uptime`: the host's `uptime(1)` line, from its agent; 501 (as
/// Nova answers when its driver cannot tell) when the agent does not answer.
pub async fn hypervisor_uptime(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(id): Path<std::collections::HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let want = id.get("id").cloned().unwrap_or_default();
    let hosts = hosts_with_usage(&s, &ctx, "os_compute_api:os-hypervisors:uptime").await?;
    let h = hosts
        .iter()
        .map(|(h, _)| h)
        .find(|h| h.num.to_string() == want)
        .ok_or_else(|| ApiError::not_found(format!("Hypervisor {want} could not be found.")))?;
    let uptime = super::internal::host_uptime(&s, h).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "Virt driver does not implement host uptime.",
        )
    })?;
    let up = s.compute.host_alive(h);
    Ok(Json(json!({"hypervisor": {
        "id": h.num,
        "hypervisor_hostname": h.host,
        "state": if up { "up" } else { "down" },
        "status": if h.enabled { "enabled" } else { "disabled" },
        "uptime": uptime,
    }})))
}

pub async fn hypervisor_statistics(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
) -> ApiResult<Json<Value>> {
    let all = hosts_with_usage(&s, &ctx, "os_compute_api:os-hypervisors:statistics").await?;
    let sum = |f: &dyn Fn(&(HostRecord, HostUsage)) -> i64| all.iter().map(f).sum::<i64>();
    Ok(Json(json!({"hypervisor_statistics": {
        "count": all.len(),
        "vcpus": sum(&|(h, _)| h.vcpus),
        "memory_mb": sum(&|(h, _)| h.memory_mb),
        "local_gb": sum(&|(h, _)| h.local_gb),
        "vcpus_used": sum(&|(_, u)| u.vcpus),
        "memory_mb_used": sum(&|(_, u)| u.memory_mb),
        "local_gb_used": sum(&|(_, u)| u.disk_gb),
        "free_ram_mb": sum(&|(h, u)| h.memory_mb - u.memory_mb),
        "free_disk_gb": sum(&|(h, u)| h.local_gb - u.disk_gb),
        "current_workload": 0,
        "running_vms": sum(&|(_, u)| u.instances),
        "disk_available_least": sum(&|(h, u)| h.local_gb - u.disk_gb),
    }})))
}

fn service(s: &ComputeState, h: &HostRecord) -> Value {
    json!({
        "id": h.num,
        "binary": "nova-compute",
        "host": h.host,
        "zone": h.availability_zone,
        "status": status_of(h),
        "state": state_of(s, h),
        "updated_at": chrono_from_micros(h.last_seen),
        "disabled_reason": h.disabled_reason,
    })
}

fn chrono_from_micros(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    match chrono::DateTime::from_timestamp(secs, (micros * 1000) as u32) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
        None => String::new(),
    }
}

pub async fn services(State(s): State<ComputeState>, Auth(ctx): Auth) -> ApiResult<Json<Value>> {
    let hosts = hosts_with_usage(&s, &ctx, "os_compute_api:os-services:list").await?;
    let list: Vec<Value> = hosts.iter().map(|(h, _)| service(&s, h)).collect();
    Ok(Json(json!({"services": list})))
}

/// `PUT /os-services/{enable|disable|disable-log-reason}` with `{"host", "binary"}`.
pub async fn service_update(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<std::collections::HashMap<String, String>>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let action = p.get("id").cloned().unwrap_or_default();
    let host = body
        .get("host")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("Invalid input for field/attribute host."))?;
    let binary = body
        .get("binary")
        .and_then(Value::as_str)
        .unwrap_or("nova-compute");
    if binary != "nova-compute" {
        return Err(ApiError::not_found(format!(
            "Service {binary} on host {host} could not be found."
        )));
    }
    let reason = body.get("disabled_reason").and_then(Value::as_str);
    let h = match action.as_str() {
        "enable" => s.compute.set_host_enabled(&ctx, host, true, None).await?,
        "disable" => s.compute.set_host_enabled(&ctx, host, false, None).await?,
        "disable-log-reason" => {
            let r = reason
                .filter(|r| !r.is_empty() && r.len() <= 255)
                .ok_or_else(|| ApiError::bad_request("Missing disabled reason field"))?;
            s.compute
                .set_host_enabled(&ctx, host, false, Some(r))
                .await?
        }
        "force-down" => {
            let down = body
                .get("forced_down")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            s.compute.set_host_forced_down(&ctx, host, down).await?
        }
        _ => return Err(ApiError::not_found("Unknown action")),
    };
    let mut v = json!({"host": h.host, "binary": "nova-compute", "status": status_of(&h)});
    if let (Some(r), Some(o)) = (&h.disabled_reason, v.as_object_mut()) {
        o.insert("disabled_reason".into(), json!(r));
    }
    Ok(Json(json!({"service": v})))
}

/// Removes a compute host that holds no servers (its agent re-registers if it comes back).
pub async fn service_delete(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<std::collections::HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    let id = p.get("id").cloned().unwrap_or_default();
    s.compute.delete_service(&ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn availability_zones(
    State(s): State<ComputeState>,
    Auth(_ctx): Auth,
) -> ApiResult<Json<Value>> {
    let zones = s.compute.availability_zones().await?;
    let list: Vec<Value> = zones
        .iter()
        .map(|(z, up, _)| json!({"zoneName": z, "zoneState": {"available": up}, "hosts": null}))
        .collect();
    Ok(Json(json!({"availabilityZoneInfo": list})))
}

pub async fn availability_zones_detail(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
) -> ApiResult<Json<Value>> {
    let zones = s.compute.availability_zones_detail(&ctx).await?;
    let list: Vec<Value> = zones
        .iter()
        .map(|(z, up, hosts)| {
            let mut hs = serde_json::Map::new();
            for h in hosts {
                hs.insert(
                    h.host.clone(),
                    json!({"nova-compute": {"available": s.compute.host_alive(h),
                           "active": h.enabled, "updated_at": chrono_from_micros(h.last_seen)}}),
                );
            }
            json!({"zoneName": z, "zoneState": {"available": up},
                   "hosts": if hs.is_empty() { Value::Null } else { Value::Object(hs) }})
        })
        .collect();
    Ok(Json(json!({"availabilityZoneInfo": list})))
}

pub async fn limits(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let project = s
        .compute
        .limits_project(&ctx, query.get("tenant_id").map(String::as_str))?;
    let q = match &project {
        Some(p) => s.compute.quota(p).await?,
        None => s.compute.config().quota,
    };
    let (n, cores, ram) = match &project {
        Some(p) => s
            .compute
            .store()
            .count_live_instances(p)
            .await
            .map_err(|e| ApiError::from(onestack_core::CoreError::from(e)))?,
        None => (0, 0, 0),
    };
    Ok(Json(json!({"limits": {"rate": [], "absolute": {
        "maxServerMeta": q.metadata_items,
        "maxPersonality": 5,
        "maxPersonalitySize": 10240,
        "maxImageMeta": 128,
        "maxTotalKeypairs": q.key_pairs,
        "maxSecurityGroupRules": 20,
        "maxSecurityGroups": 10,
        "maxTotalCores": q.cores,
        "maxTotalFloatingIps": 10,
        "maxTotalInstances": q.instances,
        "maxTotalRAMSize": q.ram_mb,
        "maxServerGroups": 10,
        "maxServerGroupMembers": 10,
        "totalCoresUsed": cores,
        "totalInstancesUsed": n,
        "totalRAMUsed": ram,
        "totalSecurityGroupsUsed": 0,
        "totalFloatingIpsUsed": 0,
        "totalServerGroupsUsed": 0,
    }}})))
}

fn usage_doc(project: &str, period: &Period, rows: &[&ServerUsage], detailed: bool) -> Value {
    let fmt = |t: &chrono::NaiveDateTime| t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string();
    let mut total = Metered::default();
    for r in rows {
        total.add(&r.metered);
    }
    let mut doc = json!({
        "tenant_id": project,
        "start": fmt(&period.start),
        "stop": fmt(&period.end),
        "total_hours": total.hours,
        "total_vcpus_usage": total.vcpu_hours,
        "total_memory_mb_usage": total.memory_mb_hours,
        "total_local_gb_usage": total.disk_gb_hours,
    });
    if detailed {
        let now = chrono::Utc::now().naive_utc();
        let list: Vec<Value> = rows
            .iter()
            .map(|r| {
                let i = &r.instance;
                let state = if i.deleted {
                    "terminated".to_string()
                } else {
                    i.vm_state.clone()
                };
                let started = parse_time(&r.started_at).unwrap_or(now);
                let ended = r.ended_at.as_deref().and_then(parse_time).unwrap_or(now);
                json!({
                    "instance_id": i.id, "name": i.name, "hours": r.metered.hours,
                    "memory_mb": i.memory_mb, "local_gb": i.root_gb + i.ephemeral_gb,
                    "vcpus": i.vcpus, "tenant_id": i.project_id, "flavor": i.flavor_name,
                    "started_at": r.started_at, "ended_at": r.ended_at, "state": state,
                    "uptime": (ended - started).num_seconds(),
                })
            })
            .collect();
        if let Some(o) = doc.as_object_mut() {
            o.insert("server_usages".into(), json!(list));
        }
    }
    doc
}

fn period_of(q: &HashMap<String, String>) -> ApiResult<Period> {
    Ok(Period::parse(
        q.get("start").map(String::as_str),
        q.get("end").map(String::as_str),
    )?)
}

/// `GET /os-simple-tenant-usage?start&end&detailed=1` (admin): one entry per project.
pub async fn usage_list(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let period = period_of(&q)?;
    let rows = s.compute.usage(&ctx, None, period).await?;
    let detailed = q
        .get("detailed")
        .is_some_and(|d| d == "1" || d.eq_ignore_ascii_case("true"));
    let mut projects: BTreeMap<&str, Vec<&ServerUsage>> = BTreeMap::new();
    for r in &rows {
        projects
            .entry(r.instance.project_id.as_str())
            .or_default()
            .push(r);
    }
    let list: Vec<Value> = projects
        .iter()
        .map(|(p, rs)| usage_doc(p, &period, rs, detailed))
        .collect();
    Ok(Json(json!({"tenant_usages": list})))
}

/// `GET /os-simple-tenant-usage/{project}`: the caller's own project, or any for an admin.
pub async fn usage_show(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<HashMap<String, String>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let project = p.get("project").cloned().unwrap_or_default();
    let period = period_of(&q)?;
    let rows = s.compute.usage(&ctx, Some(&project), period).await?;
    let refs: Vec<&ServerUsage> = rows.iter().collect();
    let doc = if refs.is_empty() {
        json!({})
    } else {
        usage_doc(&project, &period, &refs, true)
    };
    Ok(Json(json!({"tenant_usage": doc})))
}

/// `GET /os-onestack-host-usage?start&end` (admin; a OneStack extension, as Nova has no such
/// report): what each compute host carried over the period, in the same figures.
pub async fn host_usage_list(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let period = period_of(&q)?;
    let by_host = s.compute.usage_by_host(&ctx, period).await?;
    let fmt = |t: &chrono::NaiveDateTime| t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string();
    let list: Vec<Value> = by_host
        .iter()
        .map(|(h, m)| {
            json!({
                "host": h, "start": fmt(&period.start), "stop": fmt(&period.end),
                "total_hours": m.hours, "total_vcpus_usage": m.vcpu_hours,
                "total_memory_mb_usage": m.memory_mb_hours,
                "total_local_gb_usage": m.disk_gb_hours,
                "total_running_hours": m.running_hours,
            })
        })
        .collect();
    Ok(Json(json!({"host_usages": list})))
}

/// `GET /os-aggregates` (admin): OneStack has no host aggregates (availability zones are set
/// per host), so the list is empty — what `openstack hypervisor show` reads to name a host's
/// aggregates.
pub async fn aggregate_list(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({"aggregates": s.compute.list_aggregates(&ctx)?}),
    ))
}

/// `GET /os-onestack-usage-series?start&end&step=SECONDS&group_by=project|host` (a OneStack
/// extension, what the dashboard's charts draw): the period in `step`-long buckets, each with
/// the figures of `os-simple-tenant-usage`, per project (admins all, others their own) or per
/// host (admin).
pub async fn usage_series(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let period = period_of(&q)?;
    let group = match q.get("group_by").map(String::as_str) {
        None | Some("project") => GroupBy::Project,
        Some("host") => GroupBy::Host,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid group_by {other}: use project or host."
            )))
        }
    };
    let step = match q.get("step") {
        None => 86_400,
        Some(v) => v
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("Invalid step {v}: seconds expected.")))?,
    };
    let series = s.compute.usage_series(&ctx, group, period, step).await?;
    let fmt = |us: &i64| {
        chrono::DateTime::from_timestamp_micros(*us)
            .map(|t| t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string())
    };
    let figures = |ms: &[Metered], f: fn(&Metered) -> f64| ms.iter().map(f).collect::<Vec<_>>();
    let groups: Vec<Value> = series
        .groups
        .iter()
        .map(|(k, ms)| {
            json!({
                "key": k,
                "total_hours": figures(ms, |m| m.hours),
                "total_vcpus_usage": figures(ms, |m| m.vcpu_hours),
                "total_memory_mb_usage": figures(ms, |m| m.memory_mb_hours),
                "total_local_gb_usage": figures(ms, |m| m.disk_gb_hours),
                "total_running_hours": figures(ms, |m| m.running_hours),
            })
        })
        .collect();
    Ok(Json(json!({"usage_series": {
        "group_by": if group == GroupBy::Host { "host" } else { "project" },
        "start": fmt(&period.start.and_utc().timestamp_micros()),
        "stop": fmt(&period.end.and_utc().timestamp_micros()),
        "step": step,
        "buckets": series.buckets.iter().map(fmt).collect::<Vec<_>>(),
        "groups": groups,
    }})))
}

/// The project of an `os-quota-sets` path (the routes also live under `/v2.1/{project_id}`).
#[derive(serde::Deserialize)]
pub struct QuotaPath {
    project: String,
}

/// `os-quota-sets/{project}`: Nova's quota set of a project (2.1 keys).
fn quota_set(q: &onestack_core::compute::Quota, id: Option<&str>) -> Value {
    let mut o = serde_json::Map::new();
    if let Some(id) = id {
        o.insert("id".into(), json!(id));
    }
    for k in onestack_core::compute::quota::QUOTA_KEYS {
        o.insert(k.into(), json!(q.get(k)));
    }
    Value::Object(o)
}

pub async fn quota_show(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(QuotaPath { project }): Path<QuotaPath>,
) -> ApiResult<Json<Value>> {
    s.compute.check_quota_read(&ctx, &project)?;
    let q = s.compute.quota(&project).await?;
    Ok(Json(json!({"quota_set": quota_set(&q, Some(&project))})))
}

pub async fn quota_defaults(
    State(s): State<ComputeState>,
    Auth(_ctx): Auth,
    Path(QuotaPath { project }): Path<QuotaPath>,
) -> Json<Value> {
    Json(json!({"quota_set": quota_set(&s.compute.config().quota, Some(&project))}))
}

pub async fn quota_detail(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(QuotaPath { project }): Path<QuotaPath>,
) -> ApiResult<Json<Value>> {
    s.compute.check_quota_read(&ctx, &project)?;
    let q = s.compute.quota(&project).await?;
    let (n, cores, ram) = s
        .compute
        .store()
        .count_live_instances(&project)
        .await
        .map_err(|e| ApiError::from(onestack_core::CoreError::from(e)))?;
    let mut o = serde_json::Map::new();
    o.insert("id".into(), json!(project));
    for k in onestack_core::compute::quota::QUOTA_KEYS {
        let in_use = match k {
            "instances" => n,
            "cores" => cores,
            "ram" => ram,
            _ => 0,
        };
        o.insert(
            k.into(),
            json!({"limit": q.get(k), "in_use": in_use, "reserved": 0}),
        );
    }
    Ok(Json(json!({"quota_set": o})))
}

pub async fn quota_update(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(QuotaPath { project }): Path<QuotaPath>,
    crate::extract::JsonBody(body): crate::extract::JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let o = body
        .get("quota_set")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            ApiError::bad_request(
                "Invalid input for field/attribute quota_set. Value must be an object.",
            )
        })?;
    let mut values = std::collections::BTreeMap::new();
    let mut force = false;
    for (k, v) in o {
        if k == "force" {
            force = v.as_bool().unwrap_or(false);
            continue;
        }
        let n = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(t) => t.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid input for field/attribute {k}. Value: {v}. It must be an integer."
            ))
        })?;
        values.insert(k.clone(), n);
    }
    let q = s.compute.set_quota(&ctx, &project, &values, force).await?;
    Ok(Json(json!({"quota_set": quota_set(&q, None)})))
}

pub async fn quota_delete(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(QuotaPath { project }): Path<QuotaPath>,
) -> ApiResult<axum::http::StatusCode> {
    s.compute.delete_quota(&ctx, &project).await?;
    Ok(axum::http::StatusCode::ACCEPTED)
}
