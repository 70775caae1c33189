"""Typed application and request state keys, shared by the app factory and the handlers."""

from __future__ import annotations

from aiohttp import web

from ota_server.counters import CounterCommits
from ota_server.device_auth import DeviceAuthenticator
from ota_server.grants import GrantKey
from ota_server.metrics import Metrics
from ota_server.settings import Settings
from ota_server.storage import BlobStore, BoardIdentity, MetadataStore
from ota_server.tls import ServerTls
from ota_server.trust import TrustAnchor

SETTINGS = web.AppKey("settings", Settings)
# This process's number among `ota serve --workers N`'s workers; absent: the only process.
WORKER = web.AppKey("worker", int)
STORE = web.AppKey("store", MetadataStore)
BLOBS = web.AppKey("blobs", BlobStore)
TRUST = web.AppKey("trust", TrustAnchor)
DEVICE_AUTH = web.AppKey("device_auth", DeviceAuthenticator)
BOARD_WRITES = web.AppKey("board_writes", CounterCommits)
METRICS = web.AppKey("metrics", Metrics)
TLS = web.AppKey("tls", ServerTls)
ENVELOPES = web.AppKey("envelopes", dict[int, bytes])
# The download grants' key (absent: this server gives and takes no grants).
GRANTS = web.AppKey("grants", GrantKey)

# The board that signed a board request: its identity only (what never changes; the server may
# keep it in memory), never its counter, revocation or inventory.
DEVICE = web.RequestKey("device", BoardIdentity)
# The fleet epoch the board request's counter statement saw, for
# MetadataStore.current_rollout.
FLEET_EPOCH = web.RequestKey("fleet_epoch", int)
# The board request's counter (committed): what it writes of the board's records is written
# only over an older request's (storage.records.RECORDS_COUNTER).
COUNTER = web.RequestKey("counter", int)
BODY = web.RequestKey("body", bytes)
# The board a download grant named (a download authorised by grant has no DEVICE).
GRANTED = web.RequestKey("granted", str)
# What a state-changing publisher call was about, for the audit log ("demo 1.2.0").
AUDIT_TARGET = web.RequestKey("audit_target", str)
