//! `shop load`: drives orders through running services and checks the invariants.

use clap::Args;

#[derive(Debug, Args)]
pub struct LoadArgs {}

pub async fn run(_args: LoadArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not implemented yet")
}
