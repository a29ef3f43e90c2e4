"""Throughput of one kind of API call against a list of controllers: `threads` clients, each
sending its share of `count` calls to the controllers in turn (client i starts at controller
i mod n), keep-alive connections. Prints one JSON line: calls per second, p50/p95 latency, errors.

usage: bench_load.py CONFIG.json   (controllers, ports, token, mode, count, threads, image, ...)
"""
import http.client
import json
import sys
import threading
import time


def body_for(cfg, mode, n):
    if mode == "read":
        return "GET", "compute", "/v2.1/flavors/detail", None
    if mode == "network":
        return "POST", "network", "/v2.0/networks", {"network": {"name": f"bench-net-{cfg['tag']}-{n}"}}
    return "POST", "compute", "/v2.1/servers", {"server": {
        "name": f"bench-vm-{cfg['tag']}-{n}", "imageRef": cfg["image"], "flavorRef": cfg["flavor"],
        "networks": [{"uuid": cfg["network"]}]}}


def cleanup(cfg):
    """Deletes the networks a run made, so every run starts from the same state."""
    host, port = cfg["controllers"][0], cfg["ports"]["network"]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    headers = {"X-Auth-Token": cfg["token"]}
    conn.request("GET", "/v2.0/networks", headers=headers)
    nets = json.loads(conn.getresponse().read())["networks"]
    gone = 0
    for n in nets:
        if n["name"].startswith(f"bench-net-{cfg['tag']}-"):
            conn.request("DELETE", f"/v2.0/networks/{n['id']}", headers=headers)
            r = conn.getresponse()
            r.read()
            gone += r.status == 204
    print(json.dumps({"deleted": gone}))


def main():
    cfg = json.load(open(sys.argv[1]))
    if cfg["mode"] == "cleanup":
        return cleanup(cfg)
    mode, hosts = cfg["mode"], cfg["controllers"]
    want = {"read": 200, "network": 201, "server": 202}[mode]
    lat, errors, lock = [], [], threading.Lock()
    per = cfg["count"] // cfg["threads"]  # (count rounded down to a multiple of threads)

    def client(i):
        conns = {}
        for k in range(per):
            host = hosts[(i + k) % len(hosts)]
            method, service, path, body = body_for(cfg, mode, i * per + k)
            port = cfg["ports"][service]
            conn = conns.get((host, port))
            if conn is None:
                conn = conns[(host, port)] = http.client.HTTPConnection(host, port, timeout=60)
            data = None if body is None else json.dumps(body)
            t0 = time.perf_counter()
            try:
                conn.request(method, path, body=data, headers={
                    "X-Auth-Token": cfg["token"], "Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                ok = r.status == want
                status = r.status
            except OSError as e:
                conns.pop((host, port), None)
                ok, status = False, str(e)
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                if not ok:
                    errors.append(status)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(cfg["threads"])]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    print(json.dumps({"mode": mode, "controllers": len(hosts), "calls": len(lat),
                      "per_second": round(len(lat) / wall, 1),
                      "p50_ms": round(lat[len(lat) // 2] * 1000, 2),
                      "p95_ms": round(lat[int(len(lat) * 0.95)] * 1000, 2),
                      "errors": len(errors), "error_sample": errors[:3]}))


if __name__ == "__main__":
    main()
