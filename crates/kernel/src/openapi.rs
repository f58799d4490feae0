//! How the value objects clients send look in OpenAPI documents: the schemas carry the same
//! limits the constructors enforce, taken from the same constants, so a document cannot promise
//! less (or more) than the server checks.

use crate::{Money, ProductId, Quantity, Text, TextKind};
use std::borrow::Cow;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

impl<K: TextKind> PartialSchema for Text<K> {
    fn schema() -> RefOr<Schema> {
        let blank = if K::MAY_BE_EMPTY { "may be blank" } else { "must not be blank" };
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(usize::from(!K::MAY_BE_EMPTY)))
            .max_length(Some(K::MAX_CHARS))
            .pattern(Some(K::CHARS.pattern()))
            .description(Some(format!(
                "{}: {}, at most {} characters; surrounding whitespace is trimmed, and it {blank}.",
                capitalized(K::WHAT),
                K::CHARS.describe(),
                K::MAX_CHARS,
            )))
            .into()
    }
}

impl<K: TextKind> ToSchema for Text<K> {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed(K::SCHEMA_NAME)
    }
}

impl PartialSchema for Quantity {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
            .minimum(Some(1))
            .maximum(Some(Quantity::MAX))
            .description(Some("A number of units"))
            .into()
    }
}

impl ToSchema for Quantity {}

impl PartialSchema for ProductId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(1))
            .description(Some("A product's id, a positive integer assigned by inventory"))
            .into()
    }
}

impl ToSchema for ProductId {}

impl PartialSchema for Money {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(r"^[0-9]+(\.[0-9]+)?$"))
            .description(Some(format!(
                "An exact amount of money as a decimal string, at most 2 decimal places and at most {}",
                Money::MAX
            )))
            .examples(["19.90"])
            .into()
    }
}

impl ToSchema for Money {}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}
