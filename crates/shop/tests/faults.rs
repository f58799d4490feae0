//! The short fault-injection run (`harness chaos` with a few hundred orders) against this
//! crate's `shop` binary (so it lives here, with the harness as a dev-dependency): two processes per
//! service under load while processes are killed, RabbitMQ restarts, database connections are
//! cut, connections to PostgreSQL and RabbitMQ go silent or slow, delivered messages are
//! published again and poison arrives. Every invariant must hold, and the services must give up
//! the connections that went silent.
//!
//! It restarts the broker for every client on the machine, so it lives alone in its own test
//! binary (`cargo test` runs test binaries one after another). The long run is a README command.

use clap::Parser;
use harness::chaos::{ChaosArgs, FAULTS, execute, print_report};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    chaos: ChaosArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_applied_twice_or_oversold_whatever_fails() {
    let mut cli = Cli::parse_from([
        "chaos",
        "--orders",
        "200",
        "--concurrency",
        "8",
        // Two shuffled rounds: every kind of fault at least twice.
        "--min-faults",
        "20",
        "--fault-interval",
        "1s",
    ]);
    cli.chaos.binary = Some(env!("CARGO_BIN_EXE_shop").into());
    if let Ok(seed) = std::env::var("SHOP_CHAOS_SEED") {
        cli.chaos.seed = Some(seed.parse().expect("SHOP_CHAOS_SEED is a number"));
    }
    let report = execute(&cli.chaos).await.expect("the chaos run completes");
    print_report(&report);
    assert!(
        report.faults.len() == FAULTS.len() && report.faults.values().all(|n| *n >= 2),
        "faults: {:?}",
        report.faults
    );
    assert!(report.poison_injected > 0 && report.duplicates_injected > 0);
    for silent in ["silent-postgres", "silent-broker"] {
        assert!(report.detection[silent].abandoned > 0, "no silent connection was given up: {:?}", report.detection);
    }
    assert!(report.passed(), "invariants violated (seed {}): {:#?}", report.seed, report.violations);
}
