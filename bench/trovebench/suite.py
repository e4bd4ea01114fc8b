"""The benchmarks and diagnostics, their configurations (full and smoke) and the order they run in."""

import json
import os
import subprocess
import sys
import time

from .agentlog import rpc_spans
from . import backup, sidebyside
from .common import ROOT, BenchError, log, now, provenance, rcon
from .create import CreateBench
from .dualchannel import bench_dualchannel
from .failover import OursFailover, SentinelFailover
from .footprint import Servers, idle, method_times, rpc_matrix, startup
from .switch import FailoverTrio, FloorTrio, OursTrio, SentinelTrio

FULL = {
    "switchover": {"reps": 6, "timeout_s": 40},
    "failover": {"reps": 5, "timeout_s": 60, "post_failover_s": 2.0},
    "create": {"sizes": [[100, 3], [1024, 2]], "counts": [1, 2, 4], "diskless": [True, False]},
    "rpc": {"reps": 3, "callers": [1, 4, 16], "clients": ["python", "rust"], "duration_s": 2.5, "warmup_s": 1.0,
            "method_reps": 2, "method_duration_s": 2.0, "method_client": "python", "import_trove": True},
    "footprint": {"idle_s": 20, "startup_reps": 5, "startup_with_trove": True},
    "scale": {"counts": [1, 2, 4, 8], "create_reps": 3, "promote_reps": 4, "data_mb": 10},
}

SMOKE = {
    "switchover": {"reps": 1, "timeout_s": 2},
    "failover": {"reps": 1, "timeout_s": 20, "post_failover_s": 1.0, "no_recovery": True},
    "create": {"sizes": [[2, 1]], "counts": [1, 2], "diskless": [True, False]},
    "rpc": {"reps": 1, "callers": [4], "clients": ["python", "rust"], "duration_s": 0.5, "warmup_s": 0.3,
            "method_reps": 1, "method_duration_s": 0.3, "method_client": "rust", "import_trove": False},
    "footprint": {"idle_s": 1, "startup_reps": 1, "startup_with_trove": False},
    "scale": {"counts": [2], "create_reps": 1, "promote_reps": 1, "data_mb": 1},
}

# sidebyside: trove-guestctl watch against 3 Sentinels, both through redis-py's Sentinel client.
FULL["sidebyside"] = {"min_replicas": [0, 1], "kill_reps": 4, "switch_reps": 4, "switch_timeout_s": 40,
                      "sigstop_reps": 3, "agent_stop_reps": 2, "partition_reps": 2, "partition_cut_s": 15}
# Smoke: Sentinel's switchover takes ~20 s to converge, so only ours switches (and must lose nothing).
SMOKE["sidebyside"] = {"min_replicas": [0], "kill_reps": 1, "switch_reps": 1, "switch_timeout_s": 5, "switch_sides": ["ours"],
                       "sigstop_reps": 0, "agent_stop_reps": 0, "partition_reps": 1, "partition_cut_s": 15,
                       "no_recovery": True}

ALL = ["switchover", "failover", "create", "rpc", "footprint", "scale", "sidebyside", "trove"]
FULL["trove"] = {"reps": 2}
SMOKE["trove"] = {"reps": 1}
# Diagnostics: in the full suite only when asked for with --only.
EXTRA = ["fsync", "agentcost", "dualchannel", "backup"]
# --smoke without --only: everything but trove (its set-up alone, MariaDB, the broker container, Trove's
# services and four guest containers, takes minutes: CI runs its smoke inside the trove stage's
# set-up, scripts/trove-stage.sh with TROVE_STAGE_BENCH_SMOKE=1) and dualchannel (it needs Valkey
# 8.0+ on every node: scripts/bench.sh --smoke runs it on its own), plus the diagnostics fsync,
# agentcost and backup.
SMOKE_DEFAULT = [x for x in ALL if x != "trove"] + ["fsync", "agentcost", "backup"]
FULL["dualchannel"] = {"sizes": [[100, 3], [1024, 2]], "counts": [1, 2]}
SMOKE["dualchannel"] = {"sizes": [[2, 1]], "counts": [1]}
FULL["fsync"] = {"reps": 8}
SMOKE["fsync"] = {"reps": 1}
FULL["agentcost"] = {"reps": 3, "callers": [4, 16], "duration_s": 2.5, "idle_s": 5}
SMOKE["agentcost"] = {"reps": 1, "callers": [4], "duration_s": 0.5, "idle_s": 1}
# backup (backup.py): the agent's backup and restore beside the hand-made pipeline, then the master's
# write latency at rest and during a backup on its replica and on itself. Needs scripts/swift.sh's Swift.
FULL["backup"] = {"mb": 1024, "reps": 3, "latency_reps": 1, "rest_s": 5, "timeout_s": 3600}
SMOKE["backup"] = {"mb": 4, "reps": 1, "latency_reps": 1, "rest_s": 1, "timeout_s": 300}

AGENT_VARIANTS = [
    ("as shipped (log level info)", {}),
    ("log level warn", {"TROVE_GUESTAGENT__LOG__LEVEL": "warn"}),
    ("MALLOC_ARENA_MAX=1", {"MALLOC_ARENA_MAX": "1"}),
]


def bench_agentcost(ctx, cfg, results):
    """Diagnostic: the agent's CPU per rpc_ping and its RSS, as shipped and with one knob changed
    (per-request info logging off; one malloc arena), interleaved, same broker, Rust client."""
    from .footprint import load, load_stats, proc_cpu_s, proc_mem_kib
    from .common import Fleet
    c = cfg["agentcost"]
    fleets = [(name, Fleet(ctx, "ac%d" % i, 1, env=env)) for i, (name, env) in enumerate(AGENT_VARIANTS)]
    rows = []
    for rep in range(c["reps"]):
        time.sleep(c["idle_s"])
        for name, fl in rotate(fleets, rep):
            g = fl.guests[0]
            mem = proc_mem_kib(g.proc.pid)
            rows.append({"rep": rep, "variant": name, "what": "idle", "mem_kib": mem})
            for callers in c["callers"]:
                cpu0, t0 = proc_cpu_s(g.proc.pid), now()
                st = load_stats(load(ctx, "rust", g.id, "rpc_ping", callers, c["duration_s"], 0.5))
                cpu1, t1 = proc_cpu_s(g.proc.pid), now()
                st.update({"rep": rep, "variant": name, "what": "load", "callers": callers,
                           "cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0), "mem_kib": proc_mem_kib(g.proc.pid)})
                rows.append(st)
                log("agentcost %-28s %2d callers: %5.0f calls/s, %.0f%% CPU, %.0f us CPU/call, RSS %d KiB" % (
                    name, callers, st["calls_per_s"], st["cpu_pct"], st["cpu_pct"] * 1e4 / max(1, st["calls_per_s"]),
                    st["mem_kib"]["VmRSS"]))
    results["agentcost"] = {"config": c, "rows": rows}
    for _, fl in fleets:
        fl.close()


def eatmydata_lib():
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib"):
        p = os.path.join(d, "libeatmydata.so")
        if os.path.exists(p):
            return p
    raise BenchError("libeatmydata.so not found (apt-get install eatmydata)")


def bench_fsync(ctx, cfg, results):
    """Diagnostic: the same promote with fsync() as usual and with fsync() made a no-op
    (libeatmydata preloaded into the agents, their Redis and trove-guestctl), interleaved."""
    c = cfg["fsync"]
    lib = eatmydata_lib()
    normal = OursTrio(ctx, tag="fs")
    nosync = OursTrio(ctx, tag="fe", env={"LD_PRELOAD": lib})
    runs = []
    for rep in range(c["reps"]):
        for name, trio in rotate([("fsync", normal), ("no-fsync", nosync)], rep):
            rec = trio.switch(rep, 30)
            rec.update({"variant": name, "rep": rep})
            runs.append(rec)
            ph = rec.get("phases") or {}
            log("fsync diagnostic %-8s rep %d: fence->writable %s ms, pause %.1f ms, done %s ms" % (
                name, rep, fmt(ph.get("fence_to_writable")), rec["longest_pause_ms"], fmt(rec["command_done_ms"])))
    results["fsync"] = {"config": c, "runs": runs}
    normal.fleet.close()
    nosync.fleet.close()


def rotate(items, k):
    k %= len(items)
    return items[k:] + items[:k]


def bench_switchover_and_failover(ctx, cfg, results, only):
    """Benchmarks 1 and 2 share their topologies: one agent trio and one Sentinel trio, plus two
    plain trios for FAILOVER and the floor."""
    t = now()
    ours = OursFailover(ctx)
    sentinel = SentinelFailover(ctx)
    log("set up the agent trio and the Sentinel trio in %.1fs" % (now() - t))
    if "switchover" in only:
        c = cfg["switchover"]
        others = [FailoverTrio(ctx), FloorTrio(ctx)]
        methods = [ours, sentinel, *others]
        runs = []
        for rep in range(c["reps"]):
            for m in rotate(methods, rep):
                t = now()
                # Sentinel re-points the old master only after ~8-18 s: give it the whole timeout.
                rec = m.switch(rep, c["timeout_s"])
                rec["rep"] = rep
                runs.append(rec)
                log("switchover %-8s rep %d: writable %s ms, all linked %s ms, pause %.1f ms, lost %s, full syncs %s (%.1fs)" % (
                    rec["method"], rep, fmt(rec["writable_ms"]), fmt(rec["all_linked_ms"]), rec["longest_pause_ms"],
                    rec["lost"], rec["sync_full_delta"], now() - t))
                if ctx.smoke and rec["method"] == "ours" and rec["lost"]:
                    raise BenchError("ours lost %d acknowledged writes in a planned switchover" % rec["lost"])
        results["switchover"] = {"config": c, "runs": runs,
                                 "labels": {"ours": OursTrio.label, "sentinel": SentinelTrio.label,
                                            **{m.name: m.label for m in others}}}
        for m in others:
            for n in m.nodes:
                n.kill9()
    if "failover" in only:
        c = cfg["failover"]
        runs = []
        methods = [ours, sentinel]
        for rep in range(c["reps"]):
            for m in rotate(methods, rep):
                t = now()
                if c.get("no_recovery") and rep == c["reps"] - 1:
                    m.recover = False
                rec = m.fail(rep, c["timeout_s"], c["post_failover_s"])
                rec["rep"] = rep
                runs.append(rec)
                log("failover %-8s rep %d: writable %s ms, lost %s of %d acknowledged (%s of the %d after the failover), "
                    "chose %s (most current: %s, gap %s B), final master %s (%.1fs)" % (
                        rec["method"], rep, fmt(rec["writable_ms"]), rec["lost"], rec["acked"], rec["lost_after_failover"],
                        rec["acked_after_failover"], rec["chosen"], rec["chosen_most_current"], rec["offset_gap_bytes"],
                        rec["final_master"], now() - t))
                # Writes the new master acknowledged are never lost without a second failover.
                if rec["lost_after_failover"] and not rec["second_failover"]:
                    raise BenchError("%s lost %d writes acknowledged after the failover" % (
                        rec["method"], rec["lost_after_failover"]))
        results["failover"] = {"config": c, "runs": runs, "labels": {m.name: m.label for m in methods}}
    ours.fleet.close()
    for n in sentinel.nodes:
        n.kill9()
    for s in sentinel.sentinels:
        ctx.kill(s.proc)


def fmt(v):
    return "-" if v is None else "%.1f" % v


def bench_create(ctx, cfg, results):
    c = cfg["create"]
    cb = CreateBench(ctx, max(c["counts"]))
    runs, promotes, sizes = [], [], {}
    for mb, reps in c["sizes"]:
        data = cb.fill(mb)
        sizes[str(mb)] = data
        # One unrecorded round first, the most replicas both ways: a replica's first load at a new
        # size also pays for memory its process and this machine never touched (measured: the
        # first 1 GB load after the fill took 4.6-6.0 s, whichever side ran it, the next ones
        # 2.5-3.3 s), and a single-round size would charge that to whichever side went first.
        warm = {}
        for method in ("ours", "hand"):
            os.sync()
            rec = cb.ours(max(c["counts"]), True) if method == "ours" else cb.hand_made(max(c["counts"]), True)
            warm[method] = rec["total_ms"]
        data["warmup_ms"] = warm
        log("create %4d MB warm-up (x%d diskless, not counted): ours %.0f ms, hand %.0f ms" % (
            mb, max(c["counts"]), warm["ours"], warm["hand"]))
        for rep in range(reps):
            combos = [(n, d) for n in c["counts"] for d in c["diskless"]]
            for i, (n, d) in enumerate(combos):
                order = ["ours", "hand"] if (rep + i) % 2 == 0 else ["hand", "ours"]
                for method in order:
                    # Flush the page cache's dirty data first (a disk-based sync leaves GBs of RDB
                    # being written back), so no run pays for the previous one's writeback.
                    os.sync()
                    time.sleep(0 if ctx.smoke else 0.3)
                    t = now()
                    rec = cb.ours(n, d) if method == "ours" else cb.hand_made(n, d)
                    rec.update({"mb": mb, "rep": rep, "used_memory": data["used_memory"]})
                    runs.append(rec)
                    log("create %4d MB x%d diskless=%-5s %-4s: %.0f ms (full syncs %d) (%.1fs)" % (
                        mb, n, d, method, rec["total_ms"], rec["sync_full_delta"], now() - t))
        # Promote with this much data: two replicas, promote one and back (benchmark 6's data-size axis).
        promotes.extend(promote_with_data(cb, mb, 1 if ctx.smoke else 2))
    results["create"] = {"config": c, "runs": runs, "sizes": sizes, "promote_by_size": promotes}
    cb.fleet.close()
    for n in cb.hand:
        n.kill9()


def promote_with_data(cb, mb, rounds):
    fl = cb.fleet
    m, r1, r2 = cb.master, cb.replicas[0], cb.replicas[1]
    fl.ctl("create-replicas", "--replica-of", m.id, r1.id, r2.id, timeout=3600)
    out = []
    cur_master = m
    for i in range(rounds):
        target = r1 if cur_master is m else m
        wall0 = time.time()
        took, _, report, _ = fl.ctl("promote-to-replica-source", target.id)
        spans = rpc_spans([m, r1, r2], wall0, wall0 + took + 0.05)
        out.append({"mb": mb, "replicas": 2, "total_ms": took * 1000,
                    "writes_blocked_ms_reported": report.get("writes_blocked_ms"), "spans": spans})
        log("promote with %d MB: %.0f ms (fence to writable %s ms)" % (mb, took * 1000, report.get("writes_blocked_ms")))
        cur_master = target
    if cur_master is not m:
        fl.ctl("promote-to-replica-source", m.id)
    for r in (r1, r2):
        fl.ctl("detach-replica", r.id)
        rcon(r.port, timeout=600).flushall()
    return out


def bench_rpc_and_footprint(ctx, cfg, results, only):
    c = cfg["rpc"]
    servers = Servers(ctx, import_trove=c["import_trove"])
    if "rpc" in only:
        matrix = rpc_matrix(ctx, servers, c["reps"], c["callers"], c["duration_s"], c["warmup_s"], c["clients"])
        methods = method_times(ctx, servers, c["method_reps"], c["method_duration_s"],
                               ["rpc_ping", "get_last_txn", "get_latest_txn_id", "get_replication_status"],
                               c.get("method_client", "python"))
        results["rpc"] = {"config": c, "matrix": matrix, "methods": methods}
    if "footprint" in only:
        f = cfg["footprint"]
        if "rpc" not in only:  # the "under load" figures come from the 4-caller Python-client runs
            results.setdefault("rpc", {"config": c, "matrix": rpc_matrix(ctx, servers, 1, [4], c["duration_s"], c["warmup_s"], ["python"]), "methods": []})
        idle_r = idle(ctx, servers, f["idle_s"])
        log("idle: ours %.2f%% CPU %d KiB RSS; python %.2f%% CPU %d KiB RSS" % (
            idle_r["ours"]["cpu_pct"], idle_r["ours"]["mem_kib"]["VmRSS"], idle_r["python"]["cpu_pct"],
            idle_r["python"]["mem_kib"]["VmRSS"]))
        starts = []
        for rep in range(f["startup_reps"]):
            kinds = [("ours", False), ("python", False)] + ([("python", True)] if f.get("startup_with_trove", True) else [])
            for kind, it in rotate(kinds, rep):
                s = startup(ctx, kind, rep, servers.agent.port, import_trove=it)
                s["rep"] = rep
                starts.append(s)
                log("start-up %-6s%s: %.0f ms, RSS %s KiB" % (kind, " +trove" if it else "", s["ms"], s["mem_kib"].get("VmRSS")))
        results["footprint"] = {"config": f, "idle": idle_r, "startup": starts,
                                "python_server_imports_trove": c["import_trove"]}
    servers.fleet.close()
    ctx.kill(servers.py)


def bench_scale(ctx, cfg, results):
    c = cfg["scale"]
    creates, promotes = [], []
    for k in c["counts"]:
        trio = OursTrio(ctx, count=k + 1, tag="sc%d" % k)  # creates k replicas (warm-up, not timed)
        m = trio.fleet.guests[0]
        reps = trio.fleet.guests[1:]
        rcon(m.port, timeout=600).execute_command("DEBUG", "POPULATE", int(c["data_mb"] * 1024), "data", 1024)
        for rep in range(c["create_reps"]):
            for r in reps:
                trio.fleet.ctl("detach-replica", r.id)
                rcon(r.port).flushall()
            wall0 = time.time()
            took, _, report, _ = trio.fleet.ctl("create-replicas", "--replica-of", m.id, *[r.id for r in reps])
            spans = rpc_spans(trio.fleet.guests, wall0, wall0 + took + 0.05)
            creates.append({"replicas": k, "rep": rep, "mb": c["data_mb"], "total_ms": took * 1000,
                            "snapshot_ms": report.get("snapshot_ms"), "spans": spans})
            log("scale create x%d: %.0f ms" % (k, took * 1000))
        for rep in range(c["promote_reps"]):
            rec = trio.switch(rep, 30)
            rec["rep"] = rep
            promotes.append(rec)
            log("scale promote x%d: writable %s ms, all linked %s ms, pause %.1f ms, done %s ms, lost %s" % (
                k, fmt(rec["writable_ms"]), fmt(rec["all_linked_ms"]), rec["longest_pause_ms"], fmt(rec["command_done_ms"]),
                rec["lost"]))
        trio.fleet.close()
    results["scale"] = {"config": c, "create": creates, "promote": promotes}


def bench_trove(ctx, cfg, results):
    """Trove's control plane (trovecp.py) inside the trove stage's set-up: its own
    (scripts/trove-stage.sh --exec), or, run from within the stage (TROVE_STAGE_RUN set, as CI's
    trove stage does with TROVE_STAGE_BENCH_SMOKE=1), the one already up."""
    out = ctx.path("trove.json")
    cp = [sys.executable, "-m", "trovebench.trovecp", "--out", out, "--ctl", ctx.ctl_bin, "--reps", str(cfg["trove"]["reps"])]
    if os.environ.get("TROVE_STAGE_RUN"):
        # Trove's services started by trovecp import the stand-ins (tests/trove) as the stage's do.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "bench"), os.path.join(ROOT, "tests", "trove")]))
        argv = cp
    else:
        env = dict(os.environ, TROVE_VENV=sys.prefix,
                   TROVE_STAGE_SUBNET=os.environ.get("TROVE_STAGE_SUBNET", "172.28.93.0/24"))
        argv = ["bash", os.path.join(ROOT, "scripts", "trove-stage.sh"), "--exec", *cp]
    p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
    try:
        p.wait()
    except BaseException:
        # Ctrl-C or SIGTERM: let the stage's own cleanup remove its containers, network and database
        # (subprocess.run would SIGKILL it halfway).
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=180)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    data = json.load(open(out)) if os.path.exists(out) else None
    if p.returncode != 0 or data is None:
        raise BenchError("the trove benchmark failed (exit %d); logs under target/trove-stage/last" % p.returncode)
    data["config"] = cfg["trove"]
    results["trove"] = data


def run(ctx, cfg, only, results):
    timings = results.setdefault("meta", {}).setdefault("bench_seconds", {})
    steps = [
        (("switchover", "failover"), lambda: bench_switchover_and_failover(ctx, cfg, results, only)),
        (("create",), lambda: bench_create(ctx, cfg, results)),
        (("rpc", "footprint"), lambda: bench_rpc_and_footprint(ctx, cfg, results, only)),
        (("scale",), lambda: bench_scale(ctx, cfg, results)),
        (("fsync",), lambda: bench_fsync(ctx, cfg, results)),
        (("agentcost",), lambda: bench_agentcost(ctx, cfg, results)),
        (("sidebyside",), lambda: sidebyside.bench(ctx, cfg["sidebyside"], results)),
        (("trove",), lambda: bench_trove(ctx, cfg, results)),
        (("dualchannel",), lambda: bench_dualchannel(ctx, cfg, results)),
        (("backup",), lambda: backup.bench(ctx, cfg, results)),
    ]
    for names, fn in steps:
        if not any(n in only for n in names):
            continue
        t = now()
        log("=== %s" % " + ".join(n for n in names if n in only))
        before, started = provenance(), time.strftime("%Y-%m-%d %H:%M:%S %Z")
        fn()
        after = provenance()
        # Every section says which agent and machine it measured, and how loaded the machine was.
        for n in names:
            if n in only and n in results:
                rec = {k: v for k, v in before.items() if k != "load"}
                rec.update(load_before=before["load"], load_after=after["load"], started=started,
                           finished=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
                a, b = before["agent"], after["agent"]
                if (a["src_commit"], a["src_dirty"]) != (b["src_commit"], b["src_dirty"]):
                    rec["agent_after"] = b  # the agent's sources changed during the section
                results[n]["run"] = rec
        timings["+".join(n for n in names if n in only)] = round(now() - t, 1)
