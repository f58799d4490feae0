//! The `harness` binary as a tester uses it: bad flags get a message that says what to fix.

use std::process::{Command, Output};

fn harness(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .expect("harness runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn bad_flags_are_refused_with_a_hint() {
    let output = harness(&["load", "--orders", "0"], &[("SHOP_LOAD_ORDERS_URL", "http://127.0.0.1:1")]);
    assert!(!output.status.success());
    assert!(text(&output).contains("--orders and --concurrency must be at least 1"), "{}", text(&output));
}

#[test]
fn an_unknown_kind_of_fault_is_refused_with_the_kinds_there_are() {
    let output = harness(&["chaos", "--faults", "silent-postgres,silent-db"], &[]);
    assert_eq!(output.status.code(), Some(2));
    let message = text(&output);
    assert!(message.contains("invalid value 'silent-db' for '--faults <FAULTS>'"), "{message}");
    assert!(message.contains("silent-broker, slow-postgres, slow-broker"), "{message}");
}
