//! The embedded mode killed mid-burst (`harness crash` with a few hundred orders) against this
//! crate's `shop` binary: `shop up` with nothing configured, a temporary data directory, order
//! load, SIGKILL at random moments and a restart on the same data directory each time. Nothing
//! may be lost or applied twice, including the messages the embedded broker held when the
//! process died; every invariant must hold. It needs neither PostgreSQL nor RabbitMQ.

use clap::Parser;
use harness::crash::{CrashArgs, execute, print_report};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    crash: CrashArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_or_applied_twice_when_the_embedded_system_is_killed_mid_burst() {
    let mut cli =
        Cli::parse_from(["crash", "--orders", "300", "--concurrency", "8", "--kills", "4", "--kill-interval", "1s"]);
    cli.crash.binary = Some(env!("CARGO_BIN_EXE_shop").into());
    if let Ok(seed) = std::env::var("SHOP_CRASH_SEED") {
        cli.crash.seed = Some(seed.parse().expect("SHOP_CRASH_SEED is a number"));
    }
    let report = execute(&cli.crash).await.expect("the crash run completes");
    print_report(&report);
    assert_eq!(report.kills, 4, "every kill happened mid-burst");
    assert!(report.orders >= 300);
    assert!(report.passed(), "invariants violated (seed {}): {:#?}", report.seed, report.violations);
}
