"""Turns the raw results (results JSON) into BENCHMARKS.md and one PNG chart per benchmark."""

import os
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .common import percentile  # noqa: E402

# ---------------------------------------------------------------------------------------------
# helpers


def vals(runs, key, **where):
    out = []
    for r in runs:
        if all(r.get(k) == v for k, v in where.items()):
            v = r.get(key)
            out.append(v)
    return out


def med(xs):
    xs = [x for x in xs if x is not None]
    return percentile(xs, 50) if xs else None


def p95(xs):
    xs = [x for x in xs if x is not None]
    return percentile(xs, 95) if xs else None


def num(v, digits=None):
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if digits is None:
        a = abs(v)
        digits = 0 if a >= 100 else 1 if a >= 10 else 2 if a >= 0.1 else 3
    return ("{:,.%df}" % digits).format(v)


def fig(xs, digits=None):
    """'median (p95 x)' of a list, or — when nothing was measured."""
    xs2 = [x for x in xs if x is not None]
    if not xs2:
        return "—" + (" (%d of %d missing)" % (len(xs) - len(xs2), len(xs)) if xs else "")
    m, p = med(xs2), p95(xs2)
    s = num(m, digits)
    if len(xs2) > 1:
        s += " (p95 %s)" % num(p, digits)
    if len(xs2) < len(xs):
        s += " [%d of %d n/a]" % (len(xs) - len(xs2), len(xs))
    return s


def ratio_txt(a, b, digits=2):
    if a is None or b is None:
        return "—"
    if b == 0:
        return "—" if a != 0 else "1.00×"
    return ("%." + str(digits) + "f×") % (a / b)


def met(ok):
    return "—" if ok is None else ("✅ met" if ok else "❌ missed")


def table(headers, rows):
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        out.append("| " + " | ".join("" if c is None else str(c) for c in r) + " |")
    return "\n".join(out)


def save(figure, charts, name):
    os.makedirs(charts, exist_ok=True)
    path = os.path.join(charts, name)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def bars(ax, groups, series, data, ylabel, log=False, colors=None):
    """Grouped bars of medians with p95 whiskers. data[(group, series)] = list of values."""
    import numpy as np
    x = np.arange(len(groups))
    w = 0.8 / max(1, len(series))
    for i, s in enumerate(series):
        m = [med(data.get((g, s), [])) or 0 for g in groups]
        hi = [max(0, (p95(data.get((g, s), [])) or 0) - (med(data.get((g, s), [])) or 0)) for g in groups]
        ax.bar(x + (i - (len(series) - 1) / 2) * w, m, w, yerr=[[0] * len(m), hi], capsize=3, label=s,
               color=(colors or {}).get(s))
    ax.set_xticks(x)
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)


def label_bars(ax, fmt="{:.0f}", missing=None):
    """Writes each bar's height above it (or `missing` for empty bars)."""
    for patch in ax.patches:
        h = patch.get_height()
        x = patch.get_x() + patch.get_width() / 2
        if h and h > 0:
            txt = fmt.format(h) if h >= 10 or "." in fmt else "{:.2g}".format(h)
            # Beside the p95 whisker (which rises from the bar's centre), not on it.
            ax.annotate(txt, (x, h), ha="left", va="bottom", fontsize=7, xytext=(4, 1), textcoords="offset points")
        elif missing:
            ax.annotate(missing, (x, ax.get_ylim()[0]), ha="center", va="bottom", fontsize=7, xytext=(0, 4),
                        textcoords="offset points", color="grey")


COLORS = {"ours": "#1f77b4", "sentinel": "#d62728", "failover": "#ff7f0e", "floor": "#2ca02c", "hand": "#2ca02c",
          "python": "#9467bd", "python+trove": "#8c564b"}

# ---------------------------------------------------------------------------------------------
# 1. switchover


def sec_switchover(res, charts):
    runs = res["runs"]
    labels = res["labels"]
    reps = res["config"]["reps"]
    anchors = ["sentinel", "failover", "floor"]
    L = ["## 1. Planned switchover (one master, two replicas, persistence on, writer running)", ""]
    L.append(
        "Each round: the writer (`trovebench/writer.py`, a separate process) runs `SET w:<n> <n>` back to back "
        "against whichever node says `ROLE` master, records every acknowledged write and its time, and re-resolves "
        "the master on READONLY or connection errors. After 0.5 s of writing, the switch is started and a monitor "
        "polls: a probe `SET` on the candidate(s) every ~1 ms (→ *writable*), then `ROLE` on every other node until it "
        "follows the new master with the link up (→ *all linked*). Then every acknowledged write is looked up on the "
        "%s (→ *lost*), and `sync_full` is summed over the three nodes before and after. %s"
        % ("master at the end" if any("final_master" in r for r in runs) else "new master",
           "The Sentinel rows write through redis-py's `Sentinel(...).master_for()` client instead. "
           if any(r.get("client") == "redis-py Sentinel" for r in runs) else "") +
        "%d round(s) per method, interleaved (the method order rotates each round), candidates alternating." % reps)
    L.append("")
    L.append("Methods: **ours** = `trove-guestctl promote-to-replica-source` (a new process: connect to RabbitMQ, "
             "probe the guests, then the flow); **Sentinel** = `SENTINEL FAILOVER mymaster` on three sentinels, "
             "quorum 2, down-after 1000 ms, failover-timeout 10000 ms, parallel-syncs 1; **FAILOVER** = "
             "`FAILOVER TO host port` on the master (the third node stays a replica of the old master, so *all "
             "linked* does not apply; the table gives the old master's link time instead); **floor** = "
             "`trovebench/floor.py`, a pre-connected script: `CLIENT PAUSE WRITE` on the master, wait for the "
             "candidate's offset, `REPLICAOF NO ONE`, re-point the old master (then unpause it) and the other replica.")
    L.append("")
    ours = [r for r in runs if r["method"] == "ours"]

    def series(method, key):
        rs = [r for r in runs if r["method"] == method]
        if key == "all_linked_ms" and method == "failover":
            return [r.get("old_master_linked_ms") for r in rs]
        if key == "repoint_after_fence_ms":
            lk = "old_master_linked_ms" if method == "failover" else "all_linked_ms"
            return [None if r.get(lk) is None or r.get("pause_starts_ms") is None
                    else r[lk] - r["pause_starts_ms"] for r in rs]
        return [r.get(key) for r in rs]

    metrics = [
        ("time from command until the new master accepts a write (ms)", "writable_ms", None),
        ("time from command until every other node follows it, link up (ms)", "all_linked_ms", ("≤ 100 ms", lambda v: v <= 100)),
        ("same, counted from the start of the write pause (ms)", "repoint_after_fence_ms", None),
        ("longest write pause the writer saw (ms)", "longest_pause_ms", ("≤ 25 ms", lambda v: v <= 25)),
        ("acknowledged writes lost", "lost", ("0", lambda v: v == 0)),
        ("full resyncs (sync_full delta, all nodes)", "sync_full_delta", ("0", lambda v: v == 0)),
        ("time until the command returned (ms)", "command_done_ms", None),
    ]
    rows = []
    for title, key, target in metrics:
        o = series("ours", key)
        ok = None
        if target:
            om = [v for v in o if v is not None]
            if key in ("lost", "sync_full_delta"):
                ok = bool(om) and all(target[1](v) for v in om) and len(om) == len(o)
            else:
                ok = bool(om) and target[1](med(om)) and len(om) == len(o)
        for i, a in enumerate(anchors):
            av = series(a, key)
            note = ""
            if a == "failover" and key == "all_linked_ms":
                note = " (old master only; 3rd node left chained)"
            d = 0 if key in ("lost", "sync_full_delta") else None
            rows.append([title if i == 0 else "", labels.get(a, a) + note, fig(o, d), fig(av, d),
                         ratio_txt(med(o), med(av)), target[0] if (target and i == 0) else "",
                         met(ok) if (target and i == 0) else ""])
    L.append(table(["Metric", "Anchor (same run)", "Ours: median (p95)", "Anchor: median (p95)", "Ratio ours/anchor",
                    "Target", "Ours vs target"], rows))
    L.append("")
    tot = {m: (sum(v for v in series(m, "lost") if v), sum(v for v in series(m, "acked") if v)) for m in ["ours", *anchors]}
    L.append("Totals over all rounds — acknowledged / lost writes: " + "; ".join(
        "%s %s / %s" % (m, num(tot[m][1], 0), num(tot[m][0], 0)) for m in tot) + ". "
        "Writer's baseline (longest gap in the 0.45 s before each command, i.e. machine noise): median %s ms." % num(
            med([r.get("baseline_pause_ms") for r in runs])))
    L.append("")
    # documented anchors
    L.append("Documented anchor figures (replication-anchors.md §5): Redis `FAILOVER` \"typically less than a "
             "second\" (≤ ~1 s ACK wait + handshake); `SENTINEL FAILOVER` seconds and lossy (redis#6062); "
             "switchover floor ≈ 2–5 ms + drain on a LAN (estimate); Azure planned < 1 s; Trove Liberty Redis "
             "promote: minutes.")
    L.append("")
    # ours: where the time goes
    ph = [r.get("phases") for r in ours if r.get("phases")]
    if ph:
        L.append("Where ours spends it (from the agents' own `request done … elapsed_ms` log lines, medians over "
                 "the rounds, ms since the command started):")
        L.append("")
        prow = [
            ["CLI start-up until the first RPC reaches an agent (process start, AMQP connect, status probe of every guest)", fig([p["cli_setup"] for p in ph])],
            ["fence on the old master → candidate writable and unfenced (`writes_blocked_ms` as the CLI reports it: %s)" % fig([r.get("writes_blocked_ms_reported") for r in ours]), fig([p["fence_to_writable"] for p in ph])],
            ["  … of which inside agent handlers (sum of `elapsed_ms`, %s RPCs in that window)" % num(med([p["fence_to_writable_rpcs"] for p in ph]), 0), fig([p["fence_to_writable_agent"] for p in ph])],
            ["writable → last `attach_replica` returned (old master and replica re-pointed, caught up)", fig([p["writable_to_repointed"] for p in ph])],
            ["last attach → command exit (inventory saves, `demote_replication_master`)", fig([p["repointed_to_exit"] for p in ph])],
        ]
        by = {}
        for p in ph:
            for k, v in p["agent_ms_by_method"].items():
                by.setdefault(k, []).append(v)
        L.append(table(["Phase of `promote-to-replica-source`", "ms: median (p95)"], prow))
        L.append("")
        if by:
            L.append("Agent handler time inside the write-blocked window, by method (median ms): " + ", ".join(
                "`%s` %s" % (k, num(med(v))) for k, v in sorted(by.items(), key=lambda kv: -med(kv[1]))) + ".")
            L.append("")
    # chart
    f, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    methods = ["ours", *anchors]
    names = [labels.get(m, m).split(" (")[0].replace("Sentinel SENTINEL", "SENTINEL") for m in methods]
    for ax, (key, ttl) in zip(axes, [("writable_ms", "command → new master writable (ms)"),
                                     ("all_linked_ms", "command → all linked (ms)\n(FAILOVER: old master only)"),
                                     ("longest_pause_ms", "longest write pause (ms)"),
                                     ("lost", "acknowledged writes lost")]):
        data = {(n, "x"): series(m, key) for n, m in zip(names, methods)}
        bars(ax, names, ["x"], data, "median, whisker p95", log=key != "lost")
        if key == "lost":
            ax.set_yscale("symlog", linthresh=1)
        for patch, m in zip(ax.patches, methods):
            patch.set_color(COLORS[m])
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * (4 if ax.get_yscale() != "linear" else 1.15))
        label_bars(ax, missing="0" if key == "lost" else "n/a")
        ax.set_title(ttl, fontsize=10)
        ax.tick_params(axis="x", labelrotation=20)
    f.suptitle("Planned switchover, 1 master + 2 replicas, writer running (%d rounds each; log scale)" % reps, fontsize=11)
    save(f, charts, "switchover.png")
    L.append("![switchover](bench/charts/switchover.png)")
    L.append("")
    return L


# ---------------------------------------------------------------------------------------------
# 2. unplanned failover


FAILOVER_TITLE = "Manual eject at the kill (no failure detection) beside Sentinel's automatic failover"


def sec_failover(res, charts):
    runs = res["runs"]
    reps = res["config"]["reps"]
    L = ["## 2. %s" % FAILOVER_TITLE, ""]
    L.append(
        "**Not a like-for-like comparison:** ours is an operator's `trove-guestctl eject-replica-source <dead master>` "
        "issued the instant the master is killed, so it contains no failure detection at all; Sentinel detects the "
        "death itself (`down-after-milliseconds 1000`; the stock default is 30000, which adds ~29 s) and then fails "
        "over. No ratio between the two is given. For automatic failover against automatic failover (our watcher "
        "against Sentinel, both detecting), see section 2b.")
    L.append("")
    L.append(
        "Same writer%s. Before the kill one replica is made to lag: its Redis is `SIGSTOP`ped and the master's "
        "replica links are cut (`CLIENT KILL TYPE replica`); the other replica re-links and moves ahead for "
        "0.25 s. Then the master (and, for ours, its agent first) is killed with SIGKILL, the lagging replica is "
        "`SIGCONT`ed, both replicas' offsets are read, and ours runs the eject at once (the operator's reaction "
        "time is not counted). Time is counted from the kill. The writer goes on for %s s after the new master "
        "took its first write, so every round has writes acknowledged after the failover; acknowledged writes "
        "lost are counted, all of them and those after the failover, on the master at the end (asked of the "
        "survivors' Redis). The lagging replica alternates. %d round(s) per method, interleaved." % (
            " (for Sentinel, redis-py's Sentinel client)" if any(r.get("client") == "redis-py Sentinel" for r in runs)
            else "", res["config"].get("post_failover_s", "—"), reps))
    L.append("")
    rows = []
    o = [r for r in runs if r["method"] == "ours"]
    s = [r for r in runs if r["method"] == "sentinel"]

    def col(rs, k):
        return [r.get(k) for r in rs]

    def rounds(rs, pred):
        return "%d of %d" % (sum(1 for r in rs if pred(r)), len(rs))
    rows.append(["time from kill until the new master accepts a write (ms)", fig(col(o, "writable_ms")),
                 fig(col(s, "writable_ms")), "Sentinel at stock down-after 30000: ~32–35 s; Azure unplanned 10–15 s"])
    rows.append(["time from kill until the other replica follows it, link up (ms)", fig(col(o, "all_linked_ms")),
                 fig(col(s, "all_linked_ms")), ""])
    rows.append(["writes acknowledged after the failover, per round", fig(col(o, "acked_after_failover"), 0),
                 fig(col(s, "acked_after_failover"), 0), ""])
    rows.append(["acknowledged writes lost, per round (all of the round's)", fig(col(o, "lost"), 0),
                 fig(col(s, "lost"), 0), "Sentinel: \"a window always exists\""])
    rows.append(["of those, acknowledged after the failover", fig(col(o, "lost_after_failover"), 0),
                 fig(col(s, "lost_after_failover"), 0), ""])
    rows.append(["chose the most current replica (rounds)", rounds(o, lambda r: r["chosen_most_current"]),
                 rounds(s, lambda r: r["chosen_most_current"]), "Sentinel can pick by a stale INFO offset (redis#13483)"])
    rows.append(["chose the lagging replica (rounds)", rounds(o, lambda r: r["chosen"] == r["lagger"]),
                 rounds(s, lambda r: r["chosen"] == r["lagger"]), ""])
    rows.append(["failed over a second time within the round (rounds; the master at the end asked of Redis, "
                 "Sentinel also by its +switch-master events)", rounds(o, lambda r: r.get("second_failover")),
                 rounds(s, lambda r: r.get("second_failover")), ""])
    rows.append(["two survivors still masters 30 s after the failover (rounds; losses then counted on the master "
                 "Sentinel names)", rounds(o, lambda r: r.get("masters_at_end")),
                 rounds(s, lambda r: r.get("masters_at_end")), ""])
    rows.append(["offset gap between the two replicas at the kill (bytes)", fig(col(o, "offset_gap_bytes"), 0),
                 fig(col(s, "offset_gap_bytes"), 0), ""])
    rows.append(["full resyncs on the survivors (sync_full delta)", fig(col(o, "sync_full_delta"), 0),
                 fig(col(s, "sync_full_delta"), 0), ""])
    rows.append(["time until the eject command returned (ms)", fig(col(o, "command_done_ms")), "—", ""])
    L.append(table(["Metric", "Ours, manual eject at the kill: median (p95)",
                    "Sentinel, detection + failover (same run): median (p95)", "Documented anchor"], rows))
    L.append("")
    f, axes = plt.subplots(1, 2, figsize=(10, 4))
    names = ["ours: eject at the kill\n(no detection)", "Sentinel: detection\n+ failover"]
    bars(axes[0], names, ["x"], {(names[0], "x"): col(o, "writable_ms"), (names[1], "x"): col(s, "writable_ms")},
         "ms from kill to writable (median, p95)")
    for patch, m in zip(axes[0].patches, ["ours", "sentinel"]):
        patch.set_color(COLORS[m])
    label_bars(axes[0])
    axes[0].set_title("kill -9 → new master writable", fontsize=10)
    bars(axes[1], names, ["x"], {(names[0], "x"): col(o, "lost"), (names[1], "x"): col(s, "lost")},
         "acknowledged writes lost")
    for patch, m in zip(axes[1].patches, ["ours", "sentinel"]):
        patch.set_color(COLORS[m])
    label_bars(axes[1])
    axes[1].set_title("acknowledged writes lost (incl. after the failover)", fontsize=10)
    f.suptitle("%s, one lagging replica (%d rounds each)" % (FAILOVER_TITLE, reps), fontsize=10)
    save(f, charts, "failover.png")
    L.append("![failover](bench/charts/failover.png)")
    L.append("")
    return L


# ---------------------------------------------------------------------------------------------
# 3. replica creation


def overhead_ms(run):
    syncs = [sp["ms"] for sp in run.get("spans") or [] if sp["method"].endswith("/sync")]
    return None if not syncs else run["total_ms"] - max(syncs)


def sec_create(res, charts):
    runs = res["runs"]
    sizes = res["sizes"]
    cfg = res["config"]
    L = ["## 3. Replica creation", ""]
    L.append(
        "One agent-managed master filled with `DEBUG POPULATE` (1 KiB values; `rdbcompression no`, so the RDB is "
        "as large as the data). **ours** = `trove-guestctl create-replicas --replica-of M R1..Rn` on prepared, empty "
        "guests; it returns when every replica is linked and caught up. The CLI always sends Trove's replica-source "
        "template (`repl-diskless-sync yes`), so for **diskless off** the same RPC sequence as `create.rs` "
        "(`backup_required_for_replication`, `get_replication_snapshot` with `repl-diskless-sync no`, then "
        "`attach_replica` on every replica in parallel) is sent with `trove-guestctl call`. **hand-made** = "
        "`REPLICAOF` on n plain redis-servers of the same master, with the master settings the agent applies "
        "(`repl-diskless-sync-delay` 0 for one replica, otherwise `repl-diskless-sync-max-replicas n`), polling "
        "`ROLE` every 5 ms until all are linked with the master's offset. Replicas are emptied between runs, and "
        "dirty page cache is flushed (`sync`) before each timed run. At each size one unrecorded warm-up round "
        "comes first (the most replicas, diskless, both ways; its times are in the results' `warmup_ms`): a "
        "replica's first load at a new size also pays for memory that its process and this machine never touched, "
        "which a single-round size would charge to whichever side ran first. "
        "Sizes and rounds: " + ", ".join("%s MB × %d round(s)" % (mb, r) for mb, r in cfg["sizes"]) +
        " (the 1 GB runs take minutes each on 2 cores, hence fewer rounds; with two, the median is their mean).")
    L.append("")
    L.append("Data: " + "; ".join("%s MB target → %s keys, used_memory %.0f MiB" % (
        k, num(v["keys"], 0), v["used_memory"] / 2**20) for k, v in sizes.items()) + ".")
    L.append("")
    rows = []
    for mb, _ in cfg["sizes"]:
        for d in cfg["diskless"]:
            for n in cfg["counts"]:
                o = vals(runs, "total_ms", method="ours", n=n, diskless=d, mb=mb)
                h = vals(runs, "total_ms", method="hand", n=n, diskless=d, mb=mb)
                r = ratio_txt(med(o), med(h))
                ok = None if med(o) is None or med(h) is None else med(o) <= 1.10 * med(h)
                ov = [overhead_ms(x) for x in runs if x["method"] == "ours" and x["n"] == n and x["diskless"] == d and x["mb"] == mb]
                rows.append(["%s MB, %d replica%s, diskless %s" % (mb, n, "s" if n > 1 else "", "on" if d else "off"),
                             fig([x / 1000 for x in o], 2), fig([x / 1000 for x in h], 2), r, fig(ov, 0), "≤ 1.10×", met(ok)])
    L.append(table(["Setting", "Ours: s, median (p95)", "Hand-made REPLICAOF (same run): s", "Ratio ours/hand",
                    "Ours outside Redis's sync (ms)", "Target", "Met"], rows))
    L.append("")
    L.append("*Ours outside Redis's sync* = the command's time minus the longest wait inside `attach_replica` "
             "from its `REPLICAOF` until the replica was linked with the master's offset (the agents' "
             "`replica linked and caught up elapsed_ms`): CLI start-up, probes, the snapshot call, the attach "
             "preludes, RPC hops and the 20 ms polling granularity. Everything else is Redis's own transfer and load, "
             "which the hand-made path pays as well.")
    L.append("")
    rows = []
    for mb, _ in cfg["sizes"]:
        for d in cfg["diskless"]:
            for method in ("ours", "hand"):
                one = med(vals(runs, "total_ms", method=method, n=1, diskless=d, mb=mb))
                two = med(vals(runs, "total_ms", method=method, n=2, diskless=d, mb=mb))
                four = med(vals(runs, "total_ms", method=method, n=4, diskless=d, mb=mb))
                ok = None if (method != "ours" or one is None or two is None) else two <= 1.35 * one
                rows.append(["%s MB, diskless %s" % (mb, "on" if d else "off"), method, ratio_txt(two, one),
                             ratio_txt(four, one), "≤ 1.35× (2 vs 1)" if method == "ours" else "",
                             met(ok) if method == "ours" else ""])
    L.append("Scaling with the number of replicas (ratios of medians):")
    L.append("")
    L.append(table(["Setting", "Method", "2 replicas / 1", "4 replicas / 1", "Target", "Met"], rows))
    L.append("")
    L.append("Documented anchor: no public end-to-end figure for `SLAVEOF` → link up; the estimate in "
             "replication-anchors.md §5.2 is delay + fork + max(transfer, disk) + load at ~1–1.3 M keys/s "
             "(e.g. 10 GB on 10 GbE ≈ 20–30 s). Trove Liberty did not wait for the sync at all and restarted the "
             "master on every replica creation; its template's 10 s diskless delay applied to every attach.")
    L.append("")
    # chart
    f, axes = plt.subplots(1, len(cfg["sizes"]), figsize=(6 * len(cfg["sizes"]), 4), squeeze=False)
    for ax, (mb, rounds) in zip(axes[0], cfg["sizes"]):
        groups = ["%d, %s" % (n, "dl on" if d else "dl off") for d in cfg["diskless"] for n in cfg["counts"]]
        data = {}
        for d in cfg["diskless"]:
            for n in cfg["counts"]:
                g = "%d, %s" % (n, "dl on" if d else "dl off")
                data[(g, "ours")] = [x / 1000 for x in vals(runs, "total_ms", method="ours", n=n, diskless=d, mb=mb)]
                data[(g, "hand")] = [x / 1000 for x in vals(runs, "total_ms", method="hand", n=n, diskless=d, mb=mb)]
        bars(ax, groups, ["ours", "hand"], data, "s until all linked and caught up", colors=COLORS)
        ax.set_title("%s MB master, %d round(s) (replicas, diskless)" % (mb, rounds), fontsize=10)
        ax.legend(fontsize=8)
    f.suptitle("Replica creation: ours vs hand-made REPLICAOF on the same master", fontsize=11)
    save(f, charts, "create.png")
    L.append("![create](bench/charts/create.png)")
    L.append("")
    return L


# ---------------------------------------------------------------------------------------------
# 4. RPC overhead


def sec_rpc(res, charts):
    m = res["matrix"]
    cfg = res["config"]
    L = ["## 4. RPC overhead", ""]
    L.append(
        "`rpc_ping` round trips against **ours** (a prepared trove-guestagent) and **python** (`trovebench/py_guest.py`: "
        "an oslo.messaging 18.3.1 RPC server set up as `trove/cmd/guest.py` does — topic `guestagent.<id>`, "
        "control exchange `trove`, endpoint version 1.3, threading executor — with the same methods, reading Redis "
        "with redis-py%s). Both on the same RabbitMQ and the same Redis. Callers call back to back for %.1f s after a "
        "warm-up; %d round(s), servers interleaved. Two drivers: the **Python oslo.messaging client** (the reference; "
        "callers are threads spread over up to 4 processes, each with its own transport) and the agent library's "
        "**Rust RpcClient** (`bench/rpc-load`, one connection), which shows what the servers do when the client is "
        "not the bottleneck. p50/p99 are per round over every call; the table gives the median over rounds (p95 over "
        "rounds in brackets)." % (", and importing Trove's guest-agent modules" if cfg.get("import_trove") else "",
                                  cfg["duration_s"], cfg["reps"]))
    L.append("")
    rows = []
    for client in cfg["clients"]:
        for c in cfg["callers"]:
            o = [r for r in m if r["client"] == client and r["callers"] == c and r["server"] == "ours"]
            p = [r for r in m if r["client"] == client and r["callers"] == c and r["server"] == "python"]
            for key, label, target in (("p50_ms", "p50 (ms)", ("≤ 1 ms", lambda v: v <= 1.0)),
                                       ("p99_ms", "p99 (ms)", None),
                                       ("calls_per_s", "calls/s", ("≥ 2000 at 16", lambda v: v >= 2000) if c == 16 else None)):
                ov, pv = [r[key] for r in o], [r[key] for r in p]
                ok = None
                if target and med(ov) is not None and (key != "p50_ms" or c == 1):
                    ok = target[1](med(ov))
                rows.append(["%s client, %d caller%s" % (client, c, "s" if c > 1 else ""), label, fig(ov), fig(pv),
                             ratio_txt(med(ov), med(pv)) + (" (higher is better)" if key == "calls_per_s" else ""),
                             target[0] if target and (key != "p50_ms" or c == 1) else "", met(ok)])
    L.append(table(["Setting", "Figure", "Ours", "Python oslo.messaging server (same run)", "Ratio ours/python",
                    "Target", "Met"], rows))
    L.append("")
    errs = sum(r["errors"] for r in m)
    L.append("Errors during the runs: %d." % errs)
    L.append("")
    meth = res.get("methods") or []
    if meth:
        rows = []
        for name in sorted({r["method"] for r in meth}, key=lambda x: (x != "rpc_ping", x)):
            o = [r["p50_ms"] for r in meth if r["method"] == name and r["server"] == "ours"]
            p = [r["p50_ms"] for r in meth if r["method"] == name and r["server"] == "python"]
            o99 = [r["p99_ms"] for r in meth if r["method"] == name and r["server"] == "ours"]
            p99 = [r["p99_ms"] for r in meth if r["method"] == name and r["server"] == "python"]
            rows.append(["`%s`" % name, fig(o), fig(o99), fig(p), fig(p99), ratio_txt(med(o), med(p))])
        L.append("Other methods, one caller, %s client, %d round(s) of %.1f s (each does real Redis work: `INFO "
                 "replication`, or `INFO all` for `get_replication_status`):" % (
                     "Python oslo.messaging" if cfg.get("method_client", "python") == "python" else "Rust",
                     cfg.get("method_reps", 1), cfg.get("method_duration_s", 0)))
        L.append("")
        L.append(table(["Method", "Ours p50 (ms)", "Ours p99 (ms)", "Python p50 (ms)", "Python p99 (ms)", "Ratio p50"], rows))
        L.append("")
    # chart
    f, axes = plt.subplots(1, 2, figsize=(11, 4))
    for client, ls in zip(cfg["clients"], ["-", "--"]):
        for server in ("ours", "python"):
            xs = cfg["callers"]
            ys = [med([r["calls_per_s"] for r in m if r["client"] == client and r["callers"] == c and r["server"] == server]) for c in xs]
            ys50 = [med([r["p50_ms"] for r in m if r["client"] == client and r["callers"] == c and r["server"] == server]) for c in xs]
            axes[0].plot(xs, ys, ls, marker="o", color=COLORS[server], label="%s (%s client)" % (server, client))
            axes[1].plot(xs, ys50, ls, marker="o", color=COLORS[server], label="%s (%s client)" % (server, client))
    axes[0].axhline(2000, color="grey", lw=0.8, ls=":")
    axes[0].set_title("rpc_ping calls/s (target ≥ 2000 at 16)", fontsize=10)
    axes[1].axhline(1.0, color="grey", lw=0.8, ls=":")
    axes[1].set_title("rpc_ping p50 latency, ms (target ≤ 1)", fontsize=10)
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(cfg["callers"])
        ax.set_xticklabels([str(c) for c in cfg["callers"]])
        ax.set_xlabel("concurrent callers")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    f.suptitle("RPC round trips over RabbitMQ: trove-guestagent vs Python oslo.messaging server", fontsize=11)
    save(f, charts, "rpc.png")
    L.append("![rpc](bench/charts/rpc.png)")
    L.append("")
    return L


# ---------------------------------------------------------------------------------------------
# 5. footprint


def sec_footprint(res, rpc, charts):
    idle = res["idle"]
    st = res["startup"]
    L = ["## 5. Footprint", ""]
    trove = res.get("python_server_imports_trove")
    L.append(
        "Resident memory (`VmRSS`, the agent process alone, not its redis-server child) and CPU (utime+stime from "
        "`/proc/<pid>/stat` over the window) of both servers idle for %d s (both send heartbeats every 3 s) and during "
        "the Python client's 4-caller `rpc_ping` load of benchmark 4; start-up = from spawning a fresh server (new "
        "guest id, not prepared, so the agent starts no Redis) until the first `rpc_ping` answers (the Rust client "
        "probes every 2 ms). The Python server %s Trove's guest-agent modules (`trove` %s from PyPI: %s); "
        "start-up is given with and without them." % (
            res["config"]["idle_s"], "also imports" if trove else "does not import",
            "26.0.0", "trove.guestagent.api, trove.guestagent.datastore.manager/service, "
            "trove.guestagent.strategies.replication, trove.common.cfg, trove.common.rpc.*"))
    L.append("")
    load_rows = [r for r in rpc.get("matrix", []) if r["client"] == "python" and r["callers"] == 4]
    lo = [r for r in load_rows if r["server"] == "ours"]
    lp = [r for r in load_rows if r["server"] == "python"]
    s_o = [r["ms"] for r in st if r["kind"] == "ours"]
    s_p = [r["ms"] for r in st if r["kind"] == "python" and not r["import_trove"]]
    s_t = [r["ms"] for r in st if r["kind"] == "python" and r["import_trove"]]
    rss_o = idle["ours"]["mem_kib"]["VmRSS"] / 1024
    rss_p = idle["python"]["mem_kib"]["VmRSS"] / 1024
    rows = [
        ["RSS idle (MiB)", num(rss_o, 1), num(rss_p, 1), ratio_txt(rss_o, rss_p, 3), "≤ 10 MiB", met(rss_o <= 10)],
        ["… of which anonymous / file-backed (MiB)", "%s / %s" % (num(idle["ours"]["mem_kib"].get("RssAnon", 0) / 1024, 1),
                                                           num(idle["ours"]["mem_kib"].get("RssFile", 0) / 1024, 1)),
         "%s / %s" % (num(idle["python"]["mem_kib"].get("RssAnon", 0) / 1024, 1),
                      num(idle["python"]["mem_kib"].get("RssFile", 0) / 1024, 1)), "", "", ""],
        ["CPU idle (% of one core)", num(idle["ours"]["cpu_pct"], 2), num(idle["python"]["cpu_pct"], 2),
         ratio_txt(idle["ours"]["cpu_pct"], idle["python"]["cpu_pct"]), "", ""],
        ["peak RSS under the 4-caller load (VmHWM, MiB)", fig([r["server_mem_kib"]["VmHWM"] / 1024 for r in lo], 1),
         fig([r["server_mem_kib"]["VmHWM"] / 1024 for r in lp], 1),
         ratio_txt(med([r["server_mem_kib"]["VmHWM"] for r in lo]), med([r["server_mem_kib"]["VmHWM"] for r in lp]), 3),
         "≤ 10 MiB", met(None if not lo else med([r["server_mem_kib"]["VmHWM"] / 1024 for r in lo]) <= 10)],
        ["CPU under the 4-caller load (% of one core)", fig([r["server_cpu_pct"] for r in lo], 1),
         fig([r["server_cpu_pct"] for r in lp], 1),
         ratio_txt(med([r["server_cpu_pct"] for r in lo]), med([r["server_cpu_pct"] for r in lp])), "", ""],
        ["… at calls/s", fig([r["calls_per_s"] for r in lo], 0), fig([r["calls_per_s"] for r in lp], 0), "", "", ""],
        ["server CPU time per call (µs)", num(med([r["server_cpu_pct"] * 10000 / r["calls_per_s"] for r in lo if r["calls_per_s"]]), 0),
         num(med([r["server_cpu_pct"] * 10000 / r["calls_per_s"] for r in lp if r["calls_per_s"]]), 0),
         ratio_txt(med([r["server_cpu_pct"] * 10000 / r["calls_per_s"] for r in lo if r["calls_per_s"]]),
                   med([r["server_cpu_pct"] * 10000 / r["calls_per_s"] for r in lp if r["calls_per_s"]])), "", ""],
        ["start-up until the first rpc_ping answers (ms)", fig(s_o), fig(s_p), ratio_txt(med(s_o), med(s_p)),
         "≤ 100 ms", met(None if not s_o else med(s_o) <= 100)],
        ["… vs Python with Trove's modules imported (ms)", fig(s_o), fig(s_t), ratio_txt(med(s_o), med(s_t)), "", ""],
        ["RSS right after start-up (MiB)", fig([r["mem_kib"].get("VmRSS", 0) / 1024 for r in st if r["kind"] == "ours"], 1),
         fig([r["mem_kib"].get("VmRSS", 0) / 1024 for r in st if r["kind"] == "python" and not r["import_trove"]], 1)
         + " / with Trove: " + fig([r["mem_kib"].get("VmRSS", 0) / 1024 for r in st if r["kind"] == "python" and r["import_trove"]], 1),
         "", "", ""],
    ]
    L.append(table(["Figure", "Ours", "Python oslo.messaging server (same run)", "Ratio ours/python", "Target", "Met"], rows))
    L.append("")
    f, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    axes[0].bar(["ours", "python"], [rss_o, rss_p], color=[COLORS["ours"], COLORS["python"]])
    axes[0].axhline(10, color="grey", lw=0.8, ls=":")
    axes[0].set_title("RSS idle, MiB (target ≤ 10)", fontsize=10)
    bars(axes[1], ["ours", "python", "python+trove"], ["x"],
         {("ours", "x"): s_o, ("python", "x"): s_p, ("python+trove", "x"): s_t}, "ms (median, p95)")
    for patch, m in zip(axes[1].patches, ["ours", "python", "python+trove"]):
        patch.set_color(COLORS[m])
    axes[1].axhline(100, color="grey", lw=0.8, ls=":")
    axes[1].set_title("start-up until first rpc_ping answer (target ≤ 100 ms)", fontsize=10)
    axes[1].set_yscale("log")
    bars(axes[2], ["idle", "4-caller load"], ["ours", "python"],
         {("idle", "ours"): [idle["ours"]["cpu_pct"]], ("idle", "python"): [idle["python"]["cpu_pct"]],
          ("4-caller load", "ours"): [r["server_cpu_pct"] for r in lo],
          ("4-caller load", "python"): [r["server_cpu_pct"] for r in lp]}, "% of one core", colors=COLORS)
    axes[2].set_title("CPU", fontsize=10)
    axes[2].legend(fontsize=8)
    f.suptitle("Footprint: trove-guestagent vs Python oslo.messaging server", fontsize=11)
    save(f, charts, "footprint.png")
    L.append("![footprint](bench/charts/footprint.png)")
    L.append("")
    return L


# ---------------------------------------------------------------------------------------------
# 6. scale


def create_phases(spans):
    snap = [s for s in spans if s["method"] == "get_replication_snapshot"]
    att = [s for s in spans if s["method"] == "attach_replica"]
    if not snap or not att:
        return None
    first = min(s["start"] for s in spans)
    return {"cli_setup": first, "snapshot": snap[0]["ms"],
            "snapshot_to_first_attach": min(s["start"] for s in att) - snap[0]["end"],
            "attach_max": max(s["ms"] for s in att), "attach_min": min(s["ms"] for s in att),
            "attach_end": max(s["end"] for s in att)}


def sec_scale(res, create_res, charts):
    cfg = res["config"]
    L = ["## 6. Scale: replica count and data size", ""]
    L.append(
        "Ours only, one fleet per replica count (1 master + k replicas, %s MB of data, writer running during each "
        "promote as in benchmark 1). Creates: %d per count (replicas detached and emptied before each); promotes: %d "
        "per count, candidates alternating. Where the time goes comes from the agents' `elapsed_ms` log fields." % (
            cfg["data_mb"], cfg["create_reps"], cfg["promote_reps"]))
    L.append("")
    rows = []
    ks = cfg["counts"]
    for k in ks:
        p = [r for r in res["promote"] if r["replicas"] == k]
        c = [r for r in res["create"] if r["replicas"] == k]
        rows.append([k, fig([r["writable_ms"] for r in p]), fig([r["all_linked_ms"] for r in p]),
                     fig([r["longest_pause_ms"] for r in p]), fig([r["command_done_ms"] for r in p]),
                     "%d / %d" % (sum(r["lost"] or 0 for r in p), sum(r["sync_full_delta"] or 0 for r in p)),
                     fig([r["total_ms"] for r in c])])
    L.append(table(["Replicas", "Promote: command → writable (ms)", "→ all linked (ms)", "longest write pause (ms)",
                    "command returned (ms)", "lost / full resyncs (sum)", "Create k replicas (ms)"], rows))
    L.append("")
    # where the promote time goes
    rows = []
    for k in ks:
        ph = [r["phases"] for r in res["promote"] if r["replicas"] == k and r.get("phases")]
        if not ph:
            continue
        rows.append([k, fig([p["cli_setup"] for p in ph]), fig([p["fence_to_writable"] for p in ph]),
                     fig([p["fence_to_writable_agent"] for p in ph]), fig([p["writable_to_repointed"] for p in ph]),
                     fig([max(p["attach_ms"]) for p in ph]), fig([p["repointed_to_exit"] for p in ph])])
    if rows:
        L.append("Promote, where the time goes (ms, medians):")
        L.append("")
        L.append(table(["Replicas", "CLI start-up → first RPC", "fence → writable", "… inside agent handlers",
                        "writable → all attaches returned", "slowest attach_replica", "last attach → exit"], rows))
        L.append("")
    rows = []
    for k in ks:
        ph = [create_phases(r["spans"]) for r in res["create"] if r["replicas"] == k]
        ph = [p for p in ph if p]
        tot = [r["total_ms"] for r in res["create"] if r["replicas"] == k]
        if not ph:
            continue
        rows.append([k, fig(tot), fig([p["cli_setup"] for p in ph]), fig([p["snapshot"] for p in ph]),
                     fig([p["snapshot_to_first_attach"] for p in ph]), fig([p["attach_min"] for p in ph]),
                     fig([p["attach_max"] for p in ph])])
    if rows:
        L.append("Create, where the time goes (ms, medians):")
        L.append("")
        L.append(table(["Replicas", "total", "CLI start-up → first RPC", "get_replication_snapshot",
                        "snapshot → first attach", "fastest attach_replica", "slowest attach_replica"], rows))
        L.append("")
    # by data size
    pb = (create_res or {}).get("promote_by_size") or []
    if pb:
        rows = []
        for mb in sorted({r["mb"] for r in pb}):
            rs = [r for r in pb if r["mb"] == mb]
            rows.append(["%s MB" % mb, fig([r["total_ms"] for r in rs]), fig([r["writes_blocked_ms_reported"] for r in rs])])
        scale_promote = [r for r in res["promote"] if r["replicas"] == 2]
        if scale_promote:
            rows.insert(0, ["%s MB (this benchmark, 2 replicas)" % cfg["data_mb"],
                            fig([r["command_done_ms"] for r in scale_promote]),
                            fig([r["writes_blocked_ms_reported"] for r in scale_promote])])
        L.append("Promote with more data (2 replicas, no writer; the create benchmark's master):")
        L.append("")
        L.append(table(["Data", "promote command (ms)", "writes blocked, as reported (ms)"], rows))
        L.append("")
        cr = create_res["runs"]
        rows = []
        for mb in sorted({r["mb"] for r in cr}):
            for n in sorted({r["n"] for r in cr}):
                o = vals(cr, "total_ms", method="ours", n=n, diskless=True, mb=mb)
                ph = [create_phases(r.get("spans") or []) for r in cr if r["method"] == "ours" and r["n"] == n and r["diskless"] and r["mb"] == mb]
                ph = [p for p in ph if p]
                rows.append(["%s MB" % mb, n, fig(o), fig([p["snapshot"] for p in ph]), fig([p["attach_max"] for p in ph])])
        L.append("Create by data size (diskless on, from benchmark 3):")
        L.append("")
        L.append(table(["Data", "Replicas", "total (ms)", "get_replication_snapshot (ms)", "slowest attach_replica (ms)"], rows))
        L.append("")
    f, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, lab in (("writable_ms", "command → writable"), ("all_linked_ms", "command → all linked"),
                     ("longest_pause_ms", "longest write pause"), ("command_done_ms", "command returned")):
        ys = [med([r[key] for r in res["promote"] if r["replicas"] == k]) for k in ks]
        axes[0].plot(ks, ys, marker="o", label=lab)
    axes[0].set_title("promote-to-replica-source vs replica count", fontsize=10)
    ys = [med([r["total_ms"] for r in res["create"] if r["replicas"] == k]) for k in ks]
    axes[1].plot(ks, ys, marker="o", color=COLORS["ours"], label="create-replicas (%s MB)" % cfg["data_mb"])
    axes[1].set_title("create-replicas vs replica count", fontsize=10)
    for ax in axes:
        ax.set_xticks(ks)
        ax.set_xlabel("replicas")
        ax.set_ylabel("ms (median)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_ylim(bottom=0)
    f.suptitle("Scale: ours with 1–8 replicas", fontsize=11)
    save(f, charts, "scale.png")
    L.append("![scale](bench/charts/scale.png)")
    L.append("")
    return L


# ---------------------------------------------------------------------------------------------
# diagnostic: fsync on the promote path


def sec_fsync(res, charts):
    runs = res["runs"]
    L = ["## Diagnostic: what fsync costs the promote", ""]
    L.append(
        "The planned switchover of benchmark 1 (three guests, writer running) on two fleets side by side, "
        "interleaved, %d rounds each: one as usual, one with `fsync()` turned into a no-op by Debian's "
        "`libeatmydata` preloaded into the agents (and so their Redis) and into `trove-guestctl`. The difference "
        "is what the agent's synchronous state and config writes (`write_private`: temp file, fsync, rename) and "
        "the CLI's inventory saves cost on this machine's disk. Run with `scripts/bench.sh --only fsync "
        "--results bench/results/fsync.json`; this is a diagnostic, not a deployment setting." % res["config"]["reps"])
    L.append("")
    a = [r for r in runs if r["variant"] == "fsync"]
    b = [r for r in runs if r["variant"] == "no-fsync"]

    def ph(rs, k):
        return [(r.get("phases") or {}).get(k) for r in rs]

    def agent(rs, method):
        return [((r.get("phases") or {}).get("agent_ms_by_method") or {}).get(method) for r in rs]
    rows = []
    for title, xa, xb in [
        ("fence → candidate writable and unfenced (ms, from agent logs)", ph(a, "fence_to_writable"), ph(b, "fence_to_writable")),
        ("`writes_blocked_ms` as trove-guestctl reports it", [r.get("writes_blocked_ms_reported") for r in a], [r.get("writes_blocked_ms_reported") for r in b]),
        ("`enable_as_master` handler time (ms)", agent(a, "enable_as_master"), agent(b, "enable_as_master")),
        ("longest write pause the writer saw (ms)", [r["longest_pause_ms"] for r in a], [r["longest_pause_ms"] for r in b]),
        ("command → all linked (ms)", [r["all_linked_ms"] for r in a], [r["all_linked_ms"] for r in b]),
        ("writable → all attaches returned (ms)", ph(a, "writable_to_repointed"), ph(b, "writable_to_repointed")),
        ("last attach → command exit (ms)", ph(a, "repointed_to_exit"), ph(b, "repointed_to_exit")),
        ("command returned (ms)", [r["command_done_ms"] for r in a], [r["command_done_ms"] for r in b]),
    ]:
        rows.append([title, fig(xa), fig(xb), ratio_txt(med(xb), med(xa))])
    L.append(table(["Figure", "fsync as usual: median (p95)", "fsync a no-op: median (p95)", "Ratio no-op/usual"], rows))
    L.append("")
    f, ax = plt.subplots(1, 1, figsize=(8, 4))
    groups = ["fence→writable", "write pause", "→ all linked", "command"]
    data = {}
    for g, k in zip(groups, ["fence", "pause", "linked", "done"]):
        for name, rs in (("fsync as usual", a), ("fsync no-op", b)):
            data[(g, name)] = {"fence": ph(rs, "fence_to_writable"), "pause": [r["longest_pause_ms"] for r in rs],
                               "linked": [r["all_linked_ms"] for r in rs], "done": [r["command_done_ms"] for r in rs]}[k]
    bars(ax, groups, ["fsync as usual", "fsync no-op"], data, "ms (median, p95)",
         colors={"fsync as usual": COLORS["ours"], "fsync no-op": "#17becf"})
    label_bars(ax)
    ax.legend(fontsize=8)
    f.suptitle("Diagnostic: promote-to-replica-source with and without fsync", fontsize=11)
    save(f, charts, "fsync.png")
    L.append("![fsync](bench/charts/fsync.png)")
    L.append("")
    return L


def sec_agentcost(res, charts):
    rows_in = res["rows"]
    c = res["config"]
    L = ["## Diagnostic: what the agent's CPU per call and memory are made of", ""]
    L.append("Three prepared agents side by side on the same broker, each with one knob changed, interleaved, "
             "%d rounds: RSS after %d s idle, then `rpc_ping` from the Rust client for %.1f s at %s callers; CPU = "
             "utime+stime of the agent process over the load. Run with `scripts/bench.sh --only agentcost "
             "--results bench/results/agentcost.json`." % (c["reps"], c["idle_s"], c["duration_s"],
                                                          " and ".join(map(str, c["callers"]))))
    L.append("")
    names = []
    for r in rows_in:
        if r["variant"] not in names:
            names.append(r["variant"])
    rows = []
    base = names[0]
    for n in names:
        idle = [r for r in rows_in if r["variant"] == n and r["what"] == "idle"]
        row = [n, fig([r["mem_kib"]["VmRSS"] / 1024 for r in idle], 1),
               fig([r["mem_kib"].get("RssAnon", 0) / 1024 for r in idle], 1)]
        for cl in c["callers"]:
            ld = [r for r in rows_in if r["variant"] == n and r["what"] == "load" and r["callers"] == cl]
            per = [r["cpu_pct"] * 1e4 / r["calls_per_s"] for r in ld if r["calls_per_s"]]
            bld = [r for r in rows_in if r["variant"] == base and r["what"] == "load" and r["callers"] == cl]
            bper = [r["cpu_pct"] * 1e4 / r["calls_per_s"] for r in bld if r["calls_per_s"]]
            row += [fig([r["calls_per_s"] for r in ld], 0), fig(per, 0), ratio_txt(med(per), med(bper))]
        rows.append(row)
    hdr = ["Agent", "RSS idle (MiB)", "anonymous (MiB)"]
    for cl in c["callers"]:
        hdr += ["calls/s @%d" % cl, "CPU µs/call @%d" % cl, "vs as shipped"]
    L.append(table(hdr, rows))
    L.append("")
    return L


# ---------------------------------------------------------------------------------------------
# 7. Trove's control plane


def sec_trove(res, charts):
    cr, pr, ej = res["create"], res["promote"], res["eject"]
    L = ["## 7. Trove's control plane beside trove-guestctl", ""]
    L.append(
        "Trove 26's own trove-api, trove-taskmanager and trove-conductor (the `trove` test stage's set-up: MariaDB, "
        "the broker container, the stand-ins for Nova and the rest, guest containers booted from Trove's injected "
        "files), driven by python-troveclient; heartbeat expiry %s s, `report_interval` %s s. %d round(s). Each "
        "round: a master; a replica with Trove's stock replica-source template (`repl-diskless-sync-delay 10`); a "
        "replica with delay 0; `promote` through Trove under the writer; two promotes through trove-guestctl on "
        "the same three guests; kill the master's container and eject through Trove once it accepts (its heartbeat "
        "expired); one more replica; kill the master and eject through trove-guestctl. Redis is watched directly "
        "(probe `SET`s, `ROLE`)." % (res.get("heartbeat_expiry_s"), res.get("report_interval_s"), res.get("reps", 1)))
    L.append("")
    rows = []
    m = [r for r in cr if r["what"] == "master"]
    rows.append(["create master → Redis answers", fig([r.get("redis_up_ms") for r in m])])
    rows.append(["create master → ACTIVE in `instance list`", fig([r["active_ms"] for r in m])])
    for d in sorted({r["delay"] for r in cr if r["what"] == "replica"}):
        rs = [r for r in cr if r["what"] == "replica" and r["delay"] == d]
        rows.append(["create replica, delay %s → Redis linked" % d, fig([r.get("redis_linked_ms") for r in rs])])
        rows.append(["create replica, delay %s → ACTIVE" % d, fig([r["active_ms"] for r in rs])])
    L.append(table(["Create (ms from the API call)", "median (p95)"], rows))
    L.append("")
    rows = []
    for via in ("trove", "guestctl"):
        rs = [r for r in pr if r["via"] == via]
        rows.append([via, len(rs), fig([r["writable_ms"] for r in rs]), fig([r["all_linked_ms"] for r in rs]),
                     fig([r["longest_pause_ms"] for r in rs]), fig([r.get("linked_from_pause_ms") for r in rs]),
                     "%d of %s" % (sum(r["lost"] or 0 for r in rs), num(sum(r["acked"] for r in rs), 0)),
                     sum(r["sync_full_delta"] or 0 for r in rs), fig([r.get("done_ms") for r in rs])])
    L.append(table(["Promote via", "rounds", "call → writable (ms)", "call → all linked (ms)", "longest write pause (ms)",
                    "pause start → all linked (ms)", "lost of acked", "full resyncs", "call → done (ms)"], rows))
    L.append("")
    L.append("*done*: for Trove, until `instance list` shows the new roles and every instance ACTIVE; for "
             "trove-guestctl, until the command exits.")
    L.append("")
    ph = [tm_phases(r.get("tm_calls")) for r in pr if r["via"] == "trove"]
    ph = [p for p in ph if p]
    if ph:
        L.append("Where Trove's promote spends it (trove-taskmanager.log, debug, ms since the request's first line; "
                 "medians): loading the instances before the first agent call %s; `make_read_only(True)` → "
                 "`make_read_only(False)` issued %s (writers blocked: six agent calls one after another, plus the "
                 "taskmanager's database saves between them); then re-pointing the replicas one by one and the "
                 "old master last, until the request ends, %s." % (
                     num(med([p["before_fence"] for p in ph])), num(med([p["fence_to_unfence"] for p in ph])),
                     num(med([p["after_unfence"] for p in ph]))))
        L.append("")
    rows = []
    t = [r for r in ej if r["via"] == "trove"]
    g = [r for r in ej if r["via"] == "guestctl"]
    rows.append(["trove (from the accepted call, i.e. the heartbeat's expiry)", fig([r["writable_ms"] for r in t]),
                 fig([r["all_linked_ms"] for r in t]), fig([r.get("done_ms") for r in t])])
    rows.append(["trove-guestctl (from the call, right after the kill)", fig([r["writable_ms"] for r in g]),
                 fig([r["all_linked_ms"] for r in g]), fig([r.get("done_ms") for r in g])])
    L.append(table(["Eject after a kill", "→ writable (ms)", "→ every survivor following (ms)", "→ done (ms)"], rows))
    L.append("")
    if t:
        L.append("Trove refused the eject while the heartbeat was fresh: accepted %s ms after the kill (median; "
                 "%s refusals), %s ms after the expiry recorded in `service_statuses.updated_at` + %s s (1 s "
                 "resolution)." % (num(med([r["kill_to_accepted_ms"] for r in t])), num(med([r["refused"] for r in t]), 0),
                                   num(med([r.get("accepted_after_expiry_ms") for r in t])), t[0].get("expiry_s")))
        L.append("")
    f, axes = plt.subplots(1, 3, figsize=(14, 4))
    groups = ["create master", "replica delay 10", "replica delay 0"]
    mr = lambda d: [r for r in cr if r["what"] == "replica" and str(r["delay"]).startswith(d)]  # noqa: E731
    data = {("create master", "Redis ready"): [r.get("redis_up_ms") for r in m],
            ("create master", "ACTIVE"): [r["active_ms"] for r in m],
            ("replica delay 10", "Redis ready"): [r.get("redis_linked_ms") for r in mr("10")],
            ("replica delay 10", "ACTIVE"): [r["active_ms"] for r in mr("10")],
            ("replica delay 0", "Redis ready"): [r.get("redis_linked_ms") for r in mr("0")],
            ("replica delay 0", "ACTIVE"): [r["active_ms"] for r in mr("0")]}
    bars(axes[0], groups, ["Redis ready", "ACTIVE"], data, "ms (median, p95)")
    axes[0].legend(fontsize=8)
    axes[0].set_title("create through Trove", fontsize=10)
    data = {}
    for via in ("trove", "guestctl"):
        rs = [r for r in pr if r["via"] == via]
        data[("writable", via)] = [r["writable_ms"] for r in rs]
        data[("all linked", via)] = [r["all_linked_ms"] for r in rs]
        data[("write pause", via)] = [r["longest_pause_ms"] for r in rs]
    bars(axes[1], ["writable", "all linked", "write pause"], ["trove", "guestctl"], data, "ms (log)", log=True,
         colors={"trove": "#8c564b", "guestctl": COLORS["ours"]})
    axes[1].legend(fontsize=8)
    axes[1].set_title("promote, from the call", fontsize=10)
    data = {("writable", "trove"): [r["writable_ms"] for r in t], ("all following", "trove"): [r["all_linked_ms"] for r in t],
            ("writable", "guestctl"): [r["writable_ms"] for r in g], ("all following", "guestctl"): [r["all_linked_ms"] for r in g]}
    bars(axes[2], ["writable", "all following"], ["trove", "guestctl"], data, "ms (median, p95)",
         colors={"trove": "#8c564b", "guestctl": COLORS["ours"]})
    axes[2].legend(fontsize=8)
    axes[2].set_title("eject (Trove: from its heartbeat expiry)", fontsize=10)
    for ax in axes:
        label_bars(ax)
    f.suptitle("Trove 26's control plane and trove-guestctl on the same guest containers", fontsize=11)
    save(f, charts, "trove.png")
    L.append("![trove](bench/charts/trove.png)")
    L.append("")
    return L


def tm_phases(calls):
    """Phases of a Trove promote from the taskmanager's "Executing ..." lines."""
    if not calls:
        return None
    at = {name: t for t, name in calls}
    f, u, d = at.get("Executing make_read_only(True)"), at.get("Executing make_read_only(False)"), at.get("done")
    if f is None or u is None or d is None:
        return None
    return {"before_fence": f, "fence_to_unfence": u - f, "after_unfence": d - u}


# ---------------------------------------------------------------------------------------------
# provenance: which agent each section measured


def reference_commit():
    from .common import agent_commit
    return agent_commit()


def section_agent(sec, meta):
    """(label, same-as-reference) for a section's run record."""
    run = (sec or {}).get("run")
    ref = meta.get("_reference") or {}
    if not run:
        old = (sec or {}).get("legacy_agent") or (meta.get("machine") or {}).get("agent", "?")
        return "⚠ %s (no run record)" % old, False
    a = run["agent"]
    ok = a.get("src_commit") == ref.get("src_commit") and not a.get("src_dirty") and "agent_after" not in run
    label = a.get("src_commit") or "?"
    if a.get("src_dirty"):
        label += "+uncommitted"
    return (label if ok else "⚠ " + label), ok


def provenance_table(results):
    meta = results["meta"]
    rows = []
    sections = [(name, results.get(name)) for name in SECTION_ORDER]
    sections += [("%s on %s" % (k, name), s[k]) for name, s in sorted(results.get("servers", {}).items()) for k in ("switchover", "create")]
    for name, sec in sections:
        if not sec:
            continue
        run = sec.get("run")
        label, _ = section_agent(sec, meta)
        if run:
            a, mach = run["agent"], run["machine"]
            rows.append([name, label, "%s%s" % (a.get("head"), " (dirty tree)" if a.get("dirty") else ""), run.get("started"),
                         "%s → %s" % (run.get("load_before"), run.get("load_after")),
                         "%s cores, %s, %s" % (mach.get("cores"), mach.get("cpu"), mach.get("kernel"))])
        else:
            mm = sec.get("legacy_machine") or meta.get("machine") or {}
            rows.append([name, label, "?", sec.get("legacy_started") or meta.get("started"),
                         sec.get("legacy_load") or "%s → %s" % (mm.get("load_at_start"), mm.get("load_at_end")),
                         "%s cores, %s, %s" % (mm.get("nproc"), mm.get("cpu"), mm.get("kernel"))])
    return table(["Section", "Agent (last src/ Cargo commit)", "HEAD", "Started", "Load average before → after",
                  "Machine"], rows)


SECTION_ORDER = ["switchover", "failover", "create", "rpc", "footprint", "scale", "trove", "fsync", "agentcost", "backup"]


# ---------------------------------------------------------------------------------------------
# the summary: every figure with its anchor beside it, from the same section


def summary_rows(results):
    meta = results["meta"]
    rows = []

    def row(sec, bench, what, ours, anchor_txt, ratio):
        label, _ = section_agent(results.get(sec), meta)
        rows.append([bench, what, ours, anchor_txt, ratio, label])
    sw = results.get("switchover")
    if sw:
        runs = sw["runs"]

        def s(m, k):
            rs = [r for r in runs if r["method"] == m]
            if k == "all_linked_ms" and m == "failover":
                k = "old_master_linked_ms"
            return [r.get(k) for r in rs]
        for k, what in (("writable_ms", "command → new master writable (ms)"),
                        ("all_linked_ms", "command → every node linked (ms)"),
                        ("longest_pause_ms", "longest write pause (ms)"), ("lost", "acknowledged writes lost, per round")):
            d = 0 if k == "lost" else None
            anchors = "; ".join("%s %s" % (n, num(med(s(m, k)), d)) for m, n in
                                (("floor", "floor"), ("failover", "FAILOVER"), ("sentinel", "Sentinel")) if s(m, k))
            row("switchover", "1 switchover", what, fig(s("ours", k), d), anchors,
                "vs floor " + ratio_txt(med(s("ours", k)), med(s("floor", k))) if k != "lost" else "")
    fo = results.get("failover")
    if fo:
        def f(m, k):
            return [r.get(k) for r in fo["runs"] if r["method"] == m]
        # No ratio: ours has no failure detection in it, Sentinel's figure does.
        for k, what in (("writable_ms", "kill → new master writable (ms)"), ("all_linked_ms", "kill → other replica following (ms)"),
                        ("acked_after_failover", "writes acknowledged after the failover, per round"),
                        ("lost", "acknowledged writes lost, per round (incl. after the failover)")):
            d = 0 if k in ("lost", "acked_after_failover") else None
            row("failover", "2 manual eject at the kill (no detection)", what, fig(f("ours", k), d),
                "Sentinel automatic failover, detection included (down-after 1 s) %s" % num(med(f("sentinel", k)), d),
                "none (not comparable)" if k in ("writable_ms", "all_linked_ms") else "")
    sb = results.get("sidebyside")
    if sb:
        def g(case, side, k, variant=None):
            return [r.get(k) for r in sb["runs"] if r["case"] == case and r["side"] == side
                    and (variant is None or r["variant"] == variant)]
        da = sb.get("down_after_ms", 1000)
        half = "sentinel-%d" % (da // 2)

        def ours_at(case, variant):
            """Our threshold in effect: down_after, halved in the rounds with strong evidence."""
            st = [x for x in g(case, "ours", "strong_evidence", variant) if x is not None]
            return "ours at down_after %d (%d ms with strong evidence: %s)" % (
                da, da // 2, "%d of %d rounds" % (sum(st), len(st)) if st else "not recorded")
        for variant in sorted({r["variant"] for r in sb["runs"] if r["case"] == "kill"}):
            o, a_ = g("kill", "ours", "client_writable_ms", variant), g("kill", "sentinel", "client_writable_ms", variant)
            h = g("kill", half, "client_writable_ms", variant)
            row("sidebyside", "2b watch vs Sentinel", "kill -9, %s: writable through redis-py Sentinel (ms); %s"
                % (variant, ours_at("kill", variant)), fig(o),
                "Sentinel down-after %d: %s; down-after %d: %s" % (da, num(med(a_)), da // 2, num(med(h)) if h else "not run"),
                "vs down-after %d %s; vs %d %s" % (da // 2, ratio_txt(med(o), med(h)) if h else "—", da,
                                                    ratio_txt(med(o), med(a_))))
            o, a_ = g("kill", "ours", "lost", variant), g("kill", "sentinel", "lost", variant)
            h = g("kill", half, "lost", variant)
            row("sidebyside", "2b watch vs Sentinel", "kill -9, %s: acknowledged writes lost" % variant, fig(o, 0),
                "Sentinel down-after %d: %s; down-after %d: %s" % (da, num(med(a_), 0), da // 2,
                                                                  num(med(h), 0) if h else "not run"), "")
        for variant in sorted({r["variant"] for r in sb["runs"] if r["case"] == "partition"}):
            o, a_ = g("partition", "ours", "client_writable_ms", variant), g("partition", "sentinel", "client_writable_ms", variant)
            row("sidebyside", "2b watch vs Sentinel", "partition of the master, %s: writable through redis-py Sentinel (ms); %s"
                % (variant, ours_at("partition", variant)), fig(o), "Sentinel down-after %d: %s" % (da, num(med(a_))),
                ratio_txt(med(o), med(a_)))
            o, a_ = g("partition", "ours", "noticed_ms", variant), g("partition", "sentinel", "noticed_ms", variant)
            row("sidebyside", "2b watch vs Sentinel", "partition, %s: cut → noticed, `+odown` (ms; ours: the acting watcher's, "
                "down_after %d)" % (variant, da), fig(o), "Sentinel down-after %d, first sentinel's `+odown`: %s" % (da, num(med(a_))),
                ratio_txt(med(o), med(a_)))
            o, a_ = g("partition", "ours", "switch_master_ms", variant), g("partition", "sentinel", "switch_master_ms", variant)
            fw = [x for x in g("partition", "ours", "fence_wait_ms", variant) if x]
            row("sidebyside", "2b watch vs Sentinel", "partition, %s: cut → failover announced, `+switch-master` (ms)%s" % (
                variant, "; ours held the eject back for the cut-off master's write fence by design (%d of %d rounds)" % (
                    len(fw), len(o)) if fw else ""),
                fig(o), "Sentinel down-after %d: %s" % (da, num(med(a_))), ratio_txt(med(o), med(a_)))
            o, a_ = g("partition", "ours", "inside_acked_after_cut_ms", variant), g("partition", "sentinel", "inside_acked_after_cut_ms", variant)
            row("sidebyside", "2b watch vs Sentinel", "partition, %s: cut-off master still acknowledging after the cut (ms)"
                % variant, fig(o), "Sentinel %s" % num(med(a_)), "")
        for k, what, d in (("lost", "switchover through the client: writes lost", 0),
                           ("longest_pause_ms", "switchover: longest pause seen by the client (ms)", None)):
            o, a_ = g("switchover", "ours", k), g("switchover", "sentinel", k)
            if o and a_:
                row("sidebyside", "2b watch vs Sentinel", what, fig(o, d), "SENTINEL FAILOVER %s" % num(med(a_), d),
                    ratio_txt(med(o), med(a_)) if d is None else "")
    cr = results.get("create")
    if cr:
        runs = cr["runs"]
        for mb, _ in cr["config"]["sizes"]:
            for n in cr["config"]["counts"]:
                o = med(vals(runs, "total_ms", method="ours", n=n, diskless=True, mb=mb))
                h = med(vals(runs, "total_ms", method="hand", n=n, diskless=True, mb=mb))
                row("create", "3 create", "%s MB, %d replica(s), diskless (ms)" % (mb, n), num(o), "hand-made REPLICAOF %s" % num(h),
                    ratio_txt(o, h))
    rp = results.get("rpc")
    if rp and rp.get("matrix") and "rpc" in meta.get("only", ["rpc"]):
        mx = rp["matrix"]
        for client in rp["config"]["clients"]:
            def q(srv, c, k):
                return med([r[k] for r in mx if r["client"] == client and r["callers"] == c and r["server"] == srv])
            c1 = min(rp["config"]["callers"])
            cn = max(rp["config"]["callers"])
            row("rpc", "4 RPC", "rpc_ping p50, %d caller(s), %s client (ms)" % (c1, client), num(q("ours", c1, "p50_ms")),
                "Python server %s" % num(q("python", c1, "p50_ms")), ratio_txt(q("ours", c1, "p50_ms"), q("python", c1, "p50_ms")))
            row("rpc", "4 RPC", "calls/s, %d callers, %s client" % (cn, client), num(q("ours", cn, "calls_per_s"), 0),
                "Python server %s" % num(q("python", cn, "calls_per_s"), 0),
                ratio_txt(q("ours", cn, "calls_per_s"), q("python", cn, "calls_per_s")))
    fp = results.get("footprint")
    if fp:
        a, b = fp["idle"]["ours"]["mem_kib"]["VmRSS"] / 1024, fp["idle"]["python"]["mem_kib"]["VmRSS"] / 1024
        row("footprint", "5 footprint", "RSS idle (MiB)", num(a, 1), "Python server %s" % num(b, 1), ratio_txt(a, b))
        a = med([r["ms"] for r in fp["startup"] if r["kind"] == "ours"])
        b = med([r["ms"] for r in fp["startup"] if r["kind"] == "python" and not r.get("import_trove")])
        row("footprint", "5 footprint", "start-up until the first call is answered (ms)", num(a), "Python server %s" % num(b), ratio_txt(a, b))
    sc = results.get("scale")
    if sc:
        ks = sc["config"]["counts"]
        lo, hi = min(ks), max(ks)
        for k, what in (("longest_pause_ms", "write pause"), ("all_linked_ms", "all linked")):
            a = med([r[k] for r in sc["promote"] if r["replicas"] == hi])
            b = med([r[k] for r in sc["promote"] if r["replicas"] == lo])
            row("scale", "6 scale", "promote %s with %d replicas (ms)" % (what, hi), num(a), "ours with %d: %s" % (lo, num(b)), ratio_txt(a, b))
    tr = results.get("trove")
    if tr:
        pr = tr["promote"]
        for k, what in (("writable_ms", "call → writable"), ("all_linked_ms", "call → all linked"),
                        ("longest_pause_ms", "longest write pause"), ("done_ms", "call → done")):
            a = med([r.get(k) for r in pr if r["via"] == "trove"])
            b = med([r.get(k) for r in pr if r["via"] == "guestctl"])
            row("trove", "7 Trove", "promote through Trove: %s (ms)" % what, num(a), "trove-guestctl %s" % num(b), ratio_txt(a, b))
        ej = tr["eject"]
        a = med([r["all_linked_ms"] for r in ej if r["via"] == "trove"])
        b = med([r["all_linked_ms"] for r in ej if r["via"] == "guestctl"])
        row("trove", "7 Trove", "eject through Trove, heartbeat expiry → survivors following (ms)", num(a),
            "trove-guestctl, from the call: %s" % num(b), ratio_txt(a, b))
        a = med([r["kill_to_accepted_ms"] for r in ej if r["via"] == "trove"])
        row("trove", "7 Trove", "eject through Trove: kill → eject accepted (ms)", num(a),
            "agent_heartbeat_expiry %s s" % tr.get("heartbeat_expiry_s"), "")
        for d in sorted({r["delay"] for r in tr["create"] if r["what"] == "replica"}):
            rs = [r for r in tr["create"] if r["what"] == "replica" and r["delay"] == d]
            a, b = med([r["active_ms"] for r in rs]), med([r.get("redis_linked_ms") for r in rs])
            row("trove", "7 Trove", "create a replica, delay %s: call → ACTIVE (ms)" % d, num(a),
                "its Redis linked %s" % num(b), ratio_txt(a, b))
        m = [r for r in tr["create"] if r["what"] == "master"]
        a, b = med([r["active_ms"] for r in m]), med([r.get("redis_up_ms") for r in m])
        row("trove", "7 Trove", "create a master: call → ACTIVE (ms)", num(a), "its Redis answering %s" % num(b), ratio_txt(a, b))
    from . import servers
    rows += servers.summary_rows(results)
    return rows


def targets(results):
    """The issue's targets, each from one section of this run: [target, goal, measured, verdict, evidence]."""
    out = []
    tr = results.get("trove")
    if tr:
        rs = [r for r in tr["promote"] if r["via"] == "trove"]
        p, lk = med([r["longest_pause_ms"] for r in rs]), med([r.get("linked_from_pause_ms") for r in rs])
        ok = None if p is None or lk is None else (p <= 25 and lk <= 100)
        out.append(["promote in Trove's order (through Trove), writer running", "pause ≤ 25 ms and every node linked ≤ 100 ms "
                    "from the fence", "pause %s ms, linked %s ms after the pause began (%d rounds; from the call: %s ms)" % (
                        num(p), num(lk), len(rs), num(med([r["all_linked_ms"] for r in rs]))), met(ok),
                    "Trove's taskmanager makes the six fencing calls one after another from Python, with database saves "
                    "between them, then re-points each replica and the old master in turn (findings; its log phases "
                    "in section 7)"])
        g = [r for r in tr["eject"] if r["via"] == "guestctl"]
        a = med([r["all_linked_ms"] for r in g])
        out.append(["eject through trove-guestctl", "≤ 100 ms from the call to a writable master, every survivor following",
                    "%s ms (writable %s ms; %d rounds)" % (num(a), num(med([r["writable_ms"] for r in g])), len(g)),
                    met(None if a is None else a <= 100), "section 7: trove-guestctl on Trove's guests, killed by `docker kill`; the command's start-up and AMQP "
                    "connection, then its probe of every guest, which gives the silent master ten times what its replicas "
                    "took to answer, 25–100 ms (`silent_master_grace`); the eject flow itself is the rest"])
    elif results.get("failover"):
        o = [r for r in results["failover"]["runs"] if r["method"] == "ours"]
        a = med([r["all_linked_ms"] for r in o])
        out.append(["eject through trove-guestctl", "≤ 100 ms from the call, every survivor following",
                    "%s ms from the kill (the call follows it at once)" % num(a), met(None if a is None else a <= 100),
                    "section 2 (the eject issued at the kill, no failure detection)"])
    cr = results.get("create")
    if cr:
        two = []
        for mb, _ in cr["config"]["sizes"]:
            for d in cr["config"]["diskless"]:
                o1 = med(vals(cr["runs"], "total_ms", method="ours", n=1, diskless=d, mb=mb))
                o2 = med(vals(cr["runs"], "total_ms", method="ours", n=2, diskless=d, mb=mb))
                h1 = med(vals(cr["runs"], "total_ms", method="hand", n=1, diskless=d, mb=mb))
                h2 = med(vals(cr["runs"], "total_ms", method="hand", n=2, diskless=d, mb=mb))
                if o1 and o2:
                    two.append(("%s MB diskless %s" % (mb, "on" if d else "off"), o2 / o1, (h2 / h1) if h1 and h2 else None))
        out.append(["create: two replicas vs one", "≤ 1.35×", ", ".join("%s %.2f× (hand-made %s)" % (n, r, ratio_txt(h, 1))
                                                                       for n, r, h in two),
                    met(bool(two) and all(r <= 1.35 for _, r, _ in two)),
                    "section 3; the hand-made ratio is Redis's own: with a diskless delay > 0, Redis starts a "
                    "multi-replica transfer only at its once-a-second replicationCron (findings)"])
    sw = results.get("switchover")
    if sw:
        o = [r for r in sw["runs"] if r["method"] == "ours"]
        lost = sum(r["lost"] or 0 for r in o)
        out.append(["switchover through trove-guestctl", "0 acknowledged writes lost, 0 full resyncs",
                    "%d lost of %s, %d full resyncs, %d rounds" % (lost, num(sum(r["acked"] for r in o), 0),
                                                                  sum(r["sync_full_delta"] or 0 for r in o), len(o)),
                    met(lost == 0 and all(r["lost"] is not None for r in o) and not sum(r["sync_full_delta"] or 0 for r in o)),
                    "section 1"])
        p = med([r["longest_pause_ms"] for r in o])
        out.append(["switchover through trove-guestctl", "pause ≤ 25 ms", "%s ms (p95 %s)" % (num(p), num(p95([r["longest_pause_ms"] for r in o]))),
                    met(None if p is None else p <= 25), "section 1"])
        fl = med([r["longest_pause_ms"] for r in sw["runs"] if r["method"] == "floor"])
        if p is not None and fl:
            out.append(["switchover through trove-guestctl", "pause ≤ 1.3× the hand-made floor",
                        "%s ms against the floor's %s ms: %s" % (num(p), num(fl), ratio_txt(p, fl)), met(p <= 1.3 * fl),
                        "section 1; the floor makes the same Redis calls over connections opened beforehand, ours "
                        "makes three agent round trips through RabbitMQ inside the pause (fence and accept, "
                        "`enable_as_master`, the old master's `attach_replica`) and the agents' fsyncs (findings)"])
    sb = results.get("sidebyside")
    if sb and any(r["case"] == "partition" for r in sb["runs"]):
        da = sb.get("down_after_ms", 1000)
        o = [r.get("noticed_ms") for r in sb["runs"] if r["case"] == "partition" and r["side"] == "ours"]
        a_ = [r.get("noticed_ms") for r in sb["runs"] if r["case"] == "partition" and r["side"] == "sentinel"]
        worst = None if not o or None in o else max(o)
        out.append(["partition of the master noticed by the watcher (`+odown`)", "≤ down_after + 0.5 s (%d ms at "
                    "down_after %d), every round" % (da + 500, da),
                    "slowest %s ms, median %s ms (%d rounds); Sentinel at down-after %d: median %s ms" % (
                        num(worst), num(med(o)), len(o), da, num(med(a_))),
                    met(None if worst is None else worst <= da + 500),
                    "section 2b (cut → the acting watcher's `+odown`, stamped on arrival by a subscriber)"])
    if sb and any(r["case"] == "switchover" for r in sb["runs"]):
        o = [r for r in sb["runs"] if r["case"] == "switchover" and r["side"] == "ours"]
        a_ = [r for r in sb["runs"] if r["case"] == "switchover" and r["side"] == "sentinel"]
        p, lost = med([r["longest_pause_ms"] for r in o]), sum(r["lost"] or 0 for r in o)
        out.append(["switchover through redis-py's Sentinel client (trove-guestctl watch serving discovery)",
                    "pause ≤ 20 ms, 0 acknowledged writes lost",
                    "%s ms (p95 %s), %d lost, %d rounds; `SENTINEL FAILOVER` %s ms, %s lost per round" % (
                        num(p), num(p95([r["longest_pause_ms"] for r in o])), lost, len(o),
                        num(med([r["longest_pause_ms"] for r in a_])), num(med([r["lost"] for r in a_ if r["lost"] is not None]), 0)),
                    met(None if p is None else (p <= 20 and lost == 0 and all(r["lost"] is not None for r in o))),
                    "section 2b; the client's pause is our fenced switchover (section 1) plus its reconnect and "
                    "rediscovery; `SENTINEL FAILOVER` does not fence, so its clients keep writing to the old master "
                    "(findings)"])
    for row_ in summary(results):
        out.append(row_)
    from . import servers
    out += servers.target_rows(results)
    # the agent each verdict is about (⚠: not HEAD's)
    for row_ in out:
        sec = next((n for n, k in (("trove", "section 7"), ("switchover", "section 1"), ("sidebyside", "section 2b"),
                                   ("failover", "section 2"),
                                   ("create", "section 3"), ("rpc", "section 4"), ("footprint", "section 5"))
                    if k in row_[4]), None)
        if sec and sec in results:
            row_[4] += "; agent %s" % section_agent(results[sec], results["meta"])[0]
    return out


def summary(results):
    """The RPC and footprint targets, as [target, goal, measured, verdict, evidence] rows."""
    rows = []
    rp = results.get("rpc")
    if rp and rp.get("matrix"):
        m = rp["matrix"]
        for client in rp["config"]["clients"]:
            p50 = med([r["p50_ms"] for r in m if r["client"] == client and r["callers"] == 1 and r["server"] == "ours"])
            if p50 is not None:
                rows.append(["RPC: rpc_ping p50, 1 caller (%s client)" % client, "≤ 1 ms", "%s ms" % num(p50, 3 if p50 < 10 else None),
                             met(p50 <= 1.0), "section 4"])
            cps = med([r["calls_per_s"] for r in m if r["client"] == client and r["callers"] == 16 and r["server"] == "ours"])
            if cps is not None:
                rows.append(["RPC: calls/s at 16 callers (%s client)" % client, "≥ 2000", num(cps, 0), met(cps >= 2000), "section 4"])
    fp = results.get("footprint")
    if fp:
        rss = fp["idle"]["ours"]["mem_kib"]["VmRSS"] / 1024
        rows.append(["footprint: agent RSS, idle", "≤ 10 MiB", "%s MiB" % num(rss, 1), met(rss <= 10), "section 5"])
        st = med([r["ms"] for r in fp["startup"] if r["kind"] == "ours"])
        rows.append(["footprint: start-up until the first call is answered", "≤ 100 ms", "%s ms" % num(st),
                     met(st is not None and st <= 100), "section 5"])
    return rows


# ---------------------------------------------------------------------------------------------

CAPTIONS = {
    "switchover": "planned switchover under a writer: ours against the floor, `FAILOVER TO` and `SENTINEL FAILOVER`",
    "failover": "after `kill -9`: a manual `eject-replica-source` at the kill (no failure detection) beside Sentinel's automatic failover",
    "create": "replica creation: ours against hand-made `REPLICAOF`",
    "rpc": "RPC latency and throughput: the agent against a Python oslo.messaging server",
    "footprint": "memory and start-up: the agent against the Python server",
    "scale": "promote and create with 1–8 replicas",
    "trove": "Trove's own control plane against trove-guestctl on the same guest containers",
    "fsync": "diagnostic: the promote with and without fsync",
}


def sidebyside_section(res):
    from .sidebyside import report_section
    return report_section(res)


def backup_section(res):
    from .backup import report_section
    return report_section(res)


def write(results, md_path, charts, tables_path=None):
    meta = results["meta"]
    meta["_reference"] = reference_commit()
    md_dir = os.path.dirname(os.path.abspath(md_path))
    tables_path = tables_path or os.path.join(md_dir, "bench", "results", "tables.md")
    t_dir = os.path.dirname(os.path.abspath(tables_path))

    def link(d, name):
        return os.path.relpath(os.path.join(os.path.abspath(charts), name), d)
    # the detailed tables (and the charts) of every section
    detail = []
    builders = [("switchover", lambda: sec_switchover(results["switchover"], charts)),
                ("failover", lambda: sec_failover(results["failover"], charts)),
                ("create", lambda: sec_create(results["create"], charts)),
                ("rpc", lambda: sec_rpc(results["rpc"], charts)),
                ("footprint", lambda: sec_footprint(results["footprint"], results.get("rpc", {}), charts)),
                ("scale", lambda: sec_scale(results["scale"], results.get("create"), charts)),
                ("sidebyside", lambda: sidebyside_section(results["sidebyside"])),
                ("trove", lambda: sec_trove(results["trove"], charts)),
                ("fsync", lambda: sec_fsync(results["fsync"], charts)),
                ("agentcost", lambda: sec_agentcost(results["agentcost"], charts)),
                ("backup", lambda: backup_section(results["backup"]))]
    shown = []
    for name, fn in builders:
        if name not in results:
            continue
        if name == "rpc" and not (results["rpc"].get("matrix") and "rpc" in meta.get("only", ["rpc"])):
            continue
        lines = fn()
        label, _ = section_agent(results[name], meta)
        lines[1:1] = ["", "Agent: %s." % label]
        detail += [ln.replace("](bench/charts/", "](%s/" % os.path.dirname(link(t_dir, "x.png"))) for ln in lines]
        shown.append(name)
    if results.get("servers"):
        from . import servers
        detail += servers.section(results) + [""]
    ref = meta["_reference"]
    L = ["# Benchmarks", ""]
    L.append("Generated by `scripts/bench.sh` (%s run; last update %s → %s). Each figure is a median over repeated "
             "rounds (p95 in the detailed tables); each anchor beside it was measured in the same section of the same "
             "run, interleaved, on this machine (2 shared cores, other workloads beside it: see the load averages). "
             "Detailed tables: [`%s`](%s); raw figures: `%s`; how the suite works: `bench/README.md`." % (
                 meta["mode"], meta.get("started"), meta.get("finished"), os.path.basename(tables_path),
                 os.path.relpath(tables_path, md_dir), "bench/results/full.json" if meta["mode"] == "full" else "results.json"))
    L.append("")
    mixed = [n for n in shown if not section_agent(results[n], meta)[1]]
    L.append("**Agent.** HEAD's last change to `src/`, `Cargo.toml` or `Cargo.lock` is `%s`%s. %s" % (
        ref.get("src_commit"), " (with uncommitted changes)" if ref.get("src_dirty") else "",
        "Every section measured it." if not mixed else
        "⚠ Sections measured from another agent (marked ⚠ in the tables below, not comparable with the rest): %s." % ", ".join(mixed)))
    L.append("")
    L.append("## Summary")
    L.append("")
    L.append(table(["Benchmark", "Figure", "Ours", "Anchor (same section)", "Ratio", "Agent"], summary_rows(results)))
    L.append("")
    L.append("## Charts")
    L.append("")
    for name in shown:
        png = os.path.join(charts, name + ".png")
        if os.path.exists(png):
            L.append("**%s** — %s." % (name, CAPTIONS.get(name, name)))
            L.append("")
            L.append("![%s](%s)" % (name, link(md_dir, name + ".png")))
            L.append("")
    findings = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "FINDINGS.md")
    if meta["mode"] == "full" and os.path.exists(findings):
        with open(findings) as f:
            L += [f.read().rstrip(), ""]
    L.append("## Targets")
    L.append("")
    L.append(table(["Target", "Goal", "Measured", "Verdict", "Evidence"], targets(results)))
    L.append("")
    L.append("## Provenance")
    L.append("")
    L.append(provenance_table(results))
    L.append("")
    del meta["_reference"]
    os.makedirs(md_dir, exist_ok=True)
    with open(md_path, "w") as f:
        f.write("\n".join(L).rstrip() + "\n")
    os.makedirs(t_dir, exist_ok=True)
    with open(tables_path, "w") as f:
        f.write("\n".join(["# Benchmark tables", "", "The detailed tables behind [BENCHMARKS.md](%s), section by section." %
                           os.path.relpath(md_path, t_dir), ""] + detail).rstrip() + "\n")


__all__ = ["write", "statistics"]
