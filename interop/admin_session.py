#!/usr/bin/env python3
"""Logs in to a messs admin plane the way an operator does (password, TOTP enrolment with
a code computed here from RFC 6238, login with a code) and prints a superadmin API key for
tools such as schemathesis, and makes tenant "demo" with device "dev1" for them. Usage: admin_session.py BASE_URL USERNAME PASSWORD"""

import base64, hashlib, hmac, json, struct, sys, time, urllib.request


def call(base, method, path, token=None, body=None):
    req = urllib.request.Request(base + path, method=method)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, data) as r:
            text = r.read()
            return r.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def totp(secret_b32, at):
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    h = hmac.new(key, struct.pack(">Q", int(at) // 30), hashlib.sha1).digest()
    o = h[19] & 15
    return "%06d" % ((struct.unpack(">I", h[o:o + 4])[0] & 0x7FFFFFFF) % 1000000)


def main():
    base, user, password = sys.argv[1:4]
    status, tokens = call(base, "POST", "/api/v1/auth/login", body={"username": user, "password": password})
    assert status == 200, (status, tokens)
    access = tokens["access_token"]
    assert tokens["required_action"] == "mfa_enrolment", tokens
    status, offer = call(base, "POST", "/api/v1/auth/totp/enrol", access)
    assert status == 200, (status, offer)
    now = time.time()
    status, codes = call(base, "POST", "/api/v1/auth/totp/confirm", access, {"code": totp(offer["secret"], now)})
    assert status == 200, (status, codes)
    status, tokens = call(base, "POST", "/api/v1/auth/login",
                          body={"username": user, "password": password, "totp": totp(offer["secret"], now + 30)})
    assert status == 200 and tokens["required_action"] is None, (status, tokens)
    status, key = call(base, "POST", "/api/v1/api-keys", tokens["access_token"],
                       {"name": "schemathesis", "role": "superadmin", "scopes": ["write"], "expires_in_secs": 3600})
    assert status == 201, (status, key)
    for path, body in [("/api/v1/tenants", {"id": "demo"}),
                       ("/api/v1/tenants/demo/devices", {"username": "dev1", "password": "device-Pass-123"})]:
        status, created = call(base, "POST", path, key["key"], body)
        assert status == 201, (path, status, created)
    print(key["key"])


if __name__ == "__main__":
    main()
