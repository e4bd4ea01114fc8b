"""The server matrix: switchover and create on other Redis and Valkey servers, beside the main run's.

`scripts/bench.sh` runs, after the main suite, `python -m trovebench --server-matrix NAME` once per
server of $BENCH_MATRIX_SERVERS (the server's binary in BENCH_SERVER_BIN); each run stores its two
sections under results["servers"][NAME], with their own run records. The report shows them beside
the main run's server (Debian's redis-server unless BENCH_SERVER says otherwise)."""

from .report import fig, med, met, num, ratio_txt, section_agent, table, vals

# Smaller than the main run's: switchover as in section 1, create at 100 MB only.
FULL = {"switchover": {"reps": 4, "timeout_s": 40},
        "create": {"sizes": [[100, 3]], "counts": [1, 2], "diskless": [True, False]}}
SMOKE = {"switchover": {"reps": 1, "timeout_s": 2},
         "create": {"sizes": [[2, 1]], "counts": [1, 2], "diskless": [True]}}


def store(results, name, run):
    """Puts one server's run (switchover, create, its meta) into results["servers"][name]."""
    results.setdefault("servers", {})[name] = {
        "server": run["meta"]["machine"].get("redis"), "started": run["meta"]["started"],
        "switchover": run["switchover"], "create": run["create"]}


def _others(results):
    """(name, server string, switchover section, create section) of each matrix server."""
    return [(name, s["server"], s["switchover"], s["create"]) for name, s in sorted(results.get("servers", {}).items())]


def _columns(results):
    """The main run's server first (when it ran both sections), then the matrix servers."""
    main = results["meta"].get("machine", {}).get("redis", "main run")
    first = [("main run", main, results["switchover"], results["create"])] if results.get("switchover") and results.get("create") else []
    return first + _others(results)


def _switch(sw, method, key):
    return [r.get(key) for r in sw["runs"] if r["method"] == method]


def _create(cr, method, n, diskless, mb):
    return med(vals(cr["runs"], "total_ms", method=method, n=n, diskless=diskless, mb=mb))


def summary_rows(results):
    """[bench, figure, ours, anchor, ratio, agent] rows for the summary table, one block per other server."""
    rows = []
    meta = results["meta"]
    for name, server, sw, cr in _others(results):
        label = section_agent(sw, meta)[0]
        for k, what, d in (("longest_pause_ms", "promote: longest write pause (ms)", None),
                           ("all_linked_ms", "promote: command → every node linked (ms)", None),
                           ("lost", "promote: acknowledged writes lost, per round", 0)):
            anchors = "; ".join("%s %s" % (n, num(med(_switch(sw, m, k)), d)) for m, n in
                                (("floor", "floor"), ("failover", "FAILOVER")) if _switch(sw, m, k))
            rows.append(["8 servers", "%s, %s" % (server, what), fig(_switch(sw, "ours", k), d), anchors,
                         "vs floor " + ratio_txt(med(_switch(sw, "ours", k)), med(_switch(sw, "floor", k))) if d is None else "", label])
        mb = cr["config"]["sizes"][0][0]
        for n in cr["config"]["counts"]:
            o, h = _create(cr, "ours", n, True, mb), _create(cr, "hand", n, True, mb)
            rows.append(["8 servers", "%s, create %s MB, %d replica(s), diskless (ms)" % (server, mb, n), num(o),
                         "hand-made REPLICAOF %s" % num(h), ratio_txt(o, h), section_agent(cr, meta)[0]])
    return rows


def target_rows(results):
    """The create target (two replicas vs one ≤ 1.35×) on each other server."""
    out = []
    for name, server, sw, cr in _others(results):
        mb = cr["config"]["sizes"][0][0]
        two = []
        for d in cr["config"]["diskless"]:
            o1, o2 = _create(cr, "ours", 1, d, mb), _create(cr, "ours", 2, d, mb)
            h1, h2 = _create(cr, "hand", 1, d, mb), _create(cr, "hand", 2, d, mb)
            if o1 and o2:
                two.append(("diskless %s" % ("on" if d else "off"), o2 / o1, h2 / h1 if h1 and h2 else None))
        out.append(["create on %s: two replicas vs one (%s MB)" % (server, mb), "≤ 1.35×",
                    ", ".join("%s %.2f× (hand-made %s)" % (n, r, ratio_txt(h, 1)) for n, r, h in two),
                    met(bool(two) and all(r <= 1.35 for _, r, _ in two)),
                    "section 8; agent %s" % section_agent(cr, results["meta"])[0]])
    return out


def section(results):
    """The detailed table: every server side by side, ours and its anchors."""
    cols = _columns(results)
    meta = results["meta"]
    L = ["## 8. Server matrix: switchover and create on other servers", "",
         "The same switchover (section 1: ours against the floor, `FAILOVER TO` and `SENTINEL FAILOVER`, %s rounds) and create (section 3, "
         "%s MB) on each server, every node of a run on that server (`BENCH_SERVER`). Each column is one run; its agent "
         "is in the last row." % (cols[-1][2]["config"].get("reps") if cols else "?",
                                  cols[-1][3]["config"]["sizes"][0][0] if cols else "?"), ""]
    rows = []
    for k, what, d in (("writable_ms", "promote: command → new master writable (ms)", None),
                       ("all_linked_ms", "promote: command → every node linked (ms)", None),
                       ("longest_pause_ms", "promote: longest write pause (ms)", None),
                       ("lost", "promote: acknowledged writes lost, per round", 0),
                       ("sync_full_delta", "promote: full resyncs, per round", 0)):
        for m, n in (("ours", "ours"), ("floor", "floor"), ("failover", "`FAILOVER TO`"), ("sentinel", "`SENTINEL FAILOVER`")):
            rows.append(["%s, %s" % (what, n)] + [fig(_switch(sw, m, k), d) for _, _, sw, _ in cols])
    sizes = {c[3]["config"]["sizes"][0][0] for c in cols}
    mb = min(sizes) if sizes else 100
    for d in (True, False):
        for n in (1, 2):
            for m, label in (("ours", "ours"), ("hand", "hand-made REPLICAOF")):
                rows.append(["create %s MB, %d replica(s), diskless %s, %s (ms)" % (mb, n, "on" if d else "off", label)]
                            + [num(_create(cr, m, n, d, mb)) for _, _, _, cr in cols])
        rows.append(["create %s MB, diskless %s: two replicas vs one, ours" % (mb, "on" if d else "off")]
                    + [ratio_txt(_create(cr, "ours", 2, d, mb), _create(cr, "ours", 1, d, mb)) for _, _, _, cr in cols])
    rows.append(["agent"] + [section_agent(sw, meta)[0] for _, _, sw, _ in cols])
    L.append(table(["Figure"] + ["%s (%s)" % (server, name) for name, server, _, _ in cols], rows))
    return L
