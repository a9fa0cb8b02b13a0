#!/usr/bin/env python3
"""Reconnect churn of ONE client id: CONNECT (MQTT 5, clean start off, session expiry 7 days;
or clean start with no expiry) -> CONNACK -> DISCONNECT, N times; prints the broker's RSS
every STEP cycles. Run by loadtest/churn.sh.
usage: churn.py PORT BROKER_PID N STEP [clean]"""
import socket, struct, sys, time
port, pid, n, step = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
clean = len(sys.argv) > 5 and sys.argv[5] == "clean"
def vbi(x):
    out = b""
    while True:
        b = x % 128; x //= 128
        out += bytes([b | (0x80 if x else 0)])
        if not x: return out
cid = b"churner"
props = (b"" if clean else b"\x11" + struct.pack(">I", 604800))
var = b"\x00\x04MQTT\x05" + bytes([0x02 if clean else 0x00]) + b"\x00\x3c" + vbi(len(props)) + props
payload = struct.pack(">H", len(cid)) + cid
connect = b"\x10" + vbi(len(var) + len(payload)) + var + payload
disconnect = b"\xe0\x00"
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"): return int(line.split()[1])
t0 = time.time(); print(f"0 cycles: {rss()} kB", flush=True)
for i in range(1, n + 1):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(connect)
    got = b""
    while len(got) < 2:
        chunk = s.recv(64)
        if not chunk: raise SystemExit(f"closed at cycle {i}")
        got += chunk
    if got[0] != 0x20: raise SystemExit(f"not a CONNACK at {i}: {got!r}")
    s.sendall(disconnect); s.close()
    if i % step == 0:
        print(f"{i} cycles: {rss()} kB ({i/(time.time()-t0):.0f}/s)", flush=True)
