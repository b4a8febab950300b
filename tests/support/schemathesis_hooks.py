"""Schemathesis hooks for blockd (tests/schemathesis.rs loads this file).

SCP requests are signed as the official SDK signs them:
base64(HMAC-SHA256(secret, METHOD + URL + timestamp + access_key +
account_id + client_type)), the URL being the one requests puts on the
wire. The credentials come from the file named by BLOCKD_SCP_CREDENTIALS
(the daemon's generated credentials.toml). Cinder requests get the noauth
token from BLOCKD_CINDER_TOKEN ("user:project"), and the project in the
path is set to the token's project so requests reach the handlers.
"""

import base64
import hashlib
import hmac
import os
import threading
import time
import tomllib

import requests
import schemathesis

_lock = threading.Lock()
_last_ms = {}


def _fresh_ms(key):
    """A millisecond not yet used for this method and URL: the daemon
    refuses a second request with the same signature as a replay."""
    now = int(time.time() * 1000)
    with _lock:
        last = _last_ms.get(key)
        ts = last + 1 if last is not None and last >= now else now
        _last_ms[key] = ts
    return ts


class ScpSignature(requests.auth.AuthBase):
    def __init__(self, access_key, secret_key):
        self.access_key = access_key
        self.secret_key = secret_key.encode()

    def __call__(self, r):
        url = r.url
        ts = str(_fresh_ms(f"{r.method} {url}"))
        client_type = "Openapi"
        msg = f"{r.method}{url}{ts}{self.access_key}{client_type}".encode()
        sig = base64.b64encode(hmac.new(self.secret_key, msg, hashlib.sha256).digest())
        r.headers["Scp-AccessKey"] = self.access_key
        r.headers["Scp-Timestamp"] = ts
        r.headers["Scp-ClientType"] = client_type
        r.headers["Scp-Signature"] = sig.decode()
        return r


_creds_path = os.environ.get("BLOCKD_SCP_CREDENTIALS")
if _creds_path:
    with open(_creds_path, "rb") as f:
        _cred = tomllib.load(f)["credentials"][0]
    schemathesis.auth.set_from_requests(
        ScpSignature(_cred["access_key"], _cred["secret_key"])
    )

_token = os.environ.get("BLOCKD_CINDER_TOKEN")
_project = _token.split(":")[-1] if _token else None


@schemathesis.hook
def before_call(context, case, **kwargs):
    if _token is None:
        return
    if case.headers is None:
        case.headers = {}
    case.headers["X-Auth-Token"] = _token
    if case.path_parameters and "project_id" in case.path_parameters:
        case.path_parameters["project_id"] = _project
