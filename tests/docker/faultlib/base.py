"""Constants shared by the fault scenarios, and the timestamped log line they print."""

import time

PASSWORD = "fault-secret"
TLS_PORT = 6380
GUESTS = ("guest1", "guest2", "guest3")
# What prepare sends (config_contents). requirepass makes cross-container replication possible
# with protected mode on; DEBUG is allowed from inside the container only (DEBUG POPULATE).
REDIS_CONF = f"""bind * -::*
protected-mode yes
port 6379
requirepass {PASSWORD}
save 3600 1 300 100 60 10000
appendonly no
logfile ""
enable-debug-command local
"""
T0 = time.monotonic()


def now_ms():
    return int((time.monotonic() - T0) * 1000)


def say(text):
    print(f"  [{now_ms() / 1000:6.1f}s] {text}", flush=True)
