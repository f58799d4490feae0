#!/usr/bin/env bash
# One benchmark run of the shop on this machine; see bench/README.md for what it measures and
# how to read the table.
#
#   bench/run.sh            full run (about 2-3 minutes after the build)
#   QUICK=1 bench/run.sh    smoke run with tiny numbers (about 1 minute after the build)
#
# Settings (environment):
#   LOAD_CONCURRENCY   customers per load step               default "1 4 16 32 64 128"  (QUICK: "1 4")
#                      (throughput saturates near 16-32 customers here: 64 and 128 are 4x that,
#                      where the services shed what they cannot take)
#   LOAD_ORDERS_FIRST  orders of the first step               default 300          (QUICK: 20)
#   LOAD_ORDERS        orders of every later step             default 2000         (QUICK: 40)
#   LATENCY_ORDERS     3-line orders placed one at a time     default 200          (QUICK: 20)
#   LOAD_ARGS          extra `harness load` flags of every step, e.g. "--flow step-by-step"   default none
#   PGBENCH_CLIENTS    pgbench client counts                  default "1 8 16"
#   PGBENCH_SECONDS    seconds per pgbench client count       default 10           (QUICK: 2)
#   PGBENCH_ARGS       extra pgbench flags, e.g. "-M prepared" default none
#   MAX_REQUESTS_IN_FLIGHT  SHOP_MAX_REQUESTS_IN_FLIGHT of `shop up`   default: the service's own
#   ORDERS_ADDR, INVENTORY_ADDR   listeners of `shop up`      default 127.0.0.1:18081, :18082
#   PGHOST PGPORT PGUSER          PostgreSQL                  default 127.0.0.1 5432 postgres
#   PGBENCH_DB ORDERS_DB INVENTORY_DB STOREFRONT_DB   scratch databases   default bench_pgbench,
#                      bench_orders, bench_inventory, bench_storefront
#   AMQP_HOST AMQP_PORT           RabbitMQ (guest/guest)      default 127.0.0.1 5672
#   EMBEDDED=0         skip the embedded-mode steps (shop up on SQLite, same load)   default 1
#   RESULTS_DIR        where the result files go              default bench/results
#   KEEP_WORK=1        keep the raw files and logs of the run (their directory is printed)
# Exit code: 0 when every load step passed its invariant checks, 1 otherwise.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

case "${1:-}" in
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --quick) QUICK=1 ;;
    "") ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    : "${LOAD_CONCURRENCY:=1 4}" "${LOAD_ORDERS_FIRST:=20}" "${LOAD_ORDERS:=40}" "${PGBENCH_SECONDS:=2}"
    : "${LATENCY_ORDERS:=20}"
fi
LOAD_CONCURRENCY=${LOAD_CONCURRENCY:-1 4 16 32 64 128}
LOAD_ORDERS_FIRST=${LOAD_ORDERS_FIRST:-300}
LOAD_ORDERS=${LOAD_ORDERS:-2000}
LATENCY_ORDERS=${LATENCY_ORDERS:-200}
LOAD_ARGS=${LOAD_ARGS:-}
PGBENCH_CLIENTS=${PGBENCH_CLIENTS:-1 8 16}
PGBENCH_SECONDS=${PGBENCH_SECONDS:-10}
PGBENCH_ARGS=${PGBENCH_ARGS:-}
MAX_REQUESTS_IN_FLIGHT=${MAX_REQUESTS_IN_FLIGHT:-}
ORDERS_ADDR=${ORDERS_ADDR:-127.0.0.1:18081}
INVENTORY_ADDR=${INVENTORY_ADDR:-127.0.0.1:18082}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
AMQP_HOST=${AMQP_HOST:-127.0.0.1}
AMQP_PORT=${AMQP_PORT:-5672}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results}
KEEP_WORK=${KEEP_WORK:-0}
EMBEDDED=${EMBEDDED:-1}

SHOP_BIN=$ROOT/target/release/shop
HARNESS_BIN=$ROOT/target/release/harness
PG_URL=postgres://$PGUSER@$PGHOST:$PGPORT
AMQP_URL=amqp://guest:guest@$AMQP_HOST:$AMQP_PORT/%2f
PGBENCH_DB=${PGBENCH_DB:-bench_pgbench}
ORDERS_DB=${ORDERS_DB:-bench_orders}
INVENTORY_DB=${INVENTORY_DB:-bench_inventory}
STOREFRONT_DB=${STOREFRONT_DB:-bench_storefront}
# Queues and exchange of this run only: a stale queue of an earlier run cannot feed it.
QUEUE_PREFIX=bench-$(date -u +%Y%m%d%H%M%S)-$$

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shop-bench.XXXXXX")
# `shop up` and `harness load` share this run's signing key: the services trust the tokens the load
# signs (and nothing configured for an identity provider gets in the way).
export SHOP_DATA_DIR=$WORK/data
unset SHOP_AUTH_SIGNING_KEY_FILE SHOP_AUTH_PUBLIC_KEY_FILE SHOP_AUTH_JWKS_URL SHOP_AUTH_ISSUER SHOP_AUTH_AUDIENCE
SHOP_PID=""
SHOP_STARTED=0
# The mode the system under load runs in, and the prefix of its raw files: "" for PostgreSQL and
# RabbitMQ, "embedded_" for the embedded mode (SQLite files and the embedded broker).
MODE=postgres
PREFIX=""
PG_REACHABLE=0
SAMPLER_PID=""
FAILED=0

log() { printf '\n[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf '\nbench: %s\n' "$*" >&2; exit 1; }

# psql on the maintenance database: no ~/.psqlrc, stop at the first error, bare output, and no
# NOTICEs ("does not exist, skipping").
psql_admin() { PGOPTIONS='-c client_min_messages=warning' psql -X -q -v ON_ERROR_STOP=1 -At -d postgres "$@"; }

# FORCE: a connection left over by an aborted run must not keep the database alive.
drop_db() { psql_admin -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)"; }

# --- cleanup ------------------------------------------------------------------------------

stop_sampler() {
    if [[ -n $SAMPLER_PID ]]; then
        kill "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
        SAMPLER_PID=""
    fi
}

# SIGINT is how an operator stops the system: it drains in-flight work, then exits.
stop_shop() {
    [[ -n $SHOP_PID ]] || return 0
    local rc=0 hwm
    hwm=$(vm_kb "$SHOP_PID" VmHWM)
    kill -INT "$SHOP_PID" 2>/dev/null || true
    for _ in $(seq 1 150); do
        kill -0 "$SHOP_PID" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$SHOP_PID" 2>/dev/null; then
        echo "bench: shop up did not stop within 30 s of SIGINT; killing it" >&2
        kill -KILL "$SHOP_PID" 2>/dev/null || true
    fi
    wait "$SHOP_PID" 2>/dev/null || rc=$?
    printf 'exit_code=%s\nvmhwm_kb=%s\n' "$rc" "$hwm" >"$WORK/${PREFIX}shop.env"
    SHOP_PID=""
}

# Best effort: without rabbitmqctl (or its cookie) the run's queues stay; say so.
delete_broker_topology() {
    if ! command -v rabbitmqctl >/dev/null || ! timeout 20 rabbitmqctl -q status >/dev/null 2>&1; then
        echo "bench: rabbitmqctl unavailable; delete the queues and exchange named $QUEUE_PREFIX.* by hand" >&2
        return 0
    fi
    local queue
    for queue in $(timeout 30 rabbitmqctl -q list_queues name 2>/dev/null | grep -F "$QUEUE_PREFIX." || true); do
        timeout 20 rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || true
    done
    # rabbitmqctl has no delete_exchange; the exchange is empty and unused by now.
    timeout 20 rabbitmqctl eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$QUEUE_PREFIX.messages\">>), false, <<\"bench\">>)." \
        >/dev/null 2>&1 || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_sampler
    stop_shop
    local db
    for db in "$PGBENCH_DB" "$ORDERS_DB" "$INVENTORY_DB" "$STOREFRONT_DB"; do
        ((PG_REACHABLE)) || break
        drop_db "$db" 2>/dev/null || echo "bench: could not drop the database $db" >&2
    done
    if ((SHOP_STARTED)); then delete_broker_topology; fi
    if [[ ($rc != 0 && -n $(ls -A "$WORK")) || $KEEP_WORK == 1 ]]; then
        echo "bench: raw files and logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- checks and facts -------------------------------------------------------------------------

check_prerequisites() {
    local tool
    for tool in cargo psql pgbench curl python3 git; do
        command -v "$tool" >/dev/null || die "$tool is not installed"
    done
    pg_isready -q -h "$PGHOST" -p "$PGPORT" -t 5 && psql_admin -c 'SELECT 1' >/dev/null ||
        die "PostgreSQL is not reachable at $PGHOST:$PGPORT as $PGUSER (start it, e.g. .ci/run does)"
    PG_REACHABLE=1
    RABBITMQ_VERSION=$(python3 bench/tools.py broker-version "$AMQP_HOST" "$AMQP_PORT") ||
        die "RabbitMQ is not reachable at $AMQP_HOST:$AMQP_PORT (start it: rabbitmq-server -detached)"
    local addr
    for addr in "$ORDERS_ADDR" "$INVENTORY_ADDR"; do
        ! (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null ||
            die "something already listens on $addr (set ORDERS_ADDR / INVENTORY_ADDR)"
    done
}

record_facts() {
    local commit short dirty=0
    commit=$(git rev-parse HEAD)
    short=$(git rev-parse --short HEAD)
    # The other engineers' uncommitted edits are part of the binary: say so in the results.
    [[ -z $(git status --porcelain -- crates Cargo.toml Cargo.lock) ]] || dirty=1
    RUN_NAME=$(date -u +%Y-%m-%dT%H%MZ)-$short
    [[ $QUICK != 1 ]] || RUN_NAME+=-quick
    cat >"$WORK/machine.env" <<EOF
run_name=$RUN_NAME
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
nproc=$(nproc)
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
mem_total_mib=$(($(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo) / 1024))
kernel=$(uname -r)
loadavg_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
postgres_version=$(psql_admin -c 'SHOW server_version')
pg_synchronous_commit=$(psql_admin -c 'SHOW synchronous_commit')
pg_fsync=$(psql_admin -c 'SHOW fsync')
pg_shared_buffers=$(psql_admin -c 'SHOW shared_buffers')
pg_max_connections=$(psql_admin -c 'SHOW max_connections')
rabbitmq_version=$RABBITMQ_VERSION
git_commit=$commit
git_short=$short
git_dirty=$dirty
git_subject=$(git log -1 --format=%s)
rustc=$(rustc --version 2>/dev/null || echo unknown)
EOF
    # Everything here shares the cores; anything else running skews the figures.
    local load
    load=$(cut -d' ' -f1 /proc/loadavg)
    if python3 -c 'import sys; sys.exit(float(sys.argv[1]) <= 0.5)' "$load"; then
        echo "bench: warning: load average $load before the run; something else is busy on this machine" >&2
    fi
    cat >"$WORK/config.env" <<EOF
quick=$QUICK
load_concurrency=$LOAD_CONCURRENCY
load_orders_first=$LOAD_ORDERS_FIRST
load_orders=$LOAD_ORDERS
pgbench_clients=$PGBENCH_CLIENTS
pgbench_seconds=$PGBENCH_SECONDS
pgbench_args=$PGBENCH_ARGS
load_args=$LOAD_ARGS
queue_prefix=$QUEUE_PREFIX
EOF
}

# --- build ------------------------------------------------------------------------------------

# Everything is compiled before anything is measured, so no compiler competes for the 2 cores.
build() {
    log "building target/release/shop, target/release/harness and the relay benchmark"
    cargo build --release -p shop -p harness
    cargo bench -p messaging --bench relay --no-run
}

# --- PostgreSQL ceiling: pgbench with one handler-shaped transaction ---------------------------

run_pgbench() {
    log "pgbench: handler-shaped transaction, clients $PGBENCH_CLIENTS, ${PGBENCH_SECONDS}s each"
    drop_db "$PGBENCH_DB"
    psql_admin -c "CREATE DATABASE $PGBENCH_DB"
    # The real outbox and inbox (indexes, NOTIFY trigger) and the real inventory tables.
    psql -X -q -v ON_ERROR_STOP=1 -d "$PGBENCH_DB" \
        -f crates/messaging/migrations/0001_outbox_inbox.sql -f crates/inventory/migrations/0100_inventory.sql \
        -f bench/handler_schema.sql >/dev/null
    local clients
    for clients in $PGBENCH_CLIENTS; do
        # Same starting point for every client count: no dirty buffers left from the last one.
        psql -X -q -d "$PGBENCH_DB" -c 'VACUUM ANALYZE' -c 'CHECKPOINT'
        # shellcheck disable=SC2086 # PGBENCH_ARGS holds several flags
        pgbench -n -f bench/handler_tx.sql -c "$clients" -j 2 -T "$PGBENCH_SECONDS" $PGBENCH_ARGS "$PGBENCH_DB" \
            >"$WORK/pgbench_c$clients.txt" 2>&1 || { cat "$WORK/pgbench_c$clients.txt" >&2; die "pgbench failed"; }
        grep -E '^(tps|latency average)' "$WORK/pgbench_c$clients.txt" | sed "s/^/  c=$clients: /" >&2
    done
    drop_db "$PGBENCH_DB"
}

# --- RabbitMQ ceiling and relay figures -------------------------------------------------------

run_relay_bench() {
    log "relay benchmark (crates/messaging/benches/relay.rs)"
    BENCH_JSON=$WORK/relay.json TEST_AMQP_URL=$AMQP_URL TEST_DATABASE_URL=$PG_URL \
        cargo bench -p messaging --bench relay >"$WORK/relay.log" 2>&1 ||
        { tail -n 30 "$WORK/relay.log" >&2; die "the relay benchmark failed"; }
    grep -E '^(relay|raw)' "$WORK/relay.log" | sed 's/^/  /' >&2
    [[ -s $WORK/relay.json ]] || die "the relay benchmark wrote no JSON"
}

# --- the system under load --------------------------------------------------------------------

# kB of one /proc/<pid>/status field (VmRSS, VmHWM); empty once the process is gone.
vm_kb() {
    local key value _
    while read -r key value _; do
        [[ $key == "$2:" ]] && { echo "$value"; return 0; }
    done 2>/dev/null <"/proc/$1/status" || true
}

start_shop() {
    log "starting shop up in $MODE mode ($ORDERS_ADDR and $INVENTORY_ADDR)"
    # The limit the services shed load at: the setting, or the default `shop up --help` states.
    local limit=$MAX_REQUESTS_IN_FLIGHT
    if [[ -n $limit ]]; then
        export SHOP_MAX_REQUESTS_IN_FLIGHT=$limit
    else
        limit=$(env -u SHOP_MAX_REQUESTS_IN_FLIGHT "$SHOP_BIN" up --help |
            sed -n 's/.*SHOP_MAX_REQUESTS_IN_FLIGHT=\].*\[default: \([0-9]*\)\].*/\1/p')
    fi
    # The storefront runs too (shop up serves it), on a port of its own choosing.
    if [[ $MODE == postgres ]]; then
        echo "max_requests_in_flight=$limit" >>"$WORK/config.env"
        # Configured explicitly: without these URLs shop up runs embedded.
        drop_db "$ORDERS_DB"
        drop_db "$INVENTORY_DB"
        drop_db "$STOREFRONT_DB"
        SHOP_ORDERS_DATABASE_URL=$PG_URL/$ORDERS_DB SHOP_INVENTORY_DATABASE_URL=$PG_URL/$INVENTORY_DB \
            SHOP_STOREFRONT_DATABASE_URL=$PG_URL/$STOREFRONT_DB SHOP_AMQP_URL=$AMQP_URL SHOP_QUEUE_PREFIX=$QUEUE_PREFIX \
            SHOP_ORDERS_HTTP_ADDR=$ORDERS_ADDR SHOP_INVENTORY_HTTP_ADDR=$INVENTORY_ADDR SHOP_STOREFRONT_HTTP_ADDR=127.0.0.1:0 \
            "$SHOP_BIN" up >"$WORK/shop.log" 2>&1 &
        SHOP_STARTED=1
    else
        # Nothing configured: SQLite files and the embedded broker in the run's data directory.
        env -u SHOP_ORDERS_DATABASE_URL -u SHOP_INVENTORY_DATABASE_URL -u SHOP_AMQP_URL -u SHOP_STOREFRONT_DATABASE_URL \
            SHOP_ORDERS_HTTP_ADDR=$ORDERS_ADDR SHOP_INVENTORY_HTTP_ADDR=$INVENTORY_ADDR SHOP_STOREFRONT_HTTP_ADDR=127.0.0.1:0 \
            "$SHOP_BIN" up >"$WORK/${PREFIX}shop.log" 2>&1 &
    fi
    SHOP_PID=$!
    local _
    for _ in $(seq 1 300); do
        if ! kill -0 "$SHOP_PID" 2>/dev/null; then
            tail -n 30 "$WORK/${PREFIX}shop.log" >&2
            SHOP_PID=""
            die "shop up exited during start-up"
        fi
        if curl -sf -o /dev/null "http://$ORDERS_ADDR/health/ready" &&
            curl -sf -o /dev/null "http://$INVENTORY_ADDR/health/ready"; then
            echo "  ready (pid $SHOP_PID, RSS $(vm_kb "$SHOP_PID" VmRSS) kB)" >&2
            return 0
        fi
        sleep 0.2
    done
    tail -n 30 "$WORK/${PREFIX}shop.log" >&2
    die "shop up was not ready within 60 s"
}

# Samples the RSS of `shop up` every 0.2 s in the background, keeping the peak in a file.
start_sampler() {
    local out=$1
    echo 0 >"$out"
    (
        peak=0
        while rss=$(vm_kb "$SHOP_PID" VmRSS) && [[ -n $rss ]]; do
            if ((rss > peak)); then peak=$rss; echo "$peak" >"$out"; fi
            sleep 0.2
        done
    ) &
    SAMPLER_PID=$!
}

# Sum of a pg_stat_database counter expression over the two service databases.
db_stat() {
    psql_admin -c "SELECT $2 FROM pg_stat_database WHERE datname = '$1'"
}

# PostgreSQL 15 backends publish their statistics at most once a second, and a backend that goes
# idle just after publishing keeps the rest for up to 10 s (PGSTAT_IDLE_INTERVAL): wait that out,
# then until the commit counters move by no more than the relays' periodic sweeps.
wait_for_quiet_stats() {
    local before after _
    sleep 11
    before=$(( $(db_stat "$ORDERS_DB" xact_commit) + $(db_stat "$INVENTORY_DB" xact_commit) ))
    for _ in $(seq 1 20); do
        sleep 1
        after=$(( $(db_stat "$ORDERS_DB" xact_commit) + $(db_stat "$INVENTORY_DB" xact_commit) ))
        (( after - before <= 5 )) && return 0
        before=$after
    done
    echo "bench: the databases did not go quiet within 30 s; the cost per order includes the rest" >&2
}

# Counters of both databases, before or after the measured step, into costs.env. The outbox
# keeps sent rows for an hour, so its row count is every message the step caused.
snapshot_costs() {
    local phase=$1 db
    wait_for_quiet_stats
    for db in "$ORDERS_DB" "$INVENTORY_DB"; do
        {
            echo "$db.xact_$phase=$(db_stat "$db" xact_commit)"
            echo "$db.written_$phase=$(db_stat "$db" 'tup_inserted + tup_updated + tup_deleted')"
        } >>"$WORK/costs.env"
    done
    # Transaction ids are handed out only to transactions that write, cluster-wide: the advance of
    # the next id counts the writing transactions, exactly when nothing else writes meanwhile.
    echo "xid_next_$phase=$(psql_admin -c 'SELECT pg_snapshot_xmax(pg_current_snapshot())')" >>"$WORK/costs.env"
    local row
    for db in "$ORDERS_DB" "$INVENTORY_DB"; do
        # One query (one transaction in the counters): "total|type:count,type:count".
        row=$(psql -X -At -d "$db" -c \
            "SELECT coalesce(sum(n), 0) || '|' || coalesce(string_agg(message_type || ':' || n, ',' ORDER BY message_type), '')
             FROM (SELECT message_type, count(*) AS n FROM outbox GROUP BY 1) AS t")
        printf '%s.outbox_%s=%s\n%s.types_%s=%s\n' "$db" "$phase" "${row%%|*}" "$db" "$phase" "${row#*|}" >>"$WORK/costs.env"
    done
}

# One `harness load` step; a failed step is recorded and reported, the run goes on.
run_load_step() {
    local index=$1 concurrency=$2 orders=$3 rc=0 peak hwm
    log "load step $index ($MODE): $orders orders from $concurrency customers"
    start_sampler "$WORK/${PREFIX}rss_$index"
    # shellcheck disable=SC2086 # LOAD_ARGS is a list of flags
    "$HARNESS_BIN" load --orders "$orders" --concurrency "$concurrency" --quiet $LOAD_ARGS \
        --json "$WORK/${PREFIX}load_$index.json" \
        --orders-url "http://$ORDERS_ADDR" --inventory-url "http://$INVENTORY_ADDR" \
        >"$WORK/${PREFIX}load_$index.log" 2>&1 || rc=$?
    stop_sampler
    peak=$(cat "$WORK/${PREFIX}rss_$index")
    hwm=$(vm_kb "$SHOP_PID" VmHWM)
    echo "$index $concurrency $orders $rc ${peak:-0} ${hwm:-0}" >>"$WORK/${PREFIX}steps.txt"
    sed 's/^/  /' "$WORK/${PREFIX}load_$index.log" >&2
    if [[ $rc != 0 ]]; then
        FAILED=1
        printf '\n  !!!!!! LOAD STEP %s (%s, concurrency %s) FAILED: harness load exited %s !!!!!!\n' \
            "$index" "$MODE" "$concurrency" "$rc" >&2
    fi
    kill -0 "$SHOP_PID" 2>/dev/null ||
        { tail -n 30 "$WORK/${PREFIX}shop.log" >&2; die "shop up died during step $index"; }
}

# Place-to-decision latency of 3-line orders with exactly one order in flight (no queueing):
# the figure to hold against the design's latency target.
run_latency() {
    local rc=0
    log "latency ($MODE): $LATENCY_ORDERS orders of 3 lines, one in flight at a time"
    "$HARNESS_BIN" load --orders "$LATENCY_ORDERS" --concurrency 1 --min-lines 3 --max-lines 3 --products 10 \
        --cancel-ratio 0 --ship-ratio 0 --await-outcome --quiet $LOAD_ARGS --json "$WORK/${PREFIX}latency.json" \
        --orders-url "http://$ORDERS_ADDR" --inventory-url "http://$INVENTORY_ADDR" \
        >"$WORK/${PREFIX}latency.log" 2>&1 || rc=$?
    sed 's/^/  /' "$WORK/${PREFIX}latency.log" >&2
    if [[ $rc != 0 ]]; then
        FAILED=1
        printf '\n  !!!!!! LATENCY STEP (%s) FAILED: harness load exited %s !!!!!!\n' "$MODE" "$rc" >&2
    fi
}

run_load() {
    local index=0 concurrency orders
    for concurrency in $LOAD_CONCURRENCY; do
        index=$((index + 1))
        orders=$LOAD_ORDERS
        ((index != 1)) || orders=$LOAD_ORDERS_FIRST
        if ((index == 1)) && [[ $MODE == postgres ]]; then
            # The first step also measures what one order costs (in PostgreSQL's counters).
            echo "databases=$ORDERS_DB $INVENTORY_DB" >"$WORK/costs.env"
            snapshot_costs before
        fi
        run_load_step "$index" "$concurrency" "$orders"
        if ((index == 1)) && [[ $MODE == postgres ]]; then
            snapshot_costs after
            local placed
            placed=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["orders"])' \
                "$WORK/load_1.json" 2>/dev/null || echo "$orders")
            printf 'orders=%s\nconcurrency=%s\n' "$placed" "$concurrency" >>"$WORK/costs.env"
        fi
    done
}

# --- results ----------------------------------------------------------------------------------

write_results() {
    mkdir -p "$RESULTS_DIR"
    log "results: $RESULTS_DIR/$RUN_NAME.{json,md}"
    python3 bench/tools.py report "$WORK" "$RESULTS_DIR/$RUN_NAME.json" "$RESULTS_DIR/$RUN_NAME.md"
}

main() {
    check_prerequisites
    record_facts
    build
    run_pgbench
    run_relay_bench
    start_shop
    run_latency
    run_load
    stop_shop
    if [[ $EMBEDDED == 1 ]]; then
        # The same load on the embedded mode, in this run, so that both modes are measured on
        # the same machine at the same moment.
        MODE=embedded PREFIX=embedded_
        start_shop
        run_latency
        run_load
        stop_shop
    fi
    write_results
    if ((FAILED)); then
        die "AT LEAST ONE LOAD STEP FAILED: its invariant checks or the run itself (see the table above)"
    fi
}

main
