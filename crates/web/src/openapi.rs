use crate::extract::MAX_BODY_BYTES;
use crate::limits::RETRY_AFTER;
use utoipa::Modify;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::Response;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, OpenApi, Ref, ResponseBuilder};

/// An OpenAPI modifier: the answers every operation under `/api/` can give besides its own,
/// because the shared extractors and middleware give them. Each is added where the operation
/// does not declare it itself:
/// - 400 where there is anything to get wrong (path or query parameters, headers, a body);
/// - 413 and 415 where there is a body (too large, not JSON);
/// - 503 everywhere: too many requests in flight, a request too slow, a dependency down (with
///   `Retry-After` when waiting a moment helps).
///
/// Apply it after the operations' own responses (and after [`crate::auth::BearerAuth`], which
/// adds 401).
pub struct SharedResponses;

impl Modify for SharedResponses {
    fn modify(&self, openapi: &mut OpenApi) {
        for (path, item) in &mut openapi.paths.paths {
            if !path.starts_with("/api/") {
                continue;
            }
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                add_shared_responses(operation);
            }
        }
    }
}

fn add_shared_responses(operation: &mut Operation) {
    let has_body = operation.request_body.is_some();
    let has_parameters = operation.parameters.as_ref().is_some_and(|parameters| !parameters.is_empty());
    let mut add = |status: &str, response: Response| {
        operation.responses.responses.entry(status.to_owned()).or_insert_with(|| response.into());
    };
    if has_body || has_parameters {
        add("400", problem("Malformed or invalid input: the detail names the parameter, header or field"));
    }
    if has_body {
        add("413", problem(&format!("The body is larger than {MAX_BODY_BYTES} bytes")));
        add("415", problem("The body is not sent as `Content-Type: application/json`"));
    }
    add("503", service_unavailable());
}

fn problem(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
        )
        .build()
}

fn service_unavailable() -> Response {
    let retry_after = HeaderBuilder::new()
        .schema(Some(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0))))
        .description(Some(format!(
            "Seconds to wait before trying again ({} when the service is overloaded)",
            RETRY_AFTER.as_secs()
        )))
        .build();
    let mut response = problem(
        "Try again later: the service has too many requests in flight, the request took too long, or a \
         dependency (database, broker, the identity provider's keys) is out of reach",
    );
    response.headers.insert("Retry-After".to_owned(), retry_after.into());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, PathItem, PathsBuilder};
    use utoipa::openapi::request_body::RequestBodyBuilder;
    use utoipa::openapi::{OpenApiBuilder, ResponseBuilder};

    #[test]
    fn each_api_operation_declares_what_the_shared_parts_can_answer() {
        let with_body = OperationBuilder::new()
            .request_body(Some(RequestBodyBuilder::new().build()))
            .response("400", ResponseBuilder::new().description("its own words").build())
            .build();
        let with_parameter = OperationBuilder::new().parameter(ParameterBuilder::new().name("id").build()).build();
        let mut document = OpenApiBuilder::new()
            .paths(
                PathsBuilder::new()
                    .path("/api/things", PathItem::new(HttpMethod::Post, with_body))
                    .path("/api/things/{id}", PathItem::new(HttpMethod::Get, with_parameter))
                    .path("/api/all", PathItem::new(HttpMethod::Get, OperationBuilder::new().build()))
                    .path("/health/live", PathItem::new(HttpMethod::Get, OperationBuilder::new().build())),
            )
            .build();
        Modify::modify(&SharedResponses, &mut document);
        let document = serde_json::to_value(&document).unwrap();
        let statuses = |path: &str, method: &str| -> Vec<String> {
            document["paths"][path][method]["responses"]
                .as_object()
                .map(|r| r.keys().cloned().collect())
                .unwrap_or_default()
        };
        assert_eq!(statuses("/api/things", "post"), ["400", "413", "415", "503"]);
        assert_eq!(document["paths"]["/api/things"]["post"]["responses"]["400"]["description"], "its own words");
        assert_eq!(statuses("/api/things/{id}", "get"), ["400", "503"]);
        assert_eq!(statuses("/api/all", "get"), ["503"]);
        assert!(document["paths"]["/api/all"]["get"]["responses"]["503"]["headers"]["Retry-After"].is_object());
        assert!(statuses("/health/live", "get").is_empty());
    }
}
