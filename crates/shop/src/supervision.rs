//! Background tasks under watch. A service's consumers and relay run until shutdown; one that
//! ends before (it returned, or panicked outside a handler: handler panics are caught per
//! message) leaves a queue unread or an outbox unpublished. The supervisor notices: it logs why,
//! counts it (`background_tasks_stopped_total{service, task}`) and keeps `/health/ready` at 503
//! naming the task until the process is restarted.
//!
//! It does not restart the task in place: such an end is a defect in the runtime, whose state
//! is suspect, and restarting it in a loop would hide it. A restart of the process (which an
//! orchestrator does when the instance stays unready) starts from a clean state, while the
//! other instances keep consuming meanwhile.

use async_trait::async_trait;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use web::ReadinessCheck;

/// Watches the background tasks of one service.
pub struct Supervisor {
    service: &'static str,
    stopped: Arc<Mutex<Vec<String>>>,
}

impl Supervisor {
    pub fn new(service: &'static str) -> Self {
        Self { service, stopped: Arc::default() }
    }

    /// Runs `task`, named `name` in logs, metrics and readiness. Its end counts as a stop unless
    /// `stop` was cancelled first (the shutdown it was told about). The handle resolves once it
    /// ended.
    pub fn spawn(
        &self,
        name: String,
        stop: CancellationToken,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        let service = self.service;
        let stopped = self.stopped.clone();
        let counter = metrics::counter!("background_tasks_stopped_total", "service" => service, "task" => name.clone());
        counter.increment(0); // the series exists (at 0) from the start
        let running = tokio::spawn(task);
        tokio::spawn(async move {
            let ended = running.await;
            let cause = match ended {
                Ok(()) if stop.is_cancelled() => return,
                Ok(()) => "it returned".to_owned(),
                Err(crash) if crash.is_panic() => {
                    format!("it panicked: {}", messaging::panic_message(crash.into_panic().as_ref()))
                }
                Err(_) => "it was cancelled".to_owned(),
            };
            if stop.is_cancelled() {
                tracing::warn!(service, task = %name, cause, "background task failed while stopping");
                return;
            }
            tracing::error!(
                service,
                task = %name,
                cause,
                "background task stopped before shutdown; /health/ready answers 503 until the process is restarted"
            );
            counter.increment(1);
            stopped.lock().unwrap_or_else(PoisonError::into_inner).push(name);
        })
    }

    /// The readiness check that fails, naming them, once any task stopped.
    pub fn readiness(&self) -> TasksCheck {
        TasksCheck { stopped: self.stopped.clone() }
    }
}

/// `/health/ready`'s `tasks` entry: `up`, or `stopped: <task>, <task>`.
pub struct TasksCheck {
    stopped: Arc<Mutex<Vec<String>>>,
}

impl TasksCheck {
    fn stopped(&self) -> Vec<String> {
        self.stopped.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[async_trait]
impl ReadinessCheck for TasksCheck {
    fn name(&self) -> &'static str {
        "tasks"
    }

    async fn is_ready(&self) -> bool {
        self.stopped().is_empty()
    }

    fn reason(&self) -> Option<String> {
        let stopped = self.stopped();
        (!stopped.is_empty()).then(|| format!("stopped: {}", stopped.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn settled(check: &TasksCheck) -> Option<String> {
        for _ in 0..500 {
            if let Some(reason) = check.reason() {
                return Some(reason);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        None
    }

    #[tokio::test]
    async fn a_task_that_returns_or_panics_before_shutdown_is_named() {
        let supervisor = Supervisor::new("test");
        let check = supervisor.readiness();
        let stop = CancellationToken::new();
        supervisor.spawn("relay".into(), stop.clone(), std::future::pending());
        supervisor.spawn("consumer saga".into(), stop.clone(), async {});
        assert_eq!(settled(&check).await.as_deref(), Some("stopped: consumer saga"));
        assert!(!check.is_ready().await);
        supervisor.spawn("consumer stock".into(), stop.clone(), async { panic!("a defect") });
        messaging::testing::eventually(Duration::from_secs(5), "both are named", async || {
            check.reason().as_deref() == Some("stopped: consumer saga, consumer stock")
        })
        .await;
    }

    #[tokio::test]
    async fn tasks_that_end_at_shutdown_are_no_failure() {
        let supervisor = Supervisor::new("test");
        let check = supervisor.readiness();
        let stop = CancellationToken::new();
        let told = stop.clone();
        let relay = supervisor.spawn("relay".into(), stop.clone(), async move { told.cancelled().await });
        assert!(check.is_ready().await);
        stop.cancel();
        relay.await.unwrap();
        assert!(check.is_ready().await);
        assert_eq!(check.reason(), None);
    }
}
