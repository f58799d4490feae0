use utoipa::Modify;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, ResponseBuilder};

/// An OpenAPI modifier: declares the `bearerAuth` scheme (HTTP bearer, JWT) and requires it,
/// with its 401 answer, on every operation under `/api/`, so none can be left out. (Which
/// operations answer 403 differs, so each declares that itself.)
pub struct BearerAuth;

/// The name of the security scheme in the documents.
const SCHEME: &str = "bearerAuth";

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some("A token from `shop token --customer <uuid>` or `shop token --admin`, or from the identity provider the services trust."))
            .build();
        openapi.components.get_or_insert_default().add_security_scheme(SCHEME, SecurityScheme::Http(scheme));
        let unauthenticated = ResponseBuilder::new()
            .description("No token, or an expired, malformed or wrongly signed one (with `WWW-Authenticate: Bearer`)")
            .content(
                "application/problem+json",
                ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
            )
            .build();
        for (path, item) in &mut openapi.paths.paths {
            if !path.starts_with("/api/") {
                continue;
            }
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                operation.security = Some(vec![SecurityRequirement::new(SCHEME, Vec::<String>::new())]);
                operation.responses.responses.insert("401".into(), unauthenticated.clone().into());
            }
        }
    }
}
