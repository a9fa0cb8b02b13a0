"""Disk-full drill, client side (paho-mqtt 2.x, MQTT 5): run by interop/disk-full-drill.sh.

Publishes QoS 1 to a topic a persistent session subscribes to, so every message must be
stored: succeeds; then (the drill fills the file system) is refused with 0x80; then (space
freed) succeeds again, on the same broker process and the same connection.
"""
import os
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

port = int(sys.argv[1])
step = sys.argv[2]  # setup | publish-ok | publish-refused | flood
acks = {}
done = threading.Event()


def client(cid, clean=True, expiry=None):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    props = None
    if expiry is not None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
    c.connect("127.0.0.1", port, clean_start=clean, properties=props)
    return c


if step == "setup":
    sub = client("drill-durable", clean=True, expiry=3600)
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.loop_start()
    sub.subscribe("drill/#", qos=1)
    if not subscribed.wait(5):
        sys.exit("drill: no SUBACK")
    sub.disconnect()
    sub.loop_stop()
    print("drill: persistent session subscribed")
    sys.exit(0)

pub = client("drill-pub")

if step == "drain":
    # The persistent session takes (and acknowledges) everything queued for it.
    sub = client("drill-durable", clean=False, expiry=3600)
    got = [0]
    idle = [time.time()]

    def on_message(c, userdata, msg):
        got[0] += 1
        idle[0] = time.time()

    sub.on_message = on_message
    sub.loop_start()
    while time.time() - idle[0] < 2:
        time.sleep(0.1)
    sub.disconnect()
    sub.loop_stop()
    print(f"drill: drained {got[0]} messages")
    sys.exit(0)

if step in ("flood", "burst"):
    # QoS 1 messages (flood: 64 KiB; burst: 256 KiB, 20 in flight) for the persistent
    # session until one is refused. The drill floods with the watermark off (the file
    # system fills under RocksDB itself) and bursts with it on (it must hold).
    def on_flood(c, userdata, mid, reason_code, properties):
        acks[mid] = reason_code.value
        done.set()

    pub.on_publish = on_flood
    pub.loop_start()
    size, window = (65536, 1) if step == "flood" else (262144, 20)
    deadline = time.time() + 60
    while time.time() < deadline:
        done.clear()
        infos = [pub.publish("drill/flood", b"f" * size, qos=1) for _ in range(window)]
        for info in infos:
            info.wait_for_publish(5)
        refused = [acks.get(i.mid) for i in infos if acks.get(i.mid, 0) != 0]
        if refused:
            accepted = sum(1 for v in acks.values() if v == 0)
            print(f"drill: {step}: refused with {refused[0]:#x} after {accepted} accepted")
            sys.exit(0)
    sys.exit(f"drill: {step}: never refused")


def on_publish(c, userdata, mid, reason_code, properties):
    acks[mid] = reason_code.value
    done.set()


pub.on_publish = on_publish
pub.loop_start()
info = pub.publish("drill/t", b"x" * 1000, qos=1)
if not done.wait(5):
    sys.exit("drill: no PUBACK")
code = acks[info.mid]
pub.disconnect()
pub.loop_stop()
want_ok = step == "publish-ok"
if want_ok and code != 0:
    sys.exit(f"drill: expected PUBACK success, got reason code {code:#x}")
if not want_ok and code != 0x80:
    sys.exit(f"drill: expected PUBACK 0x80 on a full disk, got reason code {code:#x}")
print(f"drill: {step}: PUBACK reason {code:#x}")
