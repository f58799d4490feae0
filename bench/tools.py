#!/usr/bin/env python3
"""Helpers of bench/run.sh (standard library only).

    tools.py broker-version HOST PORT   print "RabbitMQ 3.10.8" from the AMQP handshake
                                        (proves the broker speaks AMQP; exit 1 if not)
    tools.py report WORKDIR JSON MD     turn a run's raw files into the result JSON and the
                                        Markdown table (printed too)

The raw files `report` reads from WORKDIR, all written by run.sh:
    machine.env, config.env, costs.env   key=value lines
    pgbench_c<N>.txt                     pgbench's output at N clients
    relay.json                           BENCH_JSON of the messaging relay benchmark
    steps.txt                            one line per load step: index concurrency orders
                                         exit_code peak_rss_kb vmhwm_kb
    load_<index>.json                    `harness load --json` report of that step
    latency.json                         `harness load --json` report of the latency step
    shop.env                             how `shop up` ended (exit code, VmHWM)
    embedded_steps.txt, embedded_load_<index>.json, embedded_latency.json, embedded_shop.env
                                         the same for the embedded mode (absent with EMBEDDED=0)
"""

import json
import math
import os
import re
import socket
import struct
import sys


# --- broker-version ---------------------------------------------------------------------------

# Sizes of the fixed-width AMQP field value types (RabbitMQ's reading of 0-9-1).
FIXED_SIZES = {"t": 1, "b": 1, "B": 1, "s": 2, "u": 2, "I": 4, "i": 4, "f": 4, "D": 5,
               "l": 8, "d": 8, "T": 8, "V": 0}


def _field_table(data, pos):
    """Decodes an AMQP 0-9-1 field table at pos; returns (dict, next position)."""
    (size,) = struct.unpack_from(">I", data, pos)
    pos += 4
    end = pos + size
    table = {}
    while pos < end:
        name_len = data[pos]
        name = data[pos + 1:pos + 1 + name_len].decode()
        pos += 1 + name_len
        kind = chr(data[pos])
        pos += 1
        if kind == "S":
            (length,) = struct.unpack_from(">I", data, pos)
            table[name] = data[pos + 4:pos + 4 + length].decode(errors="replace")
            pos += 4 + length
        elif kind == "F":
            table[name], pos = _field_table(data, pos)
        elif kind in "xA":  # byte array, array: skipped by their length
            (length,) = struct.unpack_from(">I", data, pos)
            pos += 4 + length
        elif kind in FIXED_SIZES:
            if kind == "t":
                table[name] = bool(data[pos])
            pos += FIXED_SIZES[kind]
        else:  # an unknown type: stop rather than misread the rest
            break
    return table, end


def broker_version(host, port):
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.settimeout(5)
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        data = b""
        while len(data) < 7:
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError("connection closed during the AMQP handshake")
            data += chunk
        if data.startswith(b"AMQP"):
            raise RuntimeError("the server refused AMQP 0-9-1")
        kind, _channel, size = struct.unpack_from(">BHI", data, 0)
        while len(data) < 7 + size + 1:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed during the AMQP handshake")
            data += chunk
    class_id, method_id = struct.unpack_from(">HH", data, 7)
    if kind != 1 or (class_id, method_id) != (10, 10):
        raise RuntimeError("the server did not answer with Connection.Start")
    properties, _ = _field_table(data, 7 + 4 + 2)
    return f"{properties.get('product', '?')} {properties.get('version', '?')}"


# --- report -----------------------------------------------------------------------------------

def read_env(path):
    values = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.rstrip("\n")
                if "=" in line:
                    key, value = line.split("=", 1)
                    values[key] = value
    return values


def parse_pgbench(text):
    def number(pattern):
        match = re.search(pattern, text)
        return float(match.group(1)) if match else None

    return {
        "tps": number(r"tps = ([0-9.]+) \(without initial connection time\)"),
        "latency_avg_ms": number(r"latency average = ([0-9.]+) ms"),
        "transactions": number(r"number of transactions actually processed: ([0-9]+)"),
        "failed": number(r"number of failed transactions: ([0-9]+)"),
    }


def as_int(value, default=None):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def as_float(value, default=None):
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def closest(counts, target):
    """The count closest to target (ties go to the larger one)."""
    return min(counts, key=lambda count: (abs(count - target), -count)) if counts else None


def mib(kb):
    return round(kb / 1024, 1) if kb else None


def build_result(work):
    machine = read_env(os.path.join(work, "machine.env"))
    config = read_env(os.path.join(work, "config.env"))
    costs_raw = read_env(os.path.join(work, "costs.env"))
    shop = read_env(os.path.join(work, "shop.env"))

    pgbench = {}
    for name in sorted(os.listdir(work)):
        match = re.fullmatch(r"pgbench_c(\d+)\.txt", name)
        if match:
            with open(os.path.join(work, name)) as f:
                pgbench[int(match.group(1))] = parse_pgbench(f.read())
    pgbench = dict(sorted(pgbench.items()))

    relay = {}
    relay_path = os.path.join(work, "relay.json")
    if os.path.exists(relay_path):
        with open(relay_path) as f:
            relay = json.load(f)

    # What one order costs, measured on the first load step.
    costs = {}
    orders = as_int(costs_raw.get("orders"))
    if orders:
        databases = costs_raw.get("databases", "").split()
        per_db = {}
        for db in databases:
            per_db[db] = {
                "xact_commit": as_int(costs_raw.get(f"{db}.xact_after"), 0) - as_int(costs_raw.get(f"{db}.xact_before"), 0),
                "outbox_rows": as_int(costs_raw.get(f"{db}.outbox_after"), 0) - as_int(costs_raw.get(f"{db}.outbox_before"), 0),
                "rows_written": as_int(costs_raw.get(f"{db}.written_after"), 0) - as_int(costs_raw.get(f"{db}.written_before"), 0),
            }
        total = {key: sum(db[key] for db in per_db.values()) for key in ("xact_commit", "outbox_rows", "rows_written")}
        by_type = {}
        for db in databases:
            for phase, sign in (("after", 1), ("before", -1)):
                for item in filter(None, costs_raw.get(f"{db}.types_{phase}", "").split(",")):
                    message_type, count = item.rsplit(":", 1)
                    by_type[message_type] = by_type.get(message_type, 0) + sign * int(count)
        costs = {
            "measured_on_concurrency": as_int(costs_raw.get("concurrency")),
            "orders": orders,
            "databases": per_db,
            "transactions_per_order": round(total["xact_commit"] / orders, 2),
            "messages_per_order": round(total["outbox_rows"] / orders, 2),
            "rows_written_per_order": round(total["rows_written"] / orders, 2),
            # Cluster-wide: only exact when nothing but the shop wrote during the step.
            "write_transactions_per_order": round(
                (as_int(costs_raw.get("xid_next_after"), 0) - as_int(costs_raw.get("xid_next_before"), 0)) / orders, 2),
            "messages_per_order_by_type": {
                message_type: round(count / orders, 2) for message_type, count in sorted(by_type.items()) if count
            },
        }

    tx_per_order = costs.get("transactions_per_order")
    writes_per_order = costs.get("write_transactions_per_order")
    msgs_per_order = costs.get("messages_per_order")
    raw_confirmed = relay.get("raw_lapin_confirmed_msgs_per_s")
    clients = list(pgbench)

    steps = []
    for concurrency, requested, exit_code, peak_kb, hwm_kb, load in read_steps(work, ""):
        achieved = load["orders_per_s"] if load else None
        db_clients = closest(clients, concurrency)
        db_tps = pgbench[db_clients]["tps"] if db_clients is not None else None
        db_bound = db_tps / tx_per_order if db_tps and tx_per_order else None
        db_writes_bound = db_tps / writes_per_order if db_tps and writes_per_order else None
        broker_bound = raw_confirmed / msgs_per_order if raw_confirmed and msgs_per_order else None
        bounds = [bound for bound in (db_bound, broker_bound) if bound]
        writes_bounds = [bound for bound in (db_writes_bound, broker_bound) if bound]
        steps.append({
            "concurrency": concurrency,
            "orders_requested": requested,
            "exit_code": exit_code,
            "passed": exit_code == 0 and load is not None,
            "orders_per_s": achieved,
            "db_bound_orders_per_s": round(db_bound, 1) if db_bound else None,
            "db_bound_pgbench_clients": db_clients,
            "db_writes_bound_orders_per_s": round(db_writes_bound, 1) if db_writes_bound else None,
            "broker_bound_orders_per_s": round(broker_bound, 1) if broker_bound else None,
            "achieved_over_min_bound": round(achieved / min(bounds), 3) if achieved and bounds else None,
            "achieved_over_min_writes_bound":
                round(achieved / min(writes_bounds), 3) if achieved and writes_bounds else None,
            "peak_rss_mib": mib(peak_kb),
            "vmhwm_mib": mib(hwm_kb),
            "load": load,
        })

    latency = read_json(os.path.join(work, "latency.json"))
    embedded = build_embedded(work)

    shop_exit = as_int(shop.get("exit_code"))
    passed = (bool(steps) and all(step["passed"] for step in steps) and shop_exit in (0, None)
              and latency_passed(latency))
    passed = passed and (embedded is None or embedded["passed"])
    return {
        "format": 1,
        "name": machine.get("run_name"),
        "started_at": machine.get("started_at"),
        "quick": config.get("quick") == "1",
        "machine": {key: value for key, value in machine.items() if key not in ("run_name", "started_at")},
        "config": config,
        "pgbench": {str(count): figures for count, figures in pgbench.items()},
        "relay": relay,
        "cost_per_order": costs,
        "single_order_latency": latency,
        "steps": steps,
        "shop": {"exit_code": shop_exit, "vmhwm_mib": mib(as_int(shop.get("vmhwm_kb")))},
        "embedded": embedded,
        "passed": passed,
    }


def read_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_steps(work, prefix):
    """The load steps of one mode, in order: (concurrency, orders requested, exit code, peak RSS kB,
    VmHWM kB, the step's `harness load` report or None)."""
    path = os.path.join(work, f"{prefix}steps.txt")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [line.split() for line in f if line.strip()]
    return [(int(concurrency), int(requested), int(exit_code), as_int(peak_kb), as_int(hwm_kb),
             read_json(os.path.join(work, f"{prefix}load_{index}.json")))
            for index, concurrency, requested, exit_code, peak_kb, hwm_kb in lines]


def latency_passed(latency):
    return latency is None or (not latency.get("violations") and not latency.get("unfinished"))


def build_embedded(work):
    """The embedded mode's figures (the same load on `shop up` with nothing configured), or None
    when the run skipped it."""
    steps = [{
        "concurrency": concurrency,
        "orders_requested": requested,
        "exit_code": exit_code,
        "passed": exit_code == 0 and load is not None,
        "orders_per_s": load["orders_per_s"] if load else None,
        "peak_rss_mib": mib(peak_kb),
        "vmhwm_mib": mib(hwm_kb),
        "load": load,
    } for concurrency, requested, exit_code, peak_kb, hwm_kb, load in read_steps(work, "embedded_")]
    latency = read_json(os.path.join(work, "embedded_latency.json"))
    if not steps and latency is None:
        return None
    shop = read_env(os.path.join(work, "embedded_shop.env"))
    shop_exit = as_int(shop.get("exit_code"))
    return {
        "single_order_latency": latency,
        "steps": steps,
        "shop": {"exit_code": shop_exit, "vmhwm_mib": mib(as_int(shop.get("vmhwm_kb")))},
        "passed": bool(steps) and all(step["passed"] for step in steps) and shop_exit in (0, None)
                  and latency_passed(latency),
    }


def fmt(value, digits=1, suffix=""):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}{suffix}"


def markdown(result):
    m, c = result["machine"], result["cost_per_order"]
    out = []
    out.append(f"# Benchmark {result['name']}{'  (QUICK smoke run: numbers are not meaningful)' if result['quick'] else ''}")
    out.append("")
    out.append(f"- started {result['started_at']}, commit `{m.get('git_commit', '?')}`"
               f"{' (working tree dirty)' if m.get('git_dirty') == '1' else ''}: {m.get('git_subject', '')}")
    out.append(f"- machine: {m.get('nproc')} cores ({m.get('cpu_model')}), {m.get('mem_total_mib')} MiB RAM, "
               f"Linux {m.get('kernel')}, load average at start {m.get('loadavg_at_start')}")
    if result["config"].get("load_args"):
        out.append(f"- `harness load` flags of every step: `{result['config']['load_args']}`")
    out.append(f"- PostgreSQL {m.get('postgres_version')} (synchronous_commit {m.get('pg_synchronous_commit')}, "
               f"fsync {m.get('pg_fsync')}, shared_buffers {m.get('pg_shared_buffers')}); {m.get('rabbitmq_version')}")
    tps = ", ".join(f"c={count}: {fmt(f['tps'], 0)} tps ({fmt(f['latency_avg_ms'], 2)} ms)"
                    for count, f in result["pgbench"].items())
    out.append(f"- pgbench, handler-shaped transaction (bench/handler_tx.sql): {tps or 'n/a'}")
    r = result["relay"]
    out.append(f"- relay benchmark: commit-to-delivery p50/p99 in-memory {fmt(r.get('memory_latency_p50_ms'), 2)}/"
               f"{fmt(r.get('memory_latency_p99_ms'), 2)} ms, RabbitMQ {fmt(r.get('rabbitmq_latency_p50_ms'), 2)}/"
               f"{fmt(r.get('rabbitmq_latency_p99_ms'), 2)} ms; relay drains {fmt(r.get('relay_throughput_msgs_per_s'), 0)} msg/s, "
               f"consume+ack {fmt(r.get('consume_ack_msgs_per_s'), 0)} msg/s, raw publish with confirms "
               f"{fmt(r.get('raw_lapin_confirmed_msgs_per_s'), 0)} msg/s")
    if c:
        out.append(f"- one order costs {fmt(c['transactions_per_order'], 1)} committed database transactions "
                   f"(pg_stat_database xact_commit: read-only ones included), of which about "
                   f"{fmt(c.get('write_transactions_per_order'), 1)} write (transaction ids assigned, cluster-wide), "
                   f"{fmt(c['rows_written_per_order'], 1)} rows written and {fmt(c['messages_per_order'], 1)} "
                   f"messages (outbox rows); measured over {c['orders']} orders at concurrency "
                   f"{c['measured_on_concurrency']}")
        kinds = ", ".join(f"{kind} {fmt(n, 2)}" for kind, n in c["messages_per_order_by_type"].items())
        out.append(f"- messages per order by type (the catalog seeding of `harness load` included): {kinds}")
    else:
        out.append("- cost per order: not measured")
    single = result.get("single_order_latency")
    if single:
        out.append(f"- place-to-decision latency of 3-line orders, one in flight at a time: {latency_line(single)}")
    out.append(f"- `shop up` peak RSS over the whole run (VmHWM): {fmt(result['shop']['vmhwm_mib'], 1, ' MiB')}, "
               f"exit code on SIGINT: {result['shop']['exit_code']}")
    limit = result["config"].get("max_requests_in_flight")
    out.append(f"- each service sheds API requests beyond {limit or 'n/a'} in flight (SHOP_MAX_REQUESTS_IN_FLIGHT): "
               f"503 with Retry-After, which `harness load` waits out before trying again")
    out.append("")
    out.append("| customers | orders | orders/s | DB bound, all commits | DB bound, writes | broker bound "
               "| achieved / min bound | same, writes | p50 ms | p90 ms | p99 ms | shed | accepted p99 ms "
               "| peak RSS MiB | check |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for s in result["steps"]:
        load = s["load"] or {}
        latency = load.get("latency_ms", {})
        check = check_cell(s)
        db_bound = (f"{fmt(s['db_bound_orders_per_s'])} (pgbench c={s['db_bound_pgbench_clients']})"
                    if s["db_bound_orders_per_s"] else "n/a")
        accepted_p99 = load.get("http_latency_ms", {}).get("p99")
        out.append(f"| {s['concurrency']} | {load.get('orders', s['orders_requested'])} | {fmt(s['orders_per_s'])} "
                   f"| {db_bound} | {fmt(s['db_writes_bound_orders_per_s'])} | {fmt(s['broker_bound_orders_per_s'])} "
                   f"| {fmt(s['achieved_over_min_bound'], 2)} | {fmt(s['achieved_over_min_writes_bound'], 2)} "
                   f"| {fmt(latency.get('p50'))} | {fmt(latency.get('p90'))} | {fmt(latency.get('p99'))} "
                   f"| {shed_share(load)} | {fmt(accepted_p99)} | {fmt(s['peak_rss_mib'])} | {check} |")
    out.append("")
    out.append("DB bound = pgbench tps at the closest client count (shown) / transactions per order, counting "
               "every commit or only the writing ones; broker bound = raw confirmed publishes per second / "
               "messages per order; achieved / min bound = orders/s over the lower of the DB and broker bounds; "
               "p50/p90/p99 are place-to-decision latency; shed = share of HTTP requests refused with 503 for "
               "overload (each retried after its Retry-After); accepted p99 = latency of the HTTP requests the "
               "services accepted. See bench/README.md.")
    out.extend(embedded_markdown(result))
    out.append("")
    out.append(f"Result: {'PASSED' if result['passed'] else '**FAILED**'}")
    return "\n".join(out) + "\n"


def shed_share(load):
    requests, shed = load.get("http_requests"), load.get("http_shed")
    return fmt(100.0 * shed / requests, 1, "%") if requests and shed is not None else "n/a"


def check_cell(step):
    load = step["load"] or {}
    if step["passed"]:
        return "pass"
    if load:
        return (f"**FAIL** (exit {step['exit_code']}: {load.get('unfinished', 0)} unfinished, "
                f"{len(load.get('violations', []))} violations)")
    return f"**FAIL** (exit {step['exit_code']}, no report)"


def latency_line(single):
    l = single["latency_ms"]
    return (f"p50 {fmt(l['p50'])} ms, p90 {fmt(l['p90'])} ms, p99 {fmt(l['p99'])} ms, max {fmt(l['max'])} ms "
            f"({l['samples']} orders)")


def embedded_markdown(result):
    embedded = result.get("embedded")
    if not embedded:
        return []
    out = ["", "## Embedded mode: the same load on `shop up` with nothing configured", "",
           "SQLite files and the embedded broker in the run's data directory, one process, measured in the same "
           "run right after the PostgreSQL and RabbitMQ steps.", ""]
    single, postgres_single = embedded.get("single_order_latency"), result.get("single_order_latency")
    if single:
        out.append(f"- place-to-decision latency of 3-line orders, one in flight at a time: {latency_line(single)}"
                   + (f"; PostgreSQL mode: {latency_line(postgres_single)}" if postgres_single else ""))
    out.append(f"- `shop up` peak RSS over its run (VmHWM): {fmt(embedded['shop']['vmhwm_mib'], 1, ' MiB')}, "
               f"exit code on SIGINT: {embedded['shop']['exit_code']}")
    out.append("")
    out.append("| customers | orders | orders/s | PostgreSQL mode orders/s | embedded / PostgreSQL | p50 ms | p90 ms "
               "| p99 ms | PostgreSQL mode p50 / p99 ms | shed | peak RSS MiB | check |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    postgres = {step["concurrency"]: step for step in result["steps"]}
    for s in embedded["steps"]:
        load = s["load"] or {}
        latency = load.get("latency_ms", {})
        other = postgres.get(s["concurrency"]) or {}
        other_latency = (other.get("load") or {}).get("latency_ms", {})
        ratio = s["orders_per_s"] / other["orders_per_s"] if s["orders_per_s"] and other.get("orders_per_s") else None
        out.append(f"| {s['concurrency']} | {load.get('orders', s['orders_requested'])} | {fmt(s['orders_per_s'])} "
                   f"| {fmt(other.get('orders_per_s'))} | {fmt(ratio, 2)} | {fmt(latency.get('p50'))} "
                   f"| {fmt(latency.get('p90'))} | {fmt(latency.get('p99'))} "
                   f"| {fmt(other_latency.get('p50'))} / {fmt(other_latency.get('p99'))} "
                   f"| {shed_share(load)} | {fmt(s['peak_rss_mib'])} | {check_cell(s)} |")
    return out


def report(work, json_path, md_path):
    result = build_result(work)
    with open(json_path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    text = markdown(result)
    with open(md_path, "w") as f:
        f.write(text)
    print(text)


def main(argv):
    if len(argv) == 4 and argv[1] == "broker-version":
        try:
            print(broker_version(argv[2], argv[3]))
        except (OSError, RuntimeError, struct.error) as error:
            print(f"no AMQP broker at {argv[2]}:{argv[3]}: {error}", file=sys.stderr)
            return 1
        return 0
    if len(argv) == 5 and argv[1] == "report":
        report(argv[2], argv[3], argv[4])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
