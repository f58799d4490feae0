//! `harness`: put order load on running services, run them under injected faults, or kill the
//! embedded system under load, and check every invariant afterwards.

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "harness", version, about = "Load, fault injection and crashes for the shop's services")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive orders through running services and check the invariants afterwards.
    Load(harness::load::LoadArgs),
    /// Run services as processes, inject faults under load, then check every invariant.
    Chaos(harness::chaos::ChaosArgs),
    /// Run the embedded system (`shop up` with nothing configured), SIGKILL and restart it
    /// under load, then check every invariant.
    Crash(harness::crash::CrashArgs),
}

/// mimalloc, as `shop`: the load shares the machine with the system it measures, so the less CPU
/// it spends, the less it takes from what it measures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The broker and database clients warn here when a fault cuts them off.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let outcome = match cli.command {
        Command::Load(args) => harness::load::run(args).await,
        Command::Chaos(args) => harness::chaos::run(args).await,
        Command::Crash(args) => harness::crash::run(args).await,
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
