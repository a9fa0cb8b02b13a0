#!/usr/bin/env python3
"""Interop checks with paho-mqtt 2.x at MQTT 3.1.1 and 5.0: publish/subscribe at each QoS,
retained messages, and the will message of a client that dies without DISCONNECT.

Usage: paho_check.py HOST PORT
Exits non-zero with a message on the first failed check.
"""
import queue
import subprocess
import sys
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

TIMEOUT = 5.0


def fail(msg):
    print(f"paho: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def client(host, port, proto, client_id=None, will=None):
    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id or f"paho-{uuid.uuid4().hex[:8]}",
        protocol=proto,
    )
    inbox = queue.Queue()
    connected = queue.Queue()
    subscribed = queue.Queue()
    c.on_connect = lambda cl, ud, flags, rc, props=None: connected.put(rc)
    c.on_message = lambda cl, ud, msg: inbox.put(msg)
    c.on_subscribe = lambda cl, ud, mid, rcs, props=None: subscribed.put(rcs)
    if will:
        c.will_set(*will)
    c.connect(host, port, keepalive=30)
    c.loop_start()
    rc = connected.get(timeout=TIMEOUT)
    if rc.is_failure:
        fail(f"connect refused: {rc}")
    return c, inbox, subscribed


def subscribe(c, subscribed, topic, qos):
    c.subscribe(topic, qos)
    rcs = subscribed.get(timeout=TIMEOUT)
    if any(rc.is_failure for rc in rcs):
        fail(f"subscribe {topic} refused: {rcs}")


def expect(inbox, topic, payload, retain=None):
    try:
        msg = inbox.get(timeout=TIMEOUT)
    except queue.Empty:
        fail(f"no message on {topic}")
    if msg.topic != topic or msg.payload != payload:
        fail(f"expected {topic}={payload!r}, got {msg.topic}={msg.payload!r}")
    if retain is not None and bool(msg.retain) != retain:
        fail(f"retain flag on {topic}: expected {retain}, got {msg.retain}")
    return msg


def check_level(host, port, proto, name):
    run = uuid.uuid4().hex[:6]
    base = f"interop/paho/{name}/{run}"
    sub, inbox, subscribed = client(host, port, proto)
    subscribe(sub, subscribed, f"{base}/#", 2)
    pub, _, _ = client(host, port, proto)
    for qos in (0, 1, 2):
        info = pub.publish(f"{base}/q{qos}", f"hello-{qos}".encode(), qos=qos)
        info.wait_for_publish(TIMEOUT)
        expect(inbox, f"{base}/q{qos}", f"hello-{qos}".encode(), retain=False)

    # Retained: a late subscriber gets it with RETAIN set.
    pub.publish(f"{base}/ret", b"kept", qos=1, retain=True).wait_for_publish(TIMEOUT)
    expect(inbox, f"{base}/ret", b"kept")
    late, late_inbox, late_sub = client(host, port, proto)
    subscribe(late, late_sub, f"{base}/ret", 1)
    expect(late_inbox, f"{base}/ret", b"kept", retain=True)

    # Will: a child process connects with a will and is killed.
    child = subprocess.Popen(
        [sys.executable, __file__, "--will-client", host, str(port), str(proto), f"{base}/will"],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = child.stdout.readline().strip()
    if line != "connected":
        fail(f"will client did not connect: {line!r}")
    child.kill()
    child.wait()
    expect(inbox, f"{base}/will", b"died")

    for c in (sub, pub, late):
        c.disconnect()
        c.loop_stop()
    print(f"paho {name}: publish/subscribe QoS 0-2, retained, will: ok")


def will_client(host, port, proto, topic):
    c, _, _ = client(host, port, int(proto), will=(topic, b"died", 1, False))
    print("connected", flush=True)
    time.sleep(60)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--will-client":
        will_client(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
        sys.exit(0)
    host, port = sys.argv[1], int(sys.argv[2])
    check_level(host, port, mqtt.MQTTv311, "v311")
    check_level(host, port, mqtt.MQTTv5, "v5")
