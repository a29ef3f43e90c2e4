//! Usage metering from the store's usage record: each event's figures hold until the
//! instance's next event, so a period's usage is a sum over exact intervals — resizes, moves,
//! stops and restarts of OneStack itself change nothing but what they really change.
//!
//! A stopped server keeps its allocation on its host (as in Nova, where only shelving frees it),
//! so it goes on counting instance-, vCPU-, RAM- and disk-hours; `running_hours` counts only the
//! time its guest ran.

use super::ComputeService;
use crate::policy::AuthContext;
use crate::{CoreError, CoreResult};
use chrono::NaiveDateTime;
use onestack_store::{InstanceRecord, UsageEvent};
use std::collections::{BTreeMap, HashMap};

/// Figures over a period. Hours are exact to the microsecond.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Metered {
    pub hours: f64,
    pub vcpu_hours: f64,
    pub memory_mb_hours: f64,
    pub disk_gb_hours: f64,
    pub running_hours: f64,
}

impl Metered {
    fn add_interval(&mut self, e: &UsageEvent, micros: i64) {
        let h = micros as f64 / 3_600_000_000.0;
        self.hours += h;
        self.vcpu_hours += h * e.vcpus as f64;
        self.memory_mb_hours += h * e.memory_mb as f64;
        self.disk_gb_hours += h * e.disk_gb as f64;
        if e.running() {
            self.running_hours += h;
        }
    }

    pub fn add(&mut self, o: &Metered) {
        self.hours += o.hours;
        self.vcpu_hours += o.vcpu_hours;
        self.memory_mb_hours += o.memory_mb_hours;
        self.disk_gb_hours += o.disk_gb_hours;
        self.running_hours += o.running_hours;
    }
}

/// The intervals of `events` (one instance's, in order) that fall in `[start, end)`; the last
/// event holds until `now`. A `delete` event ends the instance's usage.
fn intervals(
    events: &[UsageEvent],
    start: i64,
    end: i64,
    now: i64,
) -> impl Iterator<Item = (&UsageEvent, i64)> {
    events.iter().enumerate().filter_map(move |(i, e)| {
        if e.event == "delete" {
            return None;
        }
        let until = events.get(i + 1).map_or(now, |n| n.at_us);
        let micros = until.min(end) - e.at_us.max(start);
        (micros > 0).then_some((e, micros))
    })
}

/// One instance's usage of `[start, end)`.
pub fn meter(events: &[UsageEvent], start: i64, end: i64, now: i64) -> Metered {
    let mut m = Metered::default();
    for (e, micros) in intervals(events, start, end, now) {
        m.add_interval(e, micros);
    }
    m
}

/// Usage of `[start, end)` summed by a key of each interval's event (its host, its project).
pub fn meter_by<'a>(
    events: &'a [UsageEvent],
    start: i64,
    end: i64,
    now: i64,
    key: impl Fn(&'a UsageEvent) -> Option<&'a str>,
) -> BTreeMap<String, Metered> {
    let mut out: BTreeMap<String, Metered> = BTreeMap::new();
    for one in by_instance(events) {
        for (e, micros) in intervals(one, start, end, now) {
            if let Some(k) = key(e) {
                out.entry(k.to_string())
                    .or_default()
                    .add_interval(e, micros);
            }
        }
    }
    out
}

/// Splits events ordered by instance into each instance's run.
fn by_instance(events: &[UsageEvent]) -> impl Iterator<Item = &[UsageEvent]> {
    events.chunk_by(|a, b| a.instance_id == b.instance_id)
}

/// One server's use of a period (`os-simple-tenant-usage`).
#[derive(Clone, Debug)]
pub struct ServerUsage {
    pub instance: InstanceRecord,
    pub metered: Metered,
    /// When it was launched (Nova's `started_at`).
    pub started_at: String,
    pub ended_at: Option<String>,
}

/// A period, as the API gives it.
#[derive(Clone, Copy, Debug)]
pub struct Period {
    pub start: NaiveDateTime,
    pub end: NaiveDateTime,
}

impl Period {
    /// `start`/`end` as Nova accepts them; by default the last 24 hours to now.
    pub fn parse(start: Option<&str>, end: Option<&str>) -> CoreResult<Period> {
        let now = chrono::Utc::now().naive_utc();
        let bad = |what: &str, v: &str| {
            CoreError::BadRequest(format!("Invalid {what} time {v}: use YYYY-MM-DDTHH:MM:SS."))
        };
        let end = match end {
            Some(e) => parse_time(e).ok_or_else(|| bad("end", e))?,
            None => now,
        };
        let start = match start {
            Some(s) => parse_time(s).ok_or_else(|| bad("start", s))?,
            None => end - chrono::Duration::days(1),
        };
        if start > end {
            return Err(CoreError::BadRequest(
                "Invalid start time. The start time cannot occur after the end time.".into(),
            ));
        }
        Ok(Period { start, end })
    }

    fn micros(&self) -> (i64, i64) {
        (
            self.start.and_utc().timestamp_micros(),
            self.end.and_utc().timestamp_micros(),
        )
    }
}

pub fn parse_time(t: &str) -> Option<NaiveDateTime> {
    let t = t.trim().trim_end_matches('Z');
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d",
    ]
    .iter()
    .find_map(|f| {
        NaiveDateTime::parse_from_str(t, f).ok().or_else(|| {
            chrono::NaiveDate::parse_from_str(t, f)
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
    })
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl ComputeService {
    /// Usage of every server (deleted ones included) in the period, per server. `project` None
    /// = all projects (admin only).
    pub async fn usage(
        &self,
        ctx: &AuthContext,
        project: Option<&str>,
        period: Period,
    ) -> CoreResult<Vec<ServerUsage>> {
        match project {
            None => ctx.require_admin("os_compute_api:os-simple-tenant-usage:list")?,
            Some(p) if ctx.project_id() != Some(p) => {
                ctx.require_admin("os_compute_api:os-simple-tenant-usage:show")?
            }
            Some(_) => {}
        }
        let (start, end) = period.micros();
        let now = now_us();
        let events = self.store.usage_events(project, start, end).await?;
        let instances: HashMap<String, InstanceRecord> = self
            .store
            .list_instances(project, true)
            .await?
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        let mut out = Vec::new();
        for one in by_instance(&events) {
            let Some(inst) = instances.get(&one[0].instance_id) else {
                continue;
            };
            let metered = meter(one, start, end, now);
            if metered.hours <= 0.0 {
                continue;
            }
            let fmt = |us: i64| {
                chrono::DateTime::from_timestamp_micros(us)
                    .map(|t| t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string())
            };
            out.push(ServerUsage {
                instance: inst.clone(),
                metered,
                started_at: fmt(one[0].at_us).unwrap_or_default(),
                ended_at: one
                    .last()
                    .filter(|e| e.event == "delete")
                    .and_then(|e| fmt(e.at_us)),
            });
        }
        Ok(out)
    }

    /// Usage of the period per compute host (admin): what each host carried.
    pub async fn usage_by_host(
        &self,
        ctx: &AuthContext,
        period: Period,
    ) -> CoreResult<BTreeMap<String, Metered>> {
        ctx.require_admin("os_compute_api:os-simple-tenant-usage:list")?;
        let (start, end) = period.micros();
        let events = self.store.usage_events(None, start, end).await?;
        Ok(meter_by(&events, start, end, now_us(), |e| {
            e.host.as_deref()
        }))
    }
}

/// What a usage series is summed by.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GroupBy {
    Project,
    Host,
}

/// Usage over time: the period cut into `step`-long buckets (the last one may be shorter).
#[derive(Clone, Debug)]
pub struct Series {
    /// Each bucket's start, microseconds since the epoch.
    pub buckets: Vec<i64>,
    /// Per project or host, one figure per bucket.
    pub groups: BTreeMap<String, Vec<Metered>>,
}

/// At most this many buckets in one series (a year of days).
pub const MAX_BUCKETS: i64 = 366;

pub fn series<'a>(
    events: &'a [UsageEvent],
    start: i64,
    end: i64,
    step: i64,
    now: i64,
    key: impl Fn(&'a UsageEvent) -> Option<&'a str> + Copy,
) -> Series {
    let mut buckets = Vec::new();
    let mut t = start;
    while t < end && (buckets.len() as i64) < MAX_BUCKETS {
        buckets.push(t);
        t = t.saturating_add(step);
    }
    let mut groups: BTreeMap<String, Vec<Metered>> = BTreeMap::new();
    for (i, b) in buckets.iter().enumerate() {
        let until = buckets.get(i + 1).copied().unwrap_or(end);
        for (k, m) in meter_by(events, *b, until, now, key) {
            groups
                .entry(k)
                .or_insert_with(|| vec![Metered::default(); buckets.len()])[i] = m;
        }
    }
    Series { buckets, groups }
}

impl ComputeService {
    /// Usage over time by project (an admin sees all; others their own project) or by host
    /// (admin).
    pub async fn usage_series(
        &self,
        ctx: &AuthContext,
        group: GroupBy,
        period: Period,
        step_seconds: i64,
    ) -> CoreResult<Series> {
        let own = match group {
            GroupBy::Host => {
                ctx.require_admin("os_compute_api:os-simple-tenant-usage:list")?;
                None
            }
            GroupBy::Project if ctx.is_admin() => None,
            GroupBy::Project => Some(
                ctx.project_id()
                    .ok_or_else(|| {
                        CoreError::Forbidden("A project-scoped token is needed.".into())
                    })?
                    .to_string(),
            ),
        };
        let (start, end) = period.micros();
        if step_seconds < 60 {
            return Err(CoreError::BadRequest(
                "Invalid step: at least 60 seconds.".into(),
            ));
        }
        let step = step_seconds.saturating_mul(1_000_000);
        if (end - start) / step >= MAX_BUCKETS {
            return Err(CoreError::BadRequest(format!(
                "Invalid step: the period would have more than {MAX_BUCKETS} buckets."
            )));
        }
        let events = self.store.usage_events(own.as_deref(), start, end).await?;
        let now = now_us();
        Ok(match group {
            GroupBy::Project => series(&events, start, end, step, now, |e| {
                Some(e.project_id.as_str())
            }),
            GroupBy::Host => series(&events, start, end, step, now, |e| e.host.as_deref()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000_000;

    fn ev(
        seq: i64,
        at_h: f64,
        event: &str,
        state: &str,
        host: &str,
        dims: (i64, i64, i64),
    ) -> UsageEvent {
        UsageEvent {
            instance_id: "i".into(),
            seq,
            project_id: "p".into(),
            user_id: "u".into(),
            at_us: (at_h * H as f64) as i64,
            event: event.into(),
            vm_state: state.into(),
            host: Some(host.into()),
            flavor: "f".into(),
            vcpus: dims.0,
            memory_mb: dims.1,
            disk_gb: dims.2,
        }
    }

    /// Created at 10:00 as 1 vCPU / 512 MB / 1 GB on a; resized at 12:00 to 2 / 2048 / 20;
    /// stopped 13:00; moved to b 13:30; started 14:00; deleted 16:00.
    fn timeline() -> Vec<UsageEvent> {
        let small = (1, 512, 1);
        let big = (2, 2048, 20);
        vec![
            ev(1, 10.0, "create", "active", "a", small),
            ev(2, 12.0, "resize", "resized", "a", big),
            ev(3, 13.0, "stop", "stopped", "a", big),
            ev(4, 13.5, "move", "stopped", "b", big),
            ev(5, 14.0, "start", "active", "b", big),
            ev(6, 16.0, "delete", "deleted", "b", big),
        ]
    }

    #[test]
    fn a_whole_life_sums_each_interval_at_its_own_size() {
        let m = meter(&timeline(), 0, 24 * H, 30 * H);
        // 6 h in all; 2 h small, 4 h big.
        assert!((m.hours - 6.0).abs() < 1e-9);
        assert!((m.vcpu_hours - (2.0 * 1.0 + 4.0 * 2.0)).abs() < 1e-9);
        assert!((m.memory_mb_hours - (2.0 * 512.0 + 4.0 * 2048.0)).abs() < 1e-9);
        assert!((m.disk_gb_hours - (2.0 * 1.0 + 4.0 * 20.0)).abs() < 1e-9);
        // Stopped 13:00–14:00.
        assert!((m.running_hours - 5.0).abs() < 1e-9);
    }

    #[test]
    fn a_period_clips_the_intervals() {
        // 11:00–15:00: 1 h small, 3 h big, of which 1 h stopped.
        let m = meter(&timeline(), 11 * H, 15 * H, 30 * H);
        assert!((m.hours - 4.0).abs() < 1e-9);
        assert!((m.vcpu_hours - 7.0).abs() < 1e-9);
        assert!((m.running_hours - 3.0).abs() < 1e-9);
        // Before it existed, and after it was deleted: nothing.
        assert_eq!(meter(&timeline(), 0, 10 * H, 30 * H), Metered::default());
        assert_eq!(
            meter(&timeline(), 16 * H, 20 * H, 30 * H),
            Metered::default()
        );
    }

    #[test]
    fn a_live_server_counts_until_now() {
        let mut t = timeline();
        t.pop();
        let m = meter(&t, 0, 24 * H, 17 * H);
        assert!((m.hours - 7.0).abs() < 1e-9);
    }

    #[test]
    fn hosts_carry_what_ran_on_them() {
        let by = meter_by(&timeline(), 0, 24 * H, 30 * H, |e| e.host.as_deref());
        assert!((by["a"].hours - 3.5).abs() < 1e-9);
        assert!((by["b"].hours - 2.5).abs() < 1e-9);
        assert!((by["a"].vcpu_hours - (2.0 + 1.5 * 2.0)).abs() < 1e-9);
    }

    #[test]
    fn a_series_cuts_the_period_into_buckets() {
        // Two-hour buckets from 10:00 to 17:00: 10–12 small, 12–14 big (1 h stopped), 14–16
        // big, 16–17 nothing (the last bucket is one hour).
        let s = series(&timeline(), 10 * H, 17 * H, 2 * H, 30 * H, |e| {
            Some(e.project_id.as_str())
        });
        assert_eq!(s.buckets, vec![10 * H, 12 * H, 14 * H, 16 * H]);
        let p = &s.groups["p"];
        let vcpu: Vec<f64> = p.iter().map(|m| m.vcpu_hours).collect();
        assert_eq!(vcpu, vec![2.0, 4.0, 4.0, 0.0]);
        assert_eq!(p[1].running_hours, 1.0);
        let by_host = series(&timeline(), 10 * H, 17 * H, 2 * H, 30 * H, |e| {
            e.host.as_deref()
        });
        assert_eq!(by_host.groups["a"][1].hours, 1.5);
        assert_eq!(by_host.groups["b"][1].hours, 0.5);
    }

    #[test]
    fn periods_parse_as_nova_accepts_them() {
        assert!(Period::parse(Some("2026-12-01T10:00:00"), Some("2026-12-01T11:00:00")).is_ok());
        assert!(Period::parse(Some("2026-12-01"), Some("2026-12-02T00:00:00.5")).is_ok());
        assert!(Period::parse(Some("tomorrow"), None).is_err());
        assert!(Period::parse(Some("2026-12-02"), Some("2026-12-01")).is_err());
    }
}
