#!/usr/bin/env python3
"""Prints two bench/run.sh result files side by side.

    bench/compare.py OLD.json NEW.json
    bench/compare.py                     the two newest files in bench/results (quick runs skipped)

The last column is NEW relative to OLD; for latencies and memory lower is better, for rates higher.
"""

import glob
import json
import os
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def newest_two():
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    paths = sorted(p for p in glob.glob(os.path.join(here, "*.json")) if not p.endswith("-quick.json"))
    if len(paths) < 2:
        sys.exit(f"need two result files in {here}, found {len(paths)}; pass two paths instead")
    return paths[-2], paths[-1]


def cell(value):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def change(old, new):
    if not isinstance(old, (int, float)) or not isinstance(new, (int, float)) or isinstance(old, bool) or not old:
        return ""
    return f"{(new - old) / old * 100:+.1f}%"


def rows(a, b):
    """(label, old, new) for everything worth comparing."""
    ma, mb = a["machine"], b["machine"]
    yield "commit", ma.get("git_short", "?") + ("+dirty" if ma.get("git_dirty") == "1" else ""), \
        mb.get("git_short", "?") + ("+dirty" if mb.get("git_dirty") == "1" else "")
    yield "started", a.get("started_at"), b.get("started_at")
    yield "cores / MiB RAM", f"{ma.get('nproc')} / {ma.get('mem_total_mib')}", f"{mb.get('nproc')} / {mb.get('mem_total_mib')}"
    yield "load average at start", ma.get("loadavg_at_start"), mb.get("loadavg_at_start")
    yield "PostgreSQL / RabbitMQ", f"{ma.get('postgres_version', '?').split()[0]} / {ma.get('rabbitmq_version')}", \
        f"{mb.get('postgres_version', '?').split()[0]} / {mb.get('rabbitmq_version')}"
    yield "passed", a.get("passed"), b.get("passed")
    for clients in sorted(set(a["pgbench"]) | set(b["pgbench"]), key=int):
        yield f"pgbench tps, {clients} clients", a["pgbench"].get(clients, {}).get("tps"), b["pgbench"].get(clients, {}).get("tps")
    for key in sorted(set(a["relay"]) | set(b["relay"])):
        yield f"relay: {key}", a["relay"].get(key), b["relay"].get(key)
    ca, cb = a.get("cost_per_order") or {}, b.get("cost_per_order") or {}
    for key in ("transactions_per_order", "write_transactions_per_order", "rows_written_per_order", "messages_per_order"):
        yield key.replace("_", " "), ca.get(key), cb.get(key)
    steps_a = {step["concurrency"]: step for step in a["steps"]}
    steps_b = {step["concurrency"]: step for step in b["steps"]}
    for concurrency in sorted(set(steps_a) | set(steps_b)):
        sa, sb = steps_a.get(concurrency, {}), steps_b.get(concurrency, {})
        la, lb = (sa.get("load") or {}).get("latency_ms", {}), (sb.get("load") or {}).get("latency_ms", {})
        prefix = f"c={concurrency}:"
        yield f"{prefix} orders/s", sa.get("orders_per_s"), sb.get("orders_per_s")
        yield f"{prefix} achieved / min bound", sa.get("achieved_over_min_bound"), sb.get("achieved_over_min_bound")
        yield f"{prefix} same, writes", sa.get("achieved_over_min_writes_bound"), sb.get("achieved_over_min_writes_bound")
        for quantile in ("p50", "p90", "p99"):
            yield f"{prefix} {quantile} ms", la.get(quantile), lb.get(quantile)
        yield f"{prefix} peak RSS MiB", sa.get("peak_rss_mib"), sb.get("peak_rss_mib")
        yield f"{prefix} passed", sa.get("passed"), sb.get("passed")


def main(argv):
    if len(argv) == 3:
        old_path, new_path = argv[1], argv[2]
    elif len(argv) == 1:
        old_path, new_path = newest_two()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    a, b = load(old_path), load(new_path)
    table = [("", os.path.basename(old_path), os.path.basename(new_path), "change")]
    table += [(label, cell(old), cell(new), change(old, new)) for label, old, new in rows(a, b)]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for index, row in enumerate(table):
        print(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}")
        if index == 0:
            print("  ".join("-" * width for width in widths))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
