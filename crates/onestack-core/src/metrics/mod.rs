//! Metrics in Prometheus' text exposition format (version 0.0.4), without a client library:
//! counters, gauges and histograms with label sets in one process-wide registry, and a writer
//! that families computed at scrape time (from the store, from the host) share with it.
//!
//! Label values must come from small fixed sets (service names, methods, status codes, states,
//! host names): never ids, names or anything a tenant chooses.

pub mod cloud;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard};

/// Prometheus' default buckets (seconds), for request latencies.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// For operations that take seconds to minutes (a VM's boot, a migration).
pub const SLOW_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// The `Content-Type` of a scrape's answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Label names are the code's own; values are owned so callers can pass formatted ones.
type LabelKey = Vec<(&'static str, String)>;

enum Series {
    Value(f64),
    Histogram {
        bounds: &'static [f64],
        /// Per bucket (not cumulative); the last slot counts what is above every bound.
        counts: Vec<u64>,
        sum: f64,
        count: u64,
    },
}

struct Family {
    help: &'static str,
    kind: Kind,
    series: BTreeMap<LabelKey, Series>,
}

/// Families by name, rendered in name order.
pub struct Registry {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

static GLOBAL: Registry = Registry::new();

/// The process's registry: what its `/metrics` shows.
pub fn global() -> &'static Registry {
    &GLOBAL
}

fn key(labels: &[(&'static str, &str)]) -> LabelKey {
    labels.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

impl Registry {
    pub const fn new() -> Registry {
        Registry {
            families: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, Family>> {
        // A panic elsewhere while holding the lock leaves the counts usable.
        self.families.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `f` to the series, created with `init` if new. A name registered as another kind
    /// is a bug: the sample is dropped rather than rendering an invalid family.
    fn with_series(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: &[(&'static str, &str)],
        init: impl FnOnce() -> Series,
        f: impl FnOnce(&mut Series),
    ) {
        let mut families = self.lock();
        let fam = families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            series: BTreeMap::new(),
        });
        if fam.kind != kind {
            tracing::error!(metric = name, "metric used as {kind:?} and {:?}", fam.kind);
            return;
        }
        f(fam.series.entry(key(labels)).or_insert_with(init));
    }

    fn add(&self, c: &Counter, labels: &[(&'static str, &str)], v: f64) {
        self.with_series(
            c.name,
            c.help,
            Kind::Counter,
            labels,
            || Series::Value(0.0),
            |s| {
                if let Series::Value(x) = s {
                    *x += v.max(0.0);
                }
            },
        );
    }

    fn set(&self, g: &Gauge, labels: &[(&'static str, &str)], v: f64) {
        self.with_series(
            g.name,
            g.help,
            Kind::Gauge,
            labels,
            || Series::Value(0.0),
            |s| {
                if let Series::Value(x) = s {
                    *x = v;
                }
            },
        );
    }

    fn observe(&self, h: &Histogram, labels: &[(&'static str, &str)], v: f64) {
        self.with_series(
            h.name,
            h.help,
            Kind::Histogram,
            labels,
            || Series::Histogram {
                bounds: h.buckets,
                counts: vec![0; h.buckets.len() + 1],
                sum: 0.0,
                count: 0,
            },
            |s| {
                if let Series::Histogram {
                    bounds,
                    counts,
                    sum,
                    count,
                } = s
                {
                    // `le` is inclusive: a value equal to a bound falls in that bucket.
                    let i = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len());
                    counts[i] += 1;
                    *sum += v;
                    *count += 1;
                }
            },
        );
    }

    /// Writes every family of this registry.
    pub fn render(&self, out: &mut Exposition) {
        let families = self.lock();
        for (name, fam) in families.iter() {
            out.family(name, fam.help, fam.kind);
            for (labels, s) in &fam.series {
                let labels: Vec<(&str, &str)> =
                    labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                match s {
                    Series::Value(v) => out.sample(name, &labels, *v),
                    Series::Histogram {
                        bounds,
                        counts,
                        sum,
                        count,
                    } => {
                        let bucket = format!("{name}_bucket");
                        let mut cumulative = 0;
                        for (b, n) in bounds.iter().zip(counts) {
                            cumulative += n;
                            out.sample_le(&bucket, &labels, &fmt_value(*b), cumulative as f64);
                        }
                        out.sample_le(&bucket, &labels, "+Inf", *count as f64);
                        out.sample(&format!("{name}_sum"), &labels, *sum);
                        out.sample(&format!("{name}_count"), &labels, *count as f64);
                    }
                }
            }
        }
    }

    /// The whole registry as exposition text.
    pub fn text(&self) -> String {
        let mut out = Exposition::default();
        self.render(&mut out);
        out.into_string()
    }
}

/// A counter family: its name ends in `_total`.
pub struct Counter {
    pub name: &'static str,
    pub help: &'static str,
}

impl Counter {
    pub const fn new(name: &'static str, help: &'static str) -> Counter {
        Counter { name, help }
    }

    pub fn inc(&self, labels: &[(&'static str, &str)]) {
        self.inc_in(global(), labels);
    }

    pub fn inc_in(&self, r: &Registry, labels: &[(&'static str, &str)]) {
        r.add(self, labels, 1.0);
    }

    /// Makes the series exist at 0, so a rate over it starts before its first event.
    pub fn declare(&self, labels: &[(&'static str, &str)]) {
        global().add(self, labels, 0.0);
    }
}

pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
}

impl Gauge {
    pub const fn new(name: &'static str, help: &'static str) -> Gauge {
        Gauge { name, help }
    }

    pub fn set(&self, labels: &[(&'static str, &str)], v: f64) {
        self.set_in(global(), labels, v);
    }

    pub fn set_in(&self, r: &Registry, labels: &[(&'static str, &str)], v: f64) {
        r.set(self, labels, v);
    }
}

pub struct Histogram {
    pub name: &'static str,
    pub help: &'static str,
    /// Upper bounds, ascending; `+Inf` is implied.
    pub buckets: &'static [f64],
}

impl Histogram {
    pub const fn new(name: &'static str, help: &'static str, buckets: &'static [f64]) -> Histogram {
        Histogram {
            name,
            help,
            buckets,
        }
    }

    pub fn observe(&self, labels: &[(&'static str, &str)], v: f64) {
        self.observe_in(global(), labels, v);
    }

    pub fn observe_in(&self, r: &Registry, labels: &[(&'static str, &str)], v: f64) {
        r.observe(self, labels, v);
    }
}

/// Exposition text being written: one `# HELP` and `# TYPE` per family, then its samples.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample of the family last begun (or one of its `_bucket`/`_sum`/`_count` series).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.line(name, labels, None, value);
    }

    fn sample_le(&mut self, name: &str, labels: &[(&str, &str)], le: &str, value: f64) {
        self.line(name, labels, Some(le), value);
    }

    fn line(&mut self, name: &str, labels: &[(&str, &str)], le: Option<&str>, value: f64) {
        self.text.push_str(name);
        let extra = le.map(|v| ("le", v));
        let mut all = labels.iter().copied().chain(extra).peekable();
        if all.peek().is_some() {
            self.text.push('{');
            for (i, (k, v)) in all.enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", fmt_value(value));
    }

    pub fn into_string(self) -> String {
        self.text
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// HELP text escapes backslash and newline (quotes stay as they are).
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Go's float syntax as Prometheus reads it: `+Inf`, `-Inf`, `NaN`, else the shortest decimal.
fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQS: Counter = Counter::new("t_requests_total", "Requests.");
    const LAT: Histogram = Histogram::new("t_seconds", "Latency.", &[0.25, 1.0]);
    const UP: Gauge = Gauge::new("t_up", "Up.");

    #[test]
    fn counters_and_gauges_render_with_help_and_type() {
        let r = Registry::new();
        REQS.inc_in(&r, &[("service", "compute"), ("status", "200")]);
        REQS.inc_in(&r, &[("service", "compute"), ("status", "200")]);
        REQS.inc_in(&r, &[("service", "image"), ("status", "404")]);
        UP.set_in(&r, &[], 1.0);
        UP.set_in(&r, &[], 0.0);
        assert_eq!(
            r.text(),
            "# HELP t_requests_total Requests.\n\
             # TYPE t_requests_total counter\n\
             t_requests_total{service=\"compute\",status=\"200\"} 2\n\
             t_requests_total{service=\"image\",status=\"404\"} 1\n\
             # HELP t_up Up.\n\
             # TYPE t_up gauge\n\
             t_up 0\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf() {
        let r = Registry::new();
        // 0.25 lies on a bound: `le` includes it.
        for v in [0.125, 0.25, 0.5, 3.0, 7.0] {
            LAT.observe_in(&r, &[("service", "identity")], v);
        }
        assert_eq!(
            r.text(),
            "# HELP t_seconds Latency.\n\
             # TYPE t_seconds histogram\n\
             t_seconds_bucket{service=\"identity\",le=\"0.25\"} 2\n\
             t_seconds_bucket{service=\"identity\",le=\"1\"} 3\n\
             t_seconds_bucket{service=\"identity\",le=\"+Inf\"} 5\n\
             t_seconds_sum{service=\"identity\"} 10.875\n\
             t_seconds_count{service=\"identity\"} 5\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut out = Exposition::default();
        out.family("t_x", "a \\ b\nc \"q\"", Kind::Gauge);
        out.sample("t_x", &[("host", "a\\b\"c\nd")], 1.5);
        assert_eq!(
            out.into_string(),
            "# HELP t_x a \\\\ b\\nc \"q\"\n\
             # TYPE t_x gauge\n\
             t_x{host=\"a\\\\b\\\"c\\nd\"} 1.5\n"
        );
    }

    #[test]
    fn special_values_use_prometheus_spelling() {
        assert_eq!(fmt_value(f64::INFINITY), "+Inf");
        assert_eq!(fmt_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(fmt_value(f64::NAN), "NaN");
        assert_eq!(fmt_value(0.005), "0.005");
        assert_eq!(fmt_value(42.0), "42");
    }

    #[test]
    fn a_name_keeps_its_first_kind() {
        let r = Registry::new();
        REQS.inc_in(&r, &[]);
        Gauge::new("t_requests_total", "x").set_in(&r, &[], 5.0);
        let text = r.text();
        assert!(
            text.contains("# TYPE t_requests_total counter\nt_requests_total 1\n"),
            "{text}"
        );
    }
}
