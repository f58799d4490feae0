#!/usr/bin/env python3
"""Two variants of the shop side by side, runs interleaved (A B, B A, A B, ...): orders/s and the
CPU one order costs in each process (`shop`, PostgreSQL, RabbitMQ, and `harness` itself).

A variant is a directory holding `shop` and `harness` binaries (a build of another commit, say)
and extra `harness load` flags. On this machine identical runs differ by about 10 %, so one
full `bench/run.sh` against another says little about a change of a few per cent; several
interleaved pairs, and the CPU per order (which queueing does not blur), do.

    cargo build --release -p shop -p harness
    bench/ab.py --b-args "--flow step-by-step"                    # one build, two load flows
    bench/ab.py --a-bin /tmp/base/target/release --pairs 4        # another build against this one

Each run starts `shop up` on fresh scratch databases and a queue prefix of its own, warms it
up, then times one `harness load`; it drops the databases and deletes the queues afterwards.
CPU comes from /proc (utime + stime): `shop up`'s process, every `postgres` process and
RabbitMQ's `beam.smp`, so nothing else should run on the machine meanwhile. PostgreSQL and
RabbitMQ are found as bench/run.sh finds them (PGHOST, PGPORT, PGUSER, AMQP_HOST, AMQP_PORT).
"""

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICKS = os.sysconf("SC_CLK_TCK")
# The same settings as bench/run.sh: PGHOST PGPORT PGUSER, AMQP_HOST AMQP_PORT (guest/guest).
PG = "postgres://{}@{}:{}".format(os.environ.get("PGUSER", "postgres"), os.environ.get("PGHOST", "127.0.0.1"),
                                  os.environ.get("PGPORT", "5432"))
AMQP = "amqp://guest:guest@{}:{}/%2f".format(os.environ.get("AMQP_HOST", "127.0.0.1"),
                                              os.environ.get("AMQP_PORT", "5672"))
ORDERS_ADDR = "127.0.0.1:18281"
INVENTORY_ADDR = "127.0.0.1:18282"


def psql(sql):
    subprocess.run(["psql", "-X", "-q", "-At", "-d", f"{PG}/postgres", "-c", sql], check=True,
                   env={**os.environ, "PGOPTIONS": "-c client_min_messages=warning"})


def cpu_seconds(pids):
    """CPU of the processes and of their children that ended (PostgreSQL's backends that closed
    count in the postmaster's cutime and cstime)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(field) for field in fields[11:15])  # utime, stime, cutime, cstime
        except (FileNotFoundError, ProcessLookupError):
            pass  # a backend that ended between listing and reading
    return total / TICKS


def pids_of(name):
    found = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


def processes(shop_pid):
    return {"shop": [shop_pid], "postgres": pids_of("postgres"), "rabbitmq": pids_of("beam.smp")}


def ready(addr):
    try:
        with urllib.request.urlopen(f"http://{addr}/health/ready", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def delete_queues(prefix):
    listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=60)
    for queue in listed.stdout.split():
        if queue.startswith(prefix + "."):
            subprocess.run(["rabbitmqctl", "-q", "delete_queue", queue], capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=30)
    exchange = f'rabbit_exchange:delete(rabbit_misc:r(<<"/">>, exchange, <<"{prefix}.messages">>), false, <<"ab">>).'
    subprocess.run(["rabbitmqctl", "eval", exchange], capture_output=True, stdin=subprocess.DEVNULL, timeout=30)


def one_run(name, binaries, load_args, options, index):
    prefix = f"ab-{os.getpid()}-{index}"
    databases = {role: f"ab_{os.getpid()}_{index}_{role}" for role in ("orders", "inventory", "storefront")}
    work = tempfile.mkdtemp(prefix="shop-ab.")
    env = {**os.environ, "SHOP_DATA_DIR": os.path.join(work, "data")}
    for key in ("SHOP_AUTH_SIGNING_KEY_FILE", "SHOP_AUTH_PUBLIC_KEY_FILE", "SHOP_AUTH_JWKS_URL"):
        env.pop(key, None)
    for database in databases.values():
        psql(f"CREATE DATABASE {database}")
    shop = None
    finished = False
    try:
        for addr in (ORDERS_ADDR, INVENTORY_ADDR):
            if ready(addr):
                sys.exit(f"ab: something already answers on {addr}")
        shop_env = {
            **env,
            "SHOP_ORDERS_DATABASE_URL": f"{PG}/{databases['orders']}",
            "SHOP_INVENTORY_DATABASE_URL": f"{PG}/{databases['inventory']}",
            "SHOP_STOREFRONT_DATABASE_URL": f"{PG}/{databases['storefront']}",
            "SHOP_AMQP_URL": AMQP,
            "SHOP_QUEUE_PREFIX": prefix,
            "SHOP_ORDERS_HTTP_ADDR": ORDERS_ADDR,
            "SHOP_INVENTORY_HTTP_ADDR": INVENTORY_ADDR,
            "SHOP_STOREFRONT_HTTP_ADDR": "127.0.0.1:0",
        }
        with open(os.path.join(work, "shop.log"), "w") as log:
            shop = subprocess.Popen([os.path.join(binaries, "shop"), "up"], env=shop_env, stdout=log,
                                    stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not (ready(ORDERS_ADDR) and ready(INVENTORY_ADDR)):
            if shop.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"ab: shop up of {name} did not get ready within 60 s")
            time.sleep(0.2)

        load = [os.path.join(binaries, "harness"), "load", "--quiet", "--concurrency", str(options.concurrency),
                "--orders-url", f"http://{ORDERS_ADDR}", "--inventory-url", f"http://{INVENTORY_ADDR}",
                *shlex.split(load_args)]
        report = os.path.join(work, "load.json")
        with open(os.path.join(work, "harness.log"), "w") as harness_log:
            warm_up = subprocess.run([*load, "--orders", str(options.warm_up)], env=env, stdout=harness_log,
                                     stderr=subprocess.STDOUT)
            if warm_up.returncode != 0:
                sys.exit(f"ab: the warm-up load of {name} failed (exit {warm_up.returncode})")
            before = {process: cpu_seconds(ids) for process, ids in processes(shop.pid).items()}
            harness = subprocess.Popen([*load, "--orders", str(options.orders), "--json", report], env=env,
                                       stdout=harness_log, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(harness.pid, 0)
            after = {process: cpu_seconds(ids) for process, ids in processes(shop.pid).items()}
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"ab: harness load of {name} failed (exit {os.waitstatus_to_exitcode(status)})")
        with open(report) as f:
            result = json.load(f)
        per_order = {process: (after[process] - before[process]) * 1000 / options.orders for process in before}
        per_order["harness"] = (usage.ru_utime + usage.ru_stime) * 1000 / options.orders
        finished = True
        return {"variant": name, "orders_per_s": result["orders_per_s"], "cpu_ms_per_order": per_order,
                "requests_per_order": result["http_requests"] / options.orders}
    finally:
        if shop is not None and shop.poll() is None:
            shop.send_signal(signal.SIGINT)
            try:
                shop.wait(timeout=30)
            except subprocess.TimeoutExpired:
                shop.kill()
                shop.wait()
        for database in databases.values():
            psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        delete_queues(prefix)
        if finished:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"ab: the logs of the failed run are kept in {work}", file=sys.stderr)


def line(run):
    cpu = run["cpu_ms_per_order"]
    system = cpu["shop"] + cpu["postgres"] + cpu["rabbitmq"]
    return (f"{run['variant']}  {run['orders_per_s']:7.1f}  {cpu['shop']:6.2f}  {cpu['postgres']:6.2f}  "
            f"{cpu['rabbitmq']:6.2f}  {system:6.2f}  {cpu['harness']:6.2f}  {run['requests_per_order']:5.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    release = os.path.join(ROOT, "target", "release")
    parser.add_argument("--a-bin", default=release, help="directory of variant A's shop and harness")
    parser.add_argument("--b-bin", default=release, help="directory of variant B's shop and harness")
    parser.add_argument("--a-args", default="", help="extra `harness load` flags of variant A")
    parser.add_argument("--b-args", default="", help="extra `harness load` flags of variant B")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--orders", type=int, default=1500, help="orders of each timed run")
    parser.add_argument("--warm-up", type=int, default=200, help="orders before each timed run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", help="also write every run's figures to this file")
    options = parser.parse_args()
    variants = [("A", options.a_bin, options.a_args), ("B", options.b_bin, options.b_args)]
    for name, binaries, args in variants:
        for binary in ("shop", "harness"):
            if not os.access(os.path.join(binaries, binary), os.X_OK):
                sys.exit(f"ab: no {binary} in {binaries} (cargo build --release -p shop -p harness)")
        print(f"{name}: {binaries} {args}".rstrip())
    print(f"{options.pairs} pairs of {options.orders} orders at {options.concurrency} customers, "
          f"after {options.warm_up} to warm up; CPU in ms per order")
    print("run   orders/s    shop  postgres rabbitmq system harness  requests/order")

    runs = []
    for pair in range(options.pairs):
        # A B, then B A: whatever drifts during the runs (caches, autovacuum, the host) favours
        # neither.
        for name, binaries, args in variants if pair % 2 == 0 else variants[::-1]:
            run = one_run(name, binaries, args, options, len(runs))
            runs.append(run)
            print(line(run), flush=True)

    print("means")
    means = {}
    for name, _, _ in variants:
        mine = [run for run in runs if run["variant"] == name]
        cpu = {process: statistics.mean(run["cpu_ms_per_order"][process] for run in mine)
               for process in mine[0]["cpu_ms_per_order"]}
        means[name] = {"variant": name, "orders_per_s": statistics.mean(run["orders_per_s"] for run in mine),
                       "cpu_ms_per_order": cpu,
                       "requests_per_order": statistics.mean(run["requests_per_order"] for run in mine)}
        print(line(means[name]))
    a, b = (means[name] for name, _, _ in variants)
    system = lambda run: sum(run["cpu_ms_per_order"][p] for p in ("shop", "postgres", "rabbitmq"))  # noqa: E731
    print(f"B against A: orders/s {b['orders_per_s'] / a['orders_per_s'] - 1:+.1%}, "
          f"system CPU per order {system(b) / system(a) - 1:+.1%}")
    if options.json:
        with open(options.json, "w") as f:
            json.dump({"runs": runs, "means": means, "variants": variants}, f, indent=2)


if __name__ == "__main__":
    main()
