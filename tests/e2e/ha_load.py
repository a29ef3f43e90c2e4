"""A steady, bounded load on a cloud with several controllers, for the failover test: reads,
network creates and server creates, each sent to the controllers in turn and, when one cannot
be reached, to the next (as the agents do). Every create's outcome is recorded:

- acked:   the API answered 201/202 (it must exist afterwards, exactly once);
- refused: the API answered with an error (it must not exist);
- unknown: the answer never came (the controller died with it in flight; at most once).

Nothing is ever retried once sent, so nothing can exist twice. Run inside the cloud's network
namespace; prints one JSON document with the outcomes and per-call latencies.

usage: ha_load.py CONFIG.json   (controllers, ports, token, image, flavor, network, count, pace)
"""
import json
import sys
import time
import urllib.error
import urllib.request


def send(method, url, token, body=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("X-Auth-Token", token)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


def unreachable(exc):
    """A connection that was never made (refused, no route): the request was never received,
    so it may go to the next controller. A timeout or a reset may have been received."""
    reason = getattr(exc, "reason", exc)
    return isinstance(reason, (ConnectionRefusedError,)) or (
        isinstance(reason, OSError) and reason.errno in (113, 101))  # EHOSTUNREACH, ENETUNREACH


def main():
    cfg = json.load(open(sys.argv[1]))
    controllers = cfg["controllers"]
    out = {"creates": [], "reads": 0, "read_errors": 0, "failovers": 0, "latencies": []}
    turn = 0
    deadline = time.time() + cfg.get("max_seconds", 120)
    for i in range(cfg["count"]):
        if time.time() > deadline:
            break
        calls = [("read", "GET", "compute", "/v2.1/servers", None, None)]
        name = f"ha-net-{i}"
        calls.append(("network", "POST", "network", "/v2.0/networks", {"network": {"name": name}}, name))
        if i % cfg["server_every"] == 0:
            vm = f"ha-vm-{i}"
            calls.append(("server", "POST", "compute", "/v2.1/servers",
                          {"server": {"name": vm, "imageRef": cfg["image"], "flavorRef": cfg["flavor"],
                                      "networks": [{"uuid": cfg["network"]}]}}, vm))
        for kind, method, service, path, body, rname in calls:
            order = controllers[turn % len(controllers):] + controllers[:turn % len(controllers)]
            turn += 1
            outcome, status, rid, used = "unknown", None, None, None
            t0 = time.time()
            for n, host in enumerate(order):
                url = f"http://{host}:{cfg['ports'][service]}{path}"
                try:
                    status, answer = send(method, url, cfg["token"], body)
                    used = host
                except (urllib.error.URLError, OSError) as e:
                    if unreachable(e) and n + 1 < len(order):
                        out["failovers"] += 1
                        continue
                    outcome = "unknown"
                    used = host
                    break
                if kind == "read":
                    outcome = "ok" if status == 200 else "error"
                elif status in (201, 202):
                    outcome = "acked"
                    obj = (answer or {}).get(kind) or {}
                    rid = obj.get("id")
                else:
                    outcome = "refused"
                break
            out["latencies"].append(round(time.time() - t0, 4))
            if kind == "read":
                out["reads"] += 1
                if outcome != "ok":
                    out["read_errors"] += 1
            else:
                out["creates"].append({"kind": kind, "name": rname, "outcome": outcome, "status": status,
                                       "id": rid, "controller": used, "at": round(t0, 3)})
        time.sleep(cfg["pace"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
