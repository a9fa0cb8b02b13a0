#!/usr/bin/env python3
"""Turns transports.sh's JSON lines into one Markdown table: a row per broker and
transport, a column per figure (with messs/Mosquitto ratios on the same transport below).

With --check, exits 1 if a messs run failed or a messs QoS 1 run lost or duplicated a
message (used by CI)."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
check = "--check" in sys.argv[2:]
problems = 0
by = {(r["scenario"], r["broker"], r["transport"]): r.get("result") for r in rows}
pairs = []
for r in rows:
    if (r["broker"], r["transport"]) not in pairs:
        pairs.append((r["broker"], r["transport"]))
order = ["tcp", "tls", "ws", "wss", "quic"]
pairs.sort(key=lambda p: (order.index(p[1]) if p[1] in order else 9, p[0] != "messs"))

COLUMNS = [
    ("QoS 0 fan-in msg/s", "qos0-fan-in", lambda r: r["outcome"]["delivered_per_s"], True),
    ("QoS 1 fan-in msg/s", "qos1-fan-in", lambda r: r["outcome"]["delivered_per_s"], True),
    ("p99 µs at 1k msg/s", "latency-1k", lambda r: r["outcome"]["latency_us"]["p99"], False),
    ("connects/s", "connect-storm", lambda r: r["outcome"]["connects_per_s"], True),
    ("RSS B/idle conn", "idle-5k", lambda r: r.get("broker_rss_bytes_per_connection"), False),
]


def value(broker, transport, column):
    _, scenario, get, _ = column
    res = by.get((scenario, broker, transport))
    if res is None:
        return None
    try:
        return get(res)
    except (KeyError, TypeError):
        return None


def fmt(v):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
    return f"{v:,}"


print("| transport | broker | " + " | ".join(c[0] for c in COLUMNS) + " |")
print("|---|---|" + "---|" * len(COLUMNS))
for broker, transport in pairs:
    cells = [transport, broker] + [fmt(value(broker, transport, c)) for c in COLUMNS]
    print("| " + " | ".join(cells) + " |")
print()
print("messs / Mosquitto on the same transport (above 1 is better for messs):")
print()
print("| transport | " + " | ".join(c[0] for c in COLUMNS) + " |")
print("|---|" + "---|" * len(COLUMNS))
for transport in order:
    if ("mosquitto", transport) not in pairs or ("messs", transport) not in pairs:
        continue
    cells = [transport]
    for c in COLUMNS:
        m, q = value("messs", transport, c), value("mosquitto", transport, c)
        if not m or not q:
            cells.append("n/a")
        else:
            cells.append(f"{(m / q if c[3] else q / m):.2f}x")
    print("| " + " | ".join(cells) + " |")
# messs acknowledges nothing it does not deliver: any QoS 1 loss or duplicate is a bug.
# (A slower broker's "lost" counts what it had not delivered when the run's time ran out.)
for r in rows:
    res = r.get("result")
    if r["broker"] != "messs" or not res or res.get("command") == "conn":
        continue
    o = res["outcome"]
    if r["scenario"].startswith("qos1") and (o.get("lost") or o.get("duplicates")):
        print(f"\nWARNING: messs over {r['transport']}: QoS 1 lost {o['lost']}, duplicates {o['duplicates']}")
        problems += 1
for r in rows:
    if "error" in r:
        print(f"\nWARNING: {r['scenario']} over {r['transport']} on {r['broker']}: {r['error']}")
        problems += r["broker"] == "messs"
if check and problems:
    sys.exit(1)
