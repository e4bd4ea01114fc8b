"""Diagnostic: Valkey's dual-channel replication against plain diskless sync, both through the
agent (trove-guestctl create-replicas), one and two replicas, per data size. Two fleets on the same
Valkey binary that differ only in [replication] dual_channel_replication, filled alike, runs
interleaved (the order alternates). Each dual run must show the RDB channel in the master's log,
and each plain run must not. Needs BENCH_SERVER=valkey-8.0 or newer."""

import os
import time

from .common import BenchError, log, server_identity, SERVER_BIN
from .create import CreateBench

DUAL_ENV = {"TROVE_GUESTAGENT__REPLICATION__DUAL_CHANNEL_REPLICATION": "true"}
RDB_CHANNEL = "Full sync will continue with dedicated RDB channel"


def rdb_channel_syncs(guest):
    try:
        with open(os.path.join(guest.dir, "data", "redis-server.log"), errors="replace") as f:
            return f.read().count(RDB_CHANNEL)
    except OSError:
        return 0


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def bench_dualchannel(ctx, cfg, results):
    name, version = server_identity()
    if name != "valkey" or version < (8, 0, 0):
        raise BenchError("dualchannel needs Valkey 8.0+ (BENCH_SERVER=valkey-9.1.2); %s is %s %s"
                         % (SERVER_BIN, name, ".".join(map(str, version))))
    c = cfg["dualchannel"]
    top = max(c["counts"])
    benches = {"plain": CreateBench(ctx, top, tag="dcp"), "dual": CreateBench(ctx, top, tag="dcd", env=DUAL_ENV)}
    runs, sizes = [], {}
    try:
        for mb, reps in c["sizes"]:
            sizes[str(mb)] = {mode: b.fill(mb) for mode, b in benches.items()}
            for rep in range(reps):
                for i, n in enumerate(c["counts"]):
                    for mode in (["plain", "dual"] if (rep + i) % 2 == 0 else ["dual", "plain"]):
                        b = benches[mode]
                        os.sync()
                        time.sleep(0 if ctx.smoke else 0.3)
                        before = rdb_channel_syncs(b.master)
                        rec = b.ours(n, True)
                        used = rdb_channel_syncs(b.master) - before
                        if (mode == "dual") != (used > 0):
                            raise BenchError("%s run: %d RDB-channel syncs in the master's log" % (mode, used))
                        rec.update({"mode": mode, "mb": mb, "rep": rep, "rdb_channel_syncs": used})
                        runs.append(rec)
                        log("dualchannel %4d MB x%d %-5s: %.0f ms (full syncs %d, RDB channel %d)"
                            % (mb, n, mode, rec["total_ms"], rec["sync_full_delta"], used))
    finally:
        for b in benches.values():
            b.fleet.close()
            for node in b.hand:
                node.kill9()
    summary = []
    for mb, _ in c["sizes"]:
        for n in c["counts"]:
            med = {m: median([r["total_ms"] for r in runs if r["mode"] == m and r["mb"] == mb and r["n"] == n])
                   for m in ("plain", "dual")}
            summary.append({"mb": mb, "n": n, "plain_ms": med["plain"], "dual_ms": med["dual"],
                            "dual_over_plain": med["dual"] / med["plain"] if med["plain"] else None})
            log("dualchannel %4d MB x%d: plain %.0f ms, dual %.0f ms, dual/plain %.2f"
                % (mb, n, med["plain"], med["dual"], summary[-1]["dual_over_plain"] or 0))
    results["dualchannel"] = {"config": c, "server": "%s %s" % (name, ".".join(map(str, version))),
                              "runs": runs, "sizes": sizes, "summary": summary}
