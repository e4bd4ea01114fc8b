"""Per-step timing and the RPCs each guest served, counted from the agents' logs; written to <work>/report.txt."""
import json
import os
import re
import subprocess
import time
from collections import Counter
from contextlib import contextmanager

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The agent logs each request it served inside a span `rpc{method=... msg_id=... request_id=...}`,
# ending in "request done" or "request failed".
RPC_LINE = re.compile(r"rpc\{method=(\w+)[^}]*\}.*request (done|failed)")


def guest_log(stage, container):
    """The container's log: from Docker while it exists, else the copy the Nova stand-in kept."""
    proc = subprocess.run(["docker", "logs", container], capture_output=True, text=True, timeout=60)
    if proc.returncode == 0:
        return proc.stdout + proc.stderr
    path = os.path.join(stage.work, "guest-logs", f"{container}.log")
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def rpc_counts(stage, container):
    """Counter of (method, outcome) for every request the guest's agent logged."""
    c = Counter()
    for line in guest_log(stage, container).splitlines():
        m = RPC_LINE.search(ANSI.sub("", line))
        if m:
            c[m.group(1) if m.group(2) == "done" else m.group(1) + "(failed)"] += 1
    return c


class Steps:
    """Times each step of a pass and records the RPCs each guest served during it."""

    def __init__(self, stage, pass_name):
        self.stage = stage
        self.pass_name = pass_name
        self.guests = {}  # instance name -> container name

    def add_guest(self, name, container):
        self.guests[name] = container

    def _snapshot(self):
        return {name: rpc_counts(self.stage, c) for name, c in self.guests.items()}

    @contextmanager
    def step(self, title):
        before = self._snapshot()
        t0 = time.monotonic()
        note = {}
        print(f"\n== [{self.pass_name}] {title}", flush=True)
        yield note
        seconds = time.monotonic() - t0
        after = self._snapshot()
        served = {name: after[name] - before.get(name, Counter()) for name in after}
        self.stage.report.append((self.pass_name, title, seconds, served, note.get("note", "")))
        print(f"   {title}: {seconds:.1f} s; " + "; ".join(f"{g}: {_fmt(c)}" for g, c in served.items() if c), flush=True)


def _fmt(counter):
    return ", ".join(f"{m}" + (f"×{n}" if n > 1 else "") for m, n in sorted(counter.items())) or "-"


def _count(path, needle):
    try:
        with open(path, errors="replace") as f:
            return sum(1 for line in f if needle in line)
    except FileNotFoundError:
        return 0


def trove_defects(work):
    """How often the Trove defects docs/trove.md describes showed up in this run's Trove logs."""
    tm, cond, api = (os.path.join(work, f"trove-{s}.log") for s in ("taskmanager", "conductor", "api"))
    return [
        "Trove defects seen in its logs (both passes):",
        f"  taskmanager: Backup.delete(context, None) -> NotFound after a replica create: "
        f"{_count(tm, 'Exception during message handling: trove.common.exception.NotFound: Resource None cannot be found')}",
        f"  conductor: DBDuplicateEntry '<id>-heartbeat' (concurrent first heartbeats): "
        f"{_count(cond, 'Exception during message handling: oslo_db.exception.DBDuplicateEntry')}",
        f"  api: instance show requests, each calling the guest (get_filesystem_stats): {_count(api, 'Showing database instance')}",
    ]


def write_report(stage):
    if not stage.report:
        return
    lines = ["", "== trove stage: time per step and the RPCs each guest served "
             "(counted from the agents' logs; get_volume_info comes from `instance show`)"]
    w = max(len(t) for _, t, _, _, _ in stage.report)
    for pass_name, title, seconds, served, note in stage.report:
        head = f"{pass_name:<7} {title:<{w}} {seconds:6.1f} s"
        rows = [f"{g}: {_fmt(c)}" for g, c in served.items() if c] or ["(no RPC)"]
        lines.append(f"{head}  {rows[0]}")
        for r in rows[1:]:
            lines.append(" " * len(head) + f"  {r}")
        if note:
            lines.append(" " * len(head) + f"  note: {note}")
    lines.append("")
    lines.extend(trove_defects(stage.work))
    for pass_name, title, text in stage.cli_output:
        lines.append(f"\n-- [{pass_name}] $ {title}\n{text.rstrip()}")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(stage.work, "report.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(stage.work, "report.json"), "w") as f:
        json.dump([{"pass": p, "step": t, "seconds": round(s, 2), "rpcs": {g: dict(c) for g, c in d.items()}, "note": n}
                   for p, t, s, d, n in stage.report], f, indent=1)
