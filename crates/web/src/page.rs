use std::borrow::Cow;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

/// How many items a page of a list holds: 1 to `MAX`, `DEFAULT` when the client does not say.
/// It deserializes only in range, and its schema states the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize<const MAX: u32, const DEFAULT: u32>(u32);

impl<const MAX: u32, const DEFAULT: u32> PageSize<MAX, DEFAULT> {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl<const MAX: u32, const DEFAULT: u32> Default for PageSize<MAX, DEFAULT> {
    fn default() -> Self {
        Self(DEFAULT)
    }
}

impl<'de, const MAX: u32, const DEFAULT: u32> serde::Deserialize<'de> for PageSize<MAX, DEFAULT> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let size = u32::deserialize(deserializer)?;
        if (1..=MAX).contains(&size) {
            Ok(Self(size))
        } else {
            Err(serde::de::Error::custom(format!("must be 1 to {MAX} (got {size})")))
        }
    }
}

impl<const MAX: u32, const DEFAULT: u32> PartialSchema for PageSize<MAX, DEFAULT> {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
            .minimum(Some(1))
            .maximum(Some(MAX))
            .default(Some(DEFAULT.into()))
            .description(Some("Items per page"))
            .into()
    }
}

impl<const MAX: u32, const DEFAULT: u32> ToSchema for PageSize<MAX, DEFAULT> {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("PageSize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_size_is_in_range() {
        type Size = PageSize<200, 50>;
        assert_eq!(serde_json::from_str::<Size>("200").unwrap().get(), 200);
        assert_eq!(serde_json::from_str::<Size>("0").unwrap_err().to_string(), "must be 1 to 200 (got 0)");
        assert!(serde_json::from_str::<Size>("201").is_err());
        assert_eq!(Size::default().get(), 50);
    }
}
