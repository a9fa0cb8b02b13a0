#!/usr/bin/env python3
"""paho-mqtt 2.x over TLS at MQTT 3.1.1 and 5.0: a password login and a client-certificate
login exchange messages, and a wrong password is refused with the right reason code
(v5: 0x86 Bad user name or password; 3.1.1: return code 4).

Usage: paho_tls.py HOST PORT PKI_DIR
"""
import queue
import ssl
import sys
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

TIMEOUT = 5.0


def fail(msg):
    print(f"paho: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def client(host, port, pki, proto, user=None, password=None, cert=False):
    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"paho-tls-{uuid.uuid4().hex[:8]}",
        protocol=proto,
    )
    c.tls_set(
        ca_certs=f"{pki}/server-ca.pem",
        certfile=f"{pki}/meter.pem" if cert else None,
        keyfile=f"{pki}/meter.key" if cert else None,
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )
    if user:
        c.username_pw_set(user, password)
    inbox, connected, subscribed = queue.Queue(), queue.Queue(), queue.Queue()
    c.on_connect = lambda cl, ud, flags, rc, props=None: connected.put(rc)
    c.on_message = lambda cl, ud, msg: inbox.put(msg)
    c.on_subscribe = lambda cl, ud, mid, rcs, props=None: subscribed.put(rcs)
    c.connect(host, port, keepalive=30)
    c.loop_start()
    rc = connected.get(timeout=TIMEOUT)
    return c, rc, inbox, subscribed


def check(host, port, pki, proto, name):
    topic = f"plant/paho/{name}/{uuid.uuid4().hex[:6]}"
    sub, rc, inbox, subscribed = client(host, port, pki, proto, "sensor1@acme", "sensor-password-1")
    if rc.is_failure:
        fail(f"{name}: password login refused: {rc}")
    if sub._ssl_context is None:
        fail(f"{name}: not over TLS")
    sub.subscribe(topic, 1)
    if any(r.is_failure for r in subscribed.get(timeout=TIMEOUT)):
        fail(f"{name}: subscribe refused")
    pub, rc, _, _ = client(host, port, pki, proto, cert=True)
    if rc.is_failure:
        fail(f"{name}: certificate login refused: {rc}")
    pub.publish(topic, b"over-tls", qos=1).wait_for_publish(TIMEOUT)
    try:
        msg = inbox.get(timeout=TIMEOUT)
    except queue.Empty:
        fail(f"{name}: no message")
    if msg.payload != b"over-tls":
        fail(f"{name}: got {msg.payload!r}")
    bad, rc, _, _ = client(host, port, pki, proto, "sensor1@acme", "wrong-password")
    # paho reports 3.1.1's return code 4 as the v5 code it maps to, 134 (0x86).
    if not rc.is_failure or rc.value != 134:
        fail(f"{name}: wrong password gave {rc} ({rc.value}), expected 134")
    for c in (sub, pub, bad):
        c.disconnect()
        c.loop_stop()
    print(f"paho {name} over TLS: password and client-certificate logins, wrong password refused: ok")


if __name__ == "__main__":
    host, port, pki = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    check(host, port, pki, mqtt.MQTTv311, "v311")
    check(host, port, pki, mqtt.MQTTv5, "v5")
