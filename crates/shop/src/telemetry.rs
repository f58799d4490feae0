//! Logs and traces (tracing) and metrics (Prometheus) for the whole process.
//!
//! Logs go to stderr as text or JSON at `RUST_LOG`. With `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, the spans also go out over OTLP/HTTP (protobuf):
//! the request spans of the APIs, the relays' publish spans and the consumers' spans, each the
//! child of the span that caused it (see `messaging::trace`), so that one order is one trace.

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Info for the shop, warnings for the libraries: for logs without `RUST_LOG`, and for spans.
const DEFAULT_FILTER: &str = "info,sqlx=warn,lapin=warn";

/// The services whose spans are exported as their own OpenTelemetry service.
const SERVICES: [&str; 2] = [order::application::SERVICE, inventory::application::SERVICE];

/// Where spans are exported: an OTLP/HTTP collector such as Jaeger.
#[derive(Debug, Clone, Default)]
pub struct SpanExport {
    /// The full URL spans are posted to; `None` leaves it to the standard variables
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT` plus `/v1/traces`, or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
    pub traces_endpoint: Option<String>,
}

impl SpanExport {
    /// Export configured by the standard OpenTelemetry variables, if they ask for it.
    pub fn from_env() -> Option<Self> {
        let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
        let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|value| value.eq_ignore_ascii_case("true"));
        let asked = set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        (asked && !disabled).then(Self::default)
    }

    fn exporter(&self, resource: Resource) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
        let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http().with_protocol(Protocol::HttpBinary);
        if let Some(endpoint) = &self.traces_endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let mut exporter = builder.build().context("cannot export spans (check OTEL_EXPORTER_OTLP_ENDPOINT)")?;
        exporter.set_resource(&resource);
        Ok(exporter)
    }

    fn tracer_provider(&self) -> anyhow::Result<SdkTracerProvider> {
        let services = SERVICES
            .into_iter()
            .map(|service| Ok((service, self.exporter(resource(Some(service)))?)))
            .collect::<anyhow::Result<_>>()?;
        let exporter = PerService { services, others: self.exporter(resource(None))? };
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource(None))
            // Every trace is recorded: the traceparent of a message does not carry the sampled
            // flag, so a sampling decision could not follow an order from service to service.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .build())
    }
}

/// `service.name` is the service a span belongs to, even when one process runs both (Jaeger
/// lists and colours spans by it); `OTEL_SERVICE_NAME` (default `shop`) names the system: the
/// `service.namespace` of the services, and the service of any span that belongs to neither.
fn resource(service: Option<&'static str>) -> Resource {
    let system = std::env::var("OTEL_SERVICE_NAME").ok().filter(|name| !name.is_empty());
    let system = system.unwrap_or_else(|| "shop".to_owned());
    match service {
        Some(service) => {
            Resource::builder().with_service_name(service).with_attribute(KeyValue::new("service.namespace", system))
        }
        None => Resource::builder().with_service_name(system),
    }
    .build()
}

/// Exports each span under the resource of the service named by its `service` attribute.
#[derive(Debug)]
struct PerService {
    services: Vec<(&'static str, opentelemetry_otlp::SpanExporter)>,
    others: opentelemetry_otlp::SpanExporter,
}

impl PerService {
    /// The services' exporters in order, then the one for other spans.
    fn exporters(&self) -> impl Iterator<Item = &opentelemetry_otlp::SpanExporter> {
        self.services.iter().map(|(_, exporter)| exporter).chain([&self.others])
    }
}

impl SpanExporter for PerService {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut groups: Vec<Vec<SpanData>> = vec![Vec::new(); self.services.len() + 1];
        for span in batch {
            let service = span.attributes.iter().find(|attribute| attribute.key.as_str() == "service");
            let service = service.map(|attribute| attribute.value.as_str());
            let group = self.services.iter().position(|(name, _)| service.as_deref() == Some(*name));
            groups[group.unwrap_or(self.services.len())].push(span);
        }
        // Each group is tried; the first failure is reported.
        let mut outcome = Ok(());
        for (exporter, group) in self.exporters().zip(groups) {
            if !group.is_empty() {
                outcome = outcome.and(exporter.export(group).await);
            }
        }
        outcome
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let mut outcome = Ok(());
        for exporter in self.exporters() {
            outcome = outcome.and(exporter.shutdown_with_timeout(timeout));
        }
        outcome
    }

    fn set_resource(&mut self, resource: &Resource) {
        // The services keep theirs.
        self.others.set_resource(resource);
    }
}

/// The process's logging and tracing; [`Telemetry::shutdown`] exports the spans still buffered.
#[must_use = "shut it down at exit, or buffered spans are lost"]
pub struct Telemetry {
    spans: Option<SdkTracerProvider>,
}

/// Logs to stderr at `RUST_LOG` (default: info for the shop, warnings for libraries) and, with
/// `export`, every span at info and above to an OTLP/HTTP collector.
pub fn init(format: LogFormat, export: Option<SpanExport>) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    let spans = export.as_ref().map(SpanExport::tracer_provider).transpose()?;
    let otel = spans.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("shop"))
            .with_threads(false)
            .with_filter(EnvFilter::new(DEFAULT_FILTER))
    });
    let installed = tracing_subscriber::registry().with(logs.with_filter(filter)).with(otel).try_init();
    if installed.is_err() && spans.is_some() {
        anyhow::bail!("cannot export spans: another tracing subscriber is already installed");
    }
    Ok(Telemetry { spans })
}

impl Telemetry {
    /// Exports the spans ended so far, once the collector answered or timed out.
    pub async fn flush(&self) {
        let Some(provider) = self.spans.clone() else { return };
        // The exporter blocks on its HTTP client: not on a runtime thread.
        if let Ok(Err(error)) = tokio::task::spawn_blocking(move || provider.force_flush()).await {
            tracing::warn!(%error, "could not export spans");
        }
    }

    /// Exports what is still buffered and stops exporting.
    pub async fn shutdown(self) {
        let Some(provider) = self.spans else { return };
        if let Ok(Err(error)) = tokio::task::spawn_blocking(move || provider.shutdown()).await {
            eprintln!("could not export the last spans: {error}");
        }
    }
}

/// Installs the process-wide Prometheus recorder and keeps it tidy.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}
