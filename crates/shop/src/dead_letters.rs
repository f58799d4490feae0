//! `shop dead-letters`: what consumers could not process, with the reason, and the tools to
//! send it back once the cause is fixed, or to drop it.

use crate::topology;
use anyhow::Context;
use clap::{Args, Subcommand};
use messaging::Naming;
use messaging::transport::DeadLetters;

#[derive(Subcommand)]
pub enum Action {
    /// Show dead letters with their reason, attempts and body.
    List(Target),
    /// Send dead letters back to the queue they failed on.
    Replay(Target),
    /// Delete dead letters.
    Purge(Target),
}

#[derive(Args)]
pub struct Target {
    /// One consumer as `service.consumer` (e.g. `inventory.saga`); every consumer if omitted.
    #[arg(long)]
    pub queue: Option<String>,
}

fn error_queues(naming: &Naming, target: &Target) -> anyhow::Result<Vec<String>> {
    let all = topology::consumers()
        .map(|(service, consumer)| (format!("{service}.{consumer}"), naming.queue(service, consumer)));
    let chosen: Vec<String> = match &target.queue {
        None => all.map(|(_, queue)| queue).collect(),
        Some(wanted) => {
            let queue = all.clone().find(|(short, queue)| short == wanted || queue == wanted).map(|(_, queue)| queue);
            let known: Vec<String> = all.map(|(short, _)| short).collect();
            vec![queue.with_context(|| format!("unknown queue {wanted:?}; one of: {}", known.join(", ")))?]
        }
    };
    Ok(chosen.into_iter().map(|queue| messaging::transport::error_queue_of(&queue)).collect())
}

/// Runs `action` on the error queues of the consumers named under `naming`, in `transport`
/// (RabbitMQ, or the embedded broker).
pub async fn run(action: Action, transport: &dyn DeadLetters, naming: &Naming) -> anyhow::Result<()> {
    match action {
        Action::List(target) => {
            let mut total = 0;
            for queue in error_queues(naming, &target)? {
                let letters = transport.list(&queue).await?;
                total += letters.len();
                for letter in letters {
                    println!(
                        "{queue}  {}  {}  attempts={}  failed_at={}\n  reason: {}\n  body: {}",
                        letter.message_type.as_deref().unwrap_or("?"),
                        letter.message_id.as_deref().unwrap_or("?"),
                        letter.attempts,
                        letter.failed_at.map(|at| at.to_rfc3339()).unwrap_or_else(|| "?".into()),
                        letter.reason,
                        letter.body,
                    );
                }
            }
            println!("{total} dead letter(s)");
        }
        Action::Replay(target) => {
            for queue in error_queues(naming, &target)? {
                let count = transport.replay(&queue).await?;
                println!("{queue}: replayed {count}");
            }
        }
        Action::Purge(target) => {
            for queue in error_queues(naming, &target)? {
                let count = transport.purge(&queue).await?;
                println!("{queue}: purged {count}");
            }
        }
    }
    Ok(())
}
