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

if step == "flood":
    # QoS 1 messages of 64 KiB for the persistent session until one is refused (the file
    # system is full under RocksDB itself: the drill runs this with the watermark off).
    def on_flood(c, userdata, mid, reason_code, properties):
        acks[mid] = reason_code.value
        done.set()

    pub.on_publish = on_flood
    pub.loop_start()
    deadline = time.time() + 60
    while time.time() < deadline:
        done.clear()
        info = pub.publish("drill/flood", b"f" * 65536, qos=1)
        if not done.wait(5):
            sys.exit("drill: no PUBACK")
        if acks[info.mid] != 0:
            print(f"drill: flood: refused with {acks[info.mid]:#x} after {len(acks)} messages")
            sys.exit(0)
    sys.exit("drill: flood: never refused")


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
