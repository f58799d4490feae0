//! Traces you can open: with span export on, the spans of one order reach an OTLP/HTTP collector
//! as one trace across both services, from the HTTP request through each in-process hand-off
//! (both services run in one process, as in `shop up`) to every consumer, each child naming a
//! parent that was exported.
//!
//! It installs the process's global subscriber, so it lives in its own test binary.

mod support;

use axum::body::Bytes;
use axum::extract::State;
use messaging::TraceParent;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use reqwest::StatusCode;
use shop::telemetry::{LogFormat, SpanExport};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{System, eventually};

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    /// The resource's `service.name`.
    service: String,
    name: String,
    kind: SpanKind,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

impl Received {
    fn attribute(&self, key: &str) -> &str {
        self.attributes.get(key).map(String::as_str).unwrap_or_default()
    }
}

type Collected = Arc<Mutex<Vec<Received>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter().map(|attribute| (attribute.key.clone(), text(attribute.value.as_ref()))).collect()
}

/// OTLP/HTTP with protobuf bodies, as a collector (Jaeger, say) receives it.
async fn receive(State(collected): State<Collected>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut collected = collected.lock().unwrap();
    for resource_spans in request.resource_spans {
        let resource = attributes(&resource_spans.resource.unwrap_or_default().attributes);
        for span in resource_spans.scope_spans.into_iter().flat_map(|scope| scope.spans) {
            collected.push(Received {
                service: resource.get("service.name").cloned().unwrap_or_default(),
                kind: span.kind(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                attributes: attributes(&span.attributes),
            });
        }
    }
    (StatusCode::OK, ExportTraceServiceResponse::default().encode_to_vec())
}

/// A collector on an ephemeral port; returns the URL spans are posted to.
async fn collector() -> (String, Collected) {
    let collected = Collected::default();
    let app = axum::Router::new().route("/v1/traces", axum::routing::post(receive)).with_state(collected.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, collected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spans_of_one_order_form_one_trace_across_both_services() {
    let (endpoint, collected) = collector().await;
    let export = SpanExport { traces_endpoint: Some(endpoint) };
    let telemetry = shop::telemetry::init(LogFormat::Text, Some(export)).expect("span export starts");
    let system = System::start().await;
    let kettle = system.product("Kettle", "24.90", 5).await;
    let mug = system.product("Mug", "4.50", 10).await;
    let order = system.new_order().await;
    for (product, quantity) in [(kettle, 2), (mug, 3)] {
        assert_eq!(system.add(&order, product, quantity).await.0, StatusCode::OK);
    }
    // The caller's span: the request continues its trace.
    let caller = TraceParent::new_root();
    let placed = system
        .http
        .post(system.order_url(&format!("/api/orders/{order}/place")))
        .header("traceparent", caller.to_string())
        .bearer_auth(&system.customer_token)
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), StatusCode::OK);
    let answered = TraceParent::parse(placed.headers()["traceparent"].to_str().unwrap()).unwrap();
    assert_eq!(system.settled(&order).await["status"], "confirmed");

    // Every step of the order, in the service it belongs to.
    let trace = caller.trace_id_hex();
    let steps = [
        ("order", "POST /api/orders/{id}/place"),
        ("order", "hand off order.placed.v1"),
        ("inventory", "saga order.placed.v1"),
        ("inventory", "hand off inventory.reserve-stock.v1"),
        ("inventory", "stock inventory.reserve-stock.v1"),
        ("inventory", "hand off inventory.stock-reserved.v1"),
        ("inventory", "saga inventory.stock-reserved.v1"),
        ("inventory", "hand off inventory.stock-reservation-completed.v1"),
        ("order", "reservations inventory.stock-reservation-completed.v1"),
    ];
    let mut spans: Vec<Received> = Vec::new();
    eventually(Duration::from_secs(30), "the span of every step is exported", async || {
        telemetry.flush().await;
        spans = collected.lock().unwrap().iter().filter(|span| span.trace_id == trace).cloned().collect();
        steps.iter().all(|(service, name)| spans.iter().any(|span| span.service == *service && span.name == *name))
    })
    .await;
    let everything = collected.lock().unwrap().clone();

    // One trace per order: every span about this order is in the trace its request started.
    let about_order: Vec<&Received> =
        everything.iter().filter(|span| span.attribute("correlation_id") == order.as_str()).collect();
    assert!(about_order.len() >= steps.len() - 1, "{about_order:#?}");
    for span in &about_order {
        assert_eq!(span.trace_id, trace, "{} left the order's trace", span.name);
    }
    // Both services, each span under the resource of the service it says it belongs to.
    let services: BTreeSet<&str> = spans.iter().map(|span| span.service.as_str()).collect();
    assert_eq!(services, BTreeSet::from(["inventory", "order"]));
    for span in &spans {
        assert_eq!(span.attribute("service"), span.service, "{span:#?}");
    }
    // Both stock commands reached the stock consumer.
    let stock = spans.iter().filter(|span| span.name == "stock inventory.reserve-stock.v1");
    assert_eq!(stock.count(), 2, "{spans:#?}");

    // Parent and child: the request continues the caller; every other span names an exported
    // span of the trace as its parent: a consumer the hand-off of its message, a hand-off the
    // span (request or consumer) that wrote the message.
    let by_id: HashMap<&str, &Received> = spans.iter().map(|span| (span.span_id.as_str(), span)).collect();
    let request = spans.iter().find(|span| span.kind == SpanKind::Server).expect("the request's span");
    assert_eq!(request.parent_span_id, format!("{:016x}", caller.span_id));
    assert_eq!(request.span_id, format!("{:016x}", answered.span_id), "the response names the request's span");
    for span in spans.iter().filter(|span| span.kind != SpanKind::Server) {
        let parent = by_id.get(span.parent_span_id.as_str());
        let parent = parent.unwrap_or_else(|| panic!("{} names a parent that was not exported: {span:#?}", span.name));
        match span.kind {
            SpanKind::Consumer => {
                assert_eq!(parent.kind, SpanKind::Producer, "{} follows {}", span.name, parent.name);
                assert_eq!(parent.attribute("message_type"), span.attribute("message_type"));
            }
            SpanKind::Producer => {
                assert!(
                    matches!(parent.kind, SpanKind::Server | SpanKind::Consumer),
                    "{} follows {}",
                    span.name,
                    parent.name
                );
            }
            other => panic!("unexpected {other:?} span {span:#?}"),
        }
    }

    // HTTP spans are named by their route template, never by the raw path.
    assert_eq!(request.attribute("http.request.method"), "POST");
    assert_eq!(request.attribute("http.route"), "/api/orders/{id}/place");
    assert_eq!(request.attribute("http.response.status_code"), "200");
    let requests: Vec<&Received> = everything.iter().filter(|span| span.kind == SpanKind::Server).collect();
    assert!(requests.len() > 5, "{requests:#?}");
    for span in requests {
        let expected = format!("{} {}", span.attribute("http.request.method"), span.attribute("http.route"));
        assert_eq!(span.name, expected, "{span:#?}");
        assert!(!span.name.contains(&order), "{span:#?}");
    }

    system.stop().await;
    telemetry.shutdown().await;
}
