"""Reads the agents' own timings: every `request done ... elapsed_ms=N` line (and `request failed`)
with its RPC method, turned into spans on the wall clock."""

import datetime
import re

ANSI = re.compile(r"\x1b\[[0-9;]*m")
LINE = re.compile(r"^(?P<ts>\d{4}-\d\d-\d\dT[0-9:.]+Z)\s+\w+\s+rpc\{method=(?P<method>[a-z_]+)[^}]*\}.*?"
                  r"request (?P<what>done|failed).*?elapsed_ms=(?P<ms>\d+)")


SYNC = re.compile(r"^(?P<ts>\d{4}-\d\d-\d\dT[0-9:.]+Z)\s+\w+\s+rpc\{method=(?P<method>[a-z_]+)[^}]*\}.*?"
                  r"replica linked and caught up.*?elapsed_ms=(?P<ms>\d+)")


def parse_ts(ts):
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def rpc_spans(guests, wall_from, wall_to):
    """[{guest, method, start, end, ms}] for RPCs that ended inside [wall_from, wall_to] (unix
    seconds), sorted by start; start and end are relative to wall_from, in ms."""
    out = []
    for g in guests:
        try:
            with open(g.log_path, errors="replace") as f:
                lines = f.readlines()
        except OSError:
            continue
        for line in lines:
            clean = ANSI.sub("", line)
            m = LINE.search(clean)
            sync = None if m else SYNC.search(clean)
            if not m and not sync:
                continue
            hit = m or sync
            end = parse_ts(hit.group("ts"))
            if end < wall_from - 0.001 or end > wall_to + 0.05:
                continue
            ms = int(hit.group("ms"))
            # "<method>/sync": the part of an attach spent waiting for Redis's own sync (after REPLICAOF).
            method = hit.group("method") if m else hit.group("method") + "/sync"
            out.append({"guest": getattr(g, "name", g.id), "method": method, "ok": (m.group("what") == "done") if m else True,
                        "start": round((end - wall_from) * 1000 - ms, 2), "end": round((end - wall_from) * 1000, 2),
                        "ms": ms})
    out.sort(key=lambda s: s["start"])
    return out


def promote_phases(spans, old, cand, exit_ms):
    """Phases of one promote from the agents' spans (ms since the command started):
    cli = until the first RPC reaches an agent; fence_to_writable = from the fence on the old
    master until make_read_only(false) on the candidate ends; repoint = until the last attach
    ends; finish = until the command exits."""
    if not spans:
        return None
    first = min(s["start"] for s in spans)
    fence = next((s for s in spans if s["guest"] == old and s["method"] == "make_read_only"), None)
    unfence = [s for s in spans if s["guest"] == cand and s["method"] == "make_read_only"]
    attaches = [s for s in spans if s["method"] == "attach_replica"]
    if not fence or not unfence or not attaches:
        return None
    writable = unfence[-1]["end"]
    repointed = max(s["end"] for s in attaches)
    agent_ms = {}
    for s in spans:
        if s["start"] >= fence["start"] and s["end"] <= writable:
            agent_ms[s["method"]] = agent_ms.get(s["method"], 0) + s["ms"]
    rpcs_in_window = sum(1 for s in spans if s["start"] >= fence["start"] and s["end"] <= writable)
    return {
        "cli_setup": first,
        "fence_to_writable": writable - fence["start"],
        "fence_to_writable_agent": sum(agent_ms.values()),
        "fence_to_writable_rpcs": rpcs_in_window,
        "writable_to_repointed": repointed - writable,
        "repointed_to_exit": exit_ms - repointed if exit_ms else None,
        "attach_ms": [s["ms"] for s in attaches],
        "agent_ms_by_method": agent_ms,
    }
