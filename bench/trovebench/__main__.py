"""python -m trovebench [--smoke] [--only a,b] [--results FILE] [--report-only] ...

Runs the benchmarks (see suite.py), saves every raw figure as JSON, then writes the Markdown
report and one PNG chart per benchmark (report.py). Exit status 1 on any error."""

import argparse
import json
import os
import sys
import time
import traceback

from . import report, suite
from .common import ROOT, Ctx, log, machine_description


def main():
    ap = argparse.ArgumentParser(prog="trovebench")
    ap.add_argument("--smoke", action="store_true", help="tiny configuration, one repetition")
    ap.add_argument("--only", default=None,
                    help="comma-separated: " + ",".join(suite.ALL) + " (diagnostics, only on request: " + ",".join(suite.EXTRA)
                    + "); updates just those sections of --results, keeping the others (default: all; --smoke: all but trove)")
    ap.add_argument("--merge", action="append", default=[],
                    help="with --report-only: also take the benchmarks of this results JSON (e.g. a diagnostic run)")
    ap.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", "rabbit://guest:guest@127.0.0.1:5672/"))
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--load-bin", default=None)
    ap.add_argument("--results", default=None, help="raw results JSON (written, or read with --report-only)")
    ap.add_argument("--markdown", default=None, help="report path (default BENCHMARKS.md, or a temp dir for --smoke)")
    ap.add_argument("--charts", default=None, help="chart directory (default bench/charts)")
    ap.add_argument("--report-only", action="store_true", help="only regenerate the report from --results")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    ap.add_argument("--server-matrix", metavar="NAME", default=None,
                    help="run switchover and create (servers.py's configuration) on the server in BENCH_SERVER_BIN and "
                    "store them as results[\"servers\"][NAME] of the existing --results file")
    a = ap.parse_args()
    sys.setswitchinterval(0.0005)  # the monitor thread must not wait 5 ms for the GIL
    import signal

    def on_term(signum, frame):
        raise SystemExit(128 + signum)  # unwinds through ctx.close(): every process we started stops
    signal.signal(signal.SIGTERM, on_term)

    results_path = a.results or os.path.join(ROOT, "bench", "results", "smoke.json" if a.smoke else "full.json")
    md = a.markdown or os.path.join(ROOT, "BENCHMARKS.md")
    charts = a.charts or os.path.join(ROOT, "bench", "charts")
    if a.report_only:
        with open(results_path) as f:
            results = json.load(f)
        for extra in a.merge:
            with open(extra) as f:
                more = json.load(f)
            results.setdefault("meta", {}).setdefault("merged", []).append(
                {"file": os.path.relpath(extra, ROOT), "started": more["meta"]["started"], "only": more["meta"]["only"],
                 "agent": more["meta"].get("machine", {}).get("agent"),
                 "load": "%s → %s" % (more["meta"].get("machine", {}).get("load_at_start"),
                                      more["meta"].get("machine", {}).get("load_at_end"))})
            for k, v in more.items():
                if k != "meta" and isinstance(v, dict) and "run" not in v:  # a run from before run records
                    mm = more["meta"].get("machine", {})
                    v.update(legacy_agent=mm.get("agent"), legacy_started=more["meta"].get("started"), legacy_machine=mm,
                             legacy_load="%s → %s" % (mm.get("load_at_start"), mm.get("load_at_end")))
            results.update({k: v for k, v in more.items() if k != "meta"})
        report.write(results, md, charts)
        log("wrote", md, "and charts in", charts)
        return 0

    if a.server_matrix:
        return server_matrix(a, results_path, md, charts)
    only = [x for x in (a.only or ",".join(suite.SMOKE_DEFAULT if a.smoke else suite.ALL)).split(",") if x]
    unknown = set(only) - set(suite.ALL) - set(suite.EXTRA)
    if unknown:
        ap.error("unknown benchmark(s): %s" % ", ".join(sorted(unknown)))
    cfg = suite.SMOKE if a.smoke else suite.FULL
    results = {"meta": {"mode": "smoke" if a.smoke else "full", "machine": machine_description(),
                        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "only": only,
                        "config": {k: cfg[k] for k in cfg}}}
    ctx = Ctx(a.amqp_url, a.bin_dir, load_bin=a.load_bin, smoke=a.smoke, keep=a.keep)
    t0 = time.monotonic()
    ok = False
    try:
        suite.run(ctx, cfg, only, results)
        ok = True
    except BaseException:  # noqa: BLE001 - also Ctrl-C and SIGTERM: report, then clean up
        traceback.print_exc()
        log("FAILED; agent and Redis logs are in", ctx.tmp, "(kept)")
        ctx.keep = True
    finally:
        ctx.close()
    results["meta"]["total_seconds"] = round(time.monotonic() - t0, 1)
    results["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    with open("/proc/loadavg") as f:
        results["meta"]["machine"]["load_at_end"] = " ".join(f.read().split()[:3])
    os.makedirs(os.path.dirname(results_path), exist_ok=True)
    if not ok:
        failed = results_path + ".failed"
        with open(failed, "w") as f:
            json.dump(results, f, indent=1, default=str)
        log("partial figures in", failed, "(the results file is left as it was)")
        return 1
    if a.only and os.path.exists(results_path):
        # --only: replace just these sections; every other section keeps its own run record.
        with open(results_path) as f:
            old = json.load(f)
        if old.get("meta", {}).get("mode") == results["meta"]["mode"]:
            meta = results["meta"]
            meta["only"] = sorted(set(old["meta"].get("only", [])) | set(only), key=(suite.ALL + suite.EXTRA).index)
            meta["updates"] = old["meta"].get("updates", []) + [{"started": meta["started"], "only": only}]
            om = old["meta"].get("machine", {})
            for k, v in old.items():  # sections from before run records keep their run's description
                # "servers" holds one run record per server, not a section of its own.
                if k not in ("meta", "servers") and isinstance(v, dict) and "run" not in v and "legacy_agent" not in v:
                    v.update(legacy_agent=om.get("agent"), legacy_started=old["meta"].get("started"), legacy_machine=om,
                             legacy_load="%s → %s" % (om.get("load_at_start"), om.get("load_at_end")))
            old.update({k: v for k, v in results.items() if k != "meta"})
            old["meta"] = meta
            results = old
    with open(results_path, "w") as f:
        json.dump(results, f, indent=1, default=str)
    report.write(results, md, charts)
    log("wrote %s, charts in %s, raw figures in %s (%.0fs)" % (md, charts, results_path, results["meta"]["total_seconds"]))
    return 0


def server_matrix(a, results_path, md, charts):
    """One server of the matrix: its switchover and create sections into the existing results file."""
    from . import servers
    if not os.path.exists(results_path):
        log("--server-matrix needs the main run's results file first:", results_path)
        return 2
    if not os.environ.get("BENCH_SERVER_BIN"):
        log("--server-matrix needs BENCH_SERVER_BIN (scripts/bench.sh sets it)")
        return 2
    cfg = servers.SMOKE if a.smoke else servers.FULL
    run = {"meta": {"machine": machine_description(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}}
    ctx = Ctx(a.amqp_url, a.bin_dir, load_bin=a.load_bin, smoke=a.smoke, keep=a.keep)
    try:
        suite.run(ctx, cfg, ["switchover", "create"], run)
    except BaseException:  # noqa: BLE001 - also Ctrl-C and SIGTERM: report, then clean up
        traceback.print_exc()
        log("FAILED (server %s); agent and Redis logs are in" % a.server_matrix, ctx.tmp, "(kept)")
        ctx.keep = True
        return 1
    finally:
        ctx.close()
    with open(results_path) as f:
        results = json.load(f)
    servers.store(results, a.server_matrix, run)
    with open(results_path, "w") as f:
        json.dump(results, f, indent=1, default=str)
    report.write(results, md, charts)
    log("server %s: switchover and create stored in %s; report %s" % (a.server_matrix, results_path, md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
