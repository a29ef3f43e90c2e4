"""`/metrics` on the controller (api.metrics_port) and on the compute agent (compute.agent_port),
read with Prometheus' reference parser: request counters per service grow with CLI calls,
histograms are consistent, host gauges say what `openstack hypervisor show` says, and a booted
server shows in the servers-by-state and the agent's VMs-by-power-state gauges."""
import json
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import make_cloud
from test_compute_cli import demo, have_qemu

pytestmark = pytest.mark.skipif(not have_qemu(), reason="needs root, qemu-system-x86_64 and genisoimage")

SERVICES = ("identity", "compute", "image", "network", "volume", "dashboard")


def fetch(cloud, port, path="/metrics"):
    """(status, content type, body) of a GET inside the cloud's namespace."""
    def get():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                return r.status, r.headers.get("Content-Type"), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type"), ""
    return cloud.call_in_ns(get)


def scrape(cloud, port):
    status, ctype, text = fetch(cloud, port)
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4"), (status, ctype)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    check_histograms(families)
    return families, text


def check_histograms(families):
    """Cumulative buckets never decrease, and the +Inf bucket is the count, in every series."""
    for fam in families.values():
        if fam.type != "histogram":
            continue
        series = {}
        for s in fam.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            entry = series.setdefault(labels, {"buckets": [], "count": None, "sum": None})
            if s.name.endswith("_bucket"):
                entry["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                entry["count"] = s.value
            elif s.name.endswith("_sum"):
                entry["sum"] = s.value
        assert series, f"{fam.name} has no series"
        for labels, e in series.items():
            buckets = sorted(e["buckets"])
            counts = [n for _, n in buckets]
            assert counts == sorted(counts), (fam.name, labels, buckets)
            assert buckets[-1][0] == float("inf"), (fam.name, labels)
            assert buckets[-1][1] == e["count"], (fam.name, labels, buckets, e["count"])
            assert e["sum"] is not None and e["sum"] >= 0


def value(families, family, sample=None, **labels):
    """The sample of `family` with exactly these labels (None when absent)."""
    fam = families.get(family)
    for s in fam.samples if fam else []:
        if s.name == (sample or family) and s.labels == labels:
            return s.value
    return None


def requests_of(families, service):
    fam = families.get("onestack_api_requests")
    return sum(s.value for s in (fam.samples if fam else []) if s.labels.get("service") == service)


def wait_for(fn, timeout=30):
    deadline = time.time() + timeout
    while True:
        got = fn()
        if got or time.time() > deadline:
            return got
        time.sleep(0.5)


def test_controller_and_agent_metrics():
    with make_cloud() as cloud:
        cloud.up()
        hyps = wait_for(lambda: json.loads(cloud.os("hypervisor", "list", "-f", "json").stdout))
        assert len(hyps) == 1, hyps
        host = hyps[0]["Hypervisor Hostname"]

        before, _ = scrape(cloud, cloud.metrics_port)
        # One call per service, through the CLI (and the dashboard's login page over HTTP).
        cloud.os("token", "issue")
        demo(cloud, "server", "list")
        demo(cloud, "image", "list")
        demo(cloud, "network", "list")
        demo(cloud, "volume", "list")
        assert fetch(cloud, cloud.dashboard_port, "/")[0] == 200
        after, text = scrape(cloud, cloud.metrics_port)
        for service in SERVICES:
            assert requests_of(after, service) > requests_of(before, service), service
        fam = after["onestack_api_requests"]
        assert fam.type == "counter"
        assert {"service", "method", "status"} == set(fam.samples[0].labels)
        assert after["onestack_api_request_duration_seconds"].type == "histogram"
        # A request without a token is a 401, counted as such.
        unauthorized = value(after, "onestack_api_requests", "onestack_api_requests_total",
                             service="compute", method="GET", status="401") or 0
        assert fetch(cloud, cloud.compute_port, "/v2.1/servers")[0] == 401
        # Scheduler decisions are there from the start.
        assert value(after, "onestack_scheduler_decisions", "onestack_scheduler_decisions_total",
                     kind="boot", result="no_valid_host") == 0

        # Host capacity as the compute API reports it (`hypervisor show` needs os-aggregates,
        # which is not served yet; the long list has the same figures).
        hyp = json.loads(cloud.os("hypervisor", "list", "--long", "-f", "json").stdout)[0]
        assert value(after, "onestack_host_vcpus", host=host) == hyp["vCPUs"]
        assert value(after, "onestack_host_memory_mb", host=host) == hyp["Memory MB"]
        assert value(after, "onestack_host_vcpus_used", host=host) == hyp["vCPUs Used"] == 0
        assert value(after, "onestack_host_memory_mb_used", host=host) == hyp["Memory MB Used"] == 0
        assert value(after, "onestack_host_up", host=host) == 1
        assert value(after, "onestack_instances", vm_state="active") == 0
        assert value(after, "onestack_store_up") == 1

        # A server boots (a blank disk: QEMU runs, no guest needed).
        blank = cloud.root / "blank.raw"
        blank.write_bytes(b"\0" * (1 << 20))
        demo(cloud, "image", "create", "--file", str(blank), "--disk-format", "raw", "blank")
        srv = json.loads(demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "blank",
                              "--wait", "m1", "-f", "json").stdout)
        assert srv["status"] == "ACTIVE"
        booted, text = scrape(cloud, cloud.metrics_port)
        assert value(booted, "onestack_instances", vm_state="active") == 1
        assert value(booted, "onestack_scheduler_decisions", "onestack_scheduler_decisions_total",
                     kind="boot", result="placed") == 1
        assert value(booted, "onestack_host_vcpus_used", host=host) == 1
        assert value(booted, "onestack_host_memory_mb_used", host=host) == 512
        assert value(booted, "onestack_api_requests", "onestack_api_requests_total",
                     service="compute", method="GET", status="401") == unauthorized + 1
        # No tenant's ids or names in labels.
        assert srv["id"] not in text and "demo" not in text.replace(host, "")

        # The agent's own: reconcile passes and their durations, the spawn, its VM running.
        agent = wait_for(lambda: (lambda f: f if value(f, "onestack_agent_domains", state="running") == 1
                                  else None)(scrape(cloud, cloud.agent_port)[0]))
        assert agent, "the agent never showed its running VM"
        assert agent["onestack_agent_reconcile_duration_seconds"].type == "histogram"
        passes = value(agent, "onestack_agent_reconcile_passes", "onestack_agent_reconcile_passes_total",
                       result="ok")
        assert passes and passes >= 1
        assert value(agent, "onestack_agent_reconcile_duration_seconds",
                     "onestack_agent_reconcile_duration_seconds_count") >= 1
        assert value(agent, "onestack_agent_task_duration_seconds",
                     "onestack_agent_task_duration_seconds_count", task="spawning", result="ok") == 1
        assert value(agent, "onestack_agent_instances") == 1
        # Its own requests are counted (a scrape counts once answered: seen by the next).
        again, _ = scrape(cloud, cloud.agent_port)
        assert (value(again, "onestack_agent_http_requests", "onestack_agent_http_requests_total",
                      method="GET", status="200") or 0) >= 1
        # /metrics needs no token there; the agent's other endpoints still do.
        assert fetch(cloud, cloud.agent_port, f"/v1/instances/{srv['id']}/console")[0] == 401
        # Only the metrics listener serves them.
        assert fetch(cloud, cloud.compute_port, "/metrics")[0] == 404

        demo(cloud, "server", "delete", "--wait", "m1")
        gone = wait_for(lambda: (lambda f: f if value(f, "onestack_agent_domains", state="running") == 0
                                 else None)(scrape(cloud, cloud.agent_port)[0]))
        assert gone, "the deleted VM stayed in the agent's gauge"
        assert value(scrape(cloud, cloud.metrics_port)[0], "onestack_instances", vm_state="active") == 0
