//! Test tooling for a running shop, in its own crate so that the services never link it:
//! [`load`] drives orders through the HTTP APIs and checks the invariants afterwards, [`chaos`]
//! runs the services as processes and injects faults under that load, [`crash`] kills the
//! embedded system with SIGKILL under that load; both check [`invariants`] in the databases.

pub mod chaos;
pub mod crash;
pub mod invariants;
pub mod load;
pub mod proxy;

use anyhow::Context;
use std::path::Path;
use std::process::ExitCode;

/// How a run ends: its report printed, written as JSON to `json` if asked, and the exit code
/// its checks decide.
pub(crate) fn conclude<R: serde::Serialize>(
    report: &R,
    print: impl Fn(&R),
    passed: bool,
    json: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    print(report);
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
