#!/usr/bin/env python3
"""Turns compare.sh's JSON lines into a Markdown table with messs/peer ratios.

With --check, exits 1 if a messs run failed or a messs QoS 1 run lost or duplicated a
message (used by CI).
"""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
check = "--check" in sys.argv[2:]
brokers = []
for r in rows:
    if r["broker"] not in brokers:
        brokers.append(r["broker"])
by = {(r["scenario"], r["broker"]): r.get("result") for r in rows}
scenarios = []
for r in rows:
    if r["scenario"] not in scenarios:
        scenarios.append(r["scenario"])


def metrics(scenario, res):
    """(label, value, higher_is_better) for one result."""
    if res is None:
        return []
    if res.get("command") == "conn":
        o = res["outcome"]
        out = [("connects/s", o["connects_per_s"], True), ("failed", o["failed"], False)]
        if res.get("broker_rss_bytes_per_connection") is not None:
            out.append(("RSS B/conn", res["broker_rss_bytes_per_connection"], False))
        return out
    o = res["outcome"]
    out = [("delivered msg/s", o["delivered_per_s"], True)]
    if scenario.startswith("latency"):
        lat = o["latency_us"]
        out = [("p50 µs", lat["p50"], False), ("p99 µs", lat["p99"], False), ("p99.9 µs", lat["p999"], False)]
    if res.get("broker_cpu_us_per_delivered") is not None:
        out.append(("CPU µs/msg", res["broker_cpu_us_per_delivered"], False))
    out.append(("lost", o["lost"], False))
    out.append(("dups", o["duplicates"], False))
    return out


def fmt(v):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
    return f"{v:,}"


peers = [b for b in brokers if b != "messs"]
head = ["scenario", "metric"] + brokers + [f"messs/{p}" for p in peers]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for s in scenarios:
    labels = []
    vals = {}
    for b in brokers:
        for label, v, hib in metrics(s, by.get((s, b))):
            if label not in labels:
                labels.append(label)
            vals[(label, b)] = (v, hib)
    if not labels:
        print(f"| {s} | (failed) |" + " |" * (len(head) - 2))
        continue
    for label in labels:
        cells = [s, label] + [fmt(vals.get((label, b), (None, True))[0]) for b in brokers]
        for p in peers:
            m = vals.get((label, "messs"), (None, True))[0]
            q = vals.get((label, p), (None, True))[0]
            cells.append(f"{m / q:.2f}x" if m is not None and q else "n/a")
        print("| " + " | ".join(cells) + " |")

if check:
    problems = []
    for r in rows:
        if r["broker"] != "messs":
            continue
        if "error" in r:
            problems.append(f"{r['scenario']}: run failed")
            continue
        res = r["result"]
        if res.get("command") == "conn":
            if res["outcome"]["failed"]:
                problems.append(f"{r['scenario']}: {res['outcome']['failed']} connections failed")
        elif res.get("qos", 0) >= 1 and (res["outcome"]["lost"] or res["outcome"]["duplicates"]):
            problems.append(f"{r['scenario']}: lost {res['outcome']['lost']}, duplicates {res['outcome']['duplicates']}")
    if problems:
        print("compare check FAILED: " + "; ".join(problems), file=sys.stderr)
        sys.exit(1)
    print("compare check: messs runs complete, no QoS 1 loss or duplicates", file=sys.stderr)
