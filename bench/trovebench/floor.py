"""The hand-made switchover floor, as a script an operator would write with pre-opened
connections: pause writes on the master, wait for the candidate to reach the master's offset,
REPLICAOF NO ONE on the candidate, re-point the old master (then unpause it) and the others.

    python -m trovebench.floor --master P --candidate P --others P,P

Prints "ready" once connected, runs on a line "go" on stdin, then prints its step times (ms) as JSON.
"""

import argparse
import json
import sys
import time

import redis


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--master", type=int, required=True)
    ap.add_argument("--candidate", type=int, required=True)
    ap.add_argument("--others", default="")
    a = ap.parse_args()
    c = lambda p: redis.Redis(host="127.0.0.1", port=p, socket_timeout=10, decode_responses=True,
                              single_connection_client=True)
    mc, cc = c(a.master), c(a.candidate)
    oc = [c(int(p)) for p in a.others.split(",") if p]
    for x in [mc, cc, *oc]:
        x.ping()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    steps = {}
    t = time.monotonic()
    mc.config_set("repl-ping-replica-period", 3600)  # a PING would move the frozen offset
    mc.execute_command("CLIENT", "PAUSE", 10000, "WRITE")
    off = mc.execute_command("ROLE")[1]
    steps["paused"] = time.monotonic() - t
    while cc.execute_command("ROLE")[4] < off:
        pass
    steps["caught_up"] = time.monotonic() - t
    cc.execute_command("REPLICAOF", "NO", "ONE")
    steps["promoted"] = time.monotonic() - t
    mc.execute_command("REPLICAOF", "127.0.0.1", a.candidate)
    mc.execute_command("CLIENT", "UNPAUSE")
    for x in oc:
        x.execute_command("REPLICAOF", "127.0.0.1", a.candidate)
    steps["repointed"] = time.monotonic() - t
    mc.config_set("repl-ping-replica-period", 10)
    print(json.dumps({k: v * 1000 for k, v in steps.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
