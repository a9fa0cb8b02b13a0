"""Connection churn for the disk-full drill: anonymous MQTT 5 clients connect (clean start)
and disconnect as fast as one thread can for SECONDS, on raw sockets (a client library's
threads would be the bottleneck). Prints how many CONNACKs came back with success; exits 1
if any connection got anything else. Usage: churn.py PORT SECONDS"""
import socket
import struct
import sys
import time

port, seconds = int(sys.argv[1]), float(sys.argv[2])


def connect_packet(client_id):
    cid = client_id.encode()
    var = b"\x00\x04MQTT" + bytes([5, 0x02]) + struct.pack(">H", 30) + b"\x00"
    payload = struct.pack(">H", len(cid)) + cid
    body = var + payload
    return bytes([0x10, len(body)]) + body


DISCONNECT = bytes([0xE0, 0x00])
ok = bad = 0
deadline = time.time() + seconds
n = 0
while time.time() < deadline:
    n += 1
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(connect_packet(f"churn-{n}"))
        ack = s.recv(64)
        # CONNACK: 0x20, length, flags, reason code.
        if len(ack) >= 4 and ack[0] == 0x20 and ack[3] == 0:
            ok += 1
            s.sendall(DISCONNECT)
        else:
            bad += 1
    finally:
        s.close()
print(f"churn: {ok} connections accepted, {bad} refused, in {seconds:.0f} s")
sys.exit(1 if bad else 0)
