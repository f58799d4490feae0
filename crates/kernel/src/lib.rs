//! The shared kernel: value objects whose meaning both bounded contexts agree on.
//! Each constructor enforces the type's rule, so a value that exists is valid; the values a
//! client sends deserialize only when valid, and (feature `openapi`) describe their rules to
//! API documents.

#[cfg(feature = "openapi")]
mod openapi;
mod text;

pub use text::{Chars, Text, TextError, TextKind};

use chrono::{DateTime, SubsecRound, Utc};
use rust_decimal::Decimal;
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// The current time, to the microsecond: the precision the databases keep, so that a moment
/// reads back exactly as it was recorded.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// An amount of money in the shop's single currency: exact, never negative, whole cents, at
/// most [`Money::MAX`] (what the stores' `numeric(16, 2)` columns hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(Decimal);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("an amount of money cannot be negative (got {0})")]
    Negative(Decimal),
    #[error("an amount of money has at most 2 decimal places (got {0})")]
    TooPrecise(Decimal),
    #[error("not a decimal amount such as \"19.90\": {0:?}")]
    NotANumber(String),
    #[error("an amount of money is at most {max} (got {0})", max = Money::MAX)]
    TooLarge(Decimal),
    #[error("the amount would exceed {max}", max = Money::MAX)]
    Overflow,
}

impl Money {
    pub const ZERO: Money = Money(Decimal::ZERO);
    /// The largest amount: 14 digits before the point, 2 after.
    pub const MAX: Money = Money(Decimal::from_parts(1_874_919_423, 2_328_306, 0, false, 2));

    pub fn new(amount: Decimal) -> Result<Self, MoneyError> {
        if amount.is_sign_negative() && !amount.is_zero() {
            return Err(MoneyError::Negative(amount));
        }
        if amount.normalize().scale() > 2 {
            return Err(MoneyError::TooPrecise(amount));
        }
        if amount > Self::MAX.0 {
            return Err(MoneyError::TooLarge(amount));
        }
        Ok(Self(amount.round_dp(2).normalize().abs()))
    }

    pub fn amount(&self) -> Decimal {
        self.0
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        Self::bounded(self.0.checked_add(other.0))
    }

    pub fn times(self, quantity: Quantity) -> Result<Money, MoneyError> {
        Self::bounded(self.0.checked_mul(Decimal::from(quantity.get())))
    }

    fn bounded(amount: Option<Decimal>) -> Result<Money, MoneyError> {
        amount.filter(|amount| *amount <= Self::MAX.0).map(Money).ok_or(MoneyError::Overflow)
    }
}

impl FromStr for Money {
    type Err = MoneyError;

    /// Digits, optionally a point and more digits: `19.90`, `3`, `0.5`. Nothing else (no sign,
    /// exponent, separators or spaces), so that the syntax is the one the API documents state.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let not_a_number = || MoneyError::NotANumber(text.to_owned());
        let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
        let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || !digits(fraction) {
            return Err(not_a_number());
        }
        Self::new(Decimal::from_str_exact(text).map_err(|_| not_a_number())?)
    }
}

impl<'de> serde::Deserialize<'de> for Money {
    /// From a string in the syntax of [`FromStr`]: JSON numbers are not exact.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Money {
    /// Always two decimals: `19.90`, `3.00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut amount = self.0;
        amount.rescale(2);
        write!(f, "{amount}")
    }
}

/// A positive count of units, bounded so that totals cannot overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(u32);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("a quantity must be at least 1 (got {0})")]
    NotPositive(i64),
    #[error("a quantity is at most {max} (got {0})", max = Quantity::MAX)]
    TooLarge(i64),
}

impl Quantity {
    pub const MAX: u32 = 1_000_000;

    pub fn new(units: i64) -> Result<Self, QuantityError> {
        match units {
            ..=0 => Err(QuantityError::NotPositive(units)),
            1..=1_000_000 => Ok(Self(units as u32)),
            _ => Err(QuantityError::TooLarge(units)),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }

    pub fn checked_add(self, other: Quantity) -> Result<Quantity, QuantityError> {
        Self::new(i64::from(self.0) + i64::from(other.0))
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> serde::Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::new(i64::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// A product of the catalog: a positive integer assigned by inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProductId(i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a product id is a positive integer (got {0})")]
pub struct InvalidProductId(pub i64);

impl ProductId {
    pub fn new(id: i64) -> Result<Self, InvalidProductId> {
        if id > 0 { Ok(Self(id)) } else { Err(InvalidProductId(id)) }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for ProductId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> serde::Deserialize<'de> for ProductId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::new(i64::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Uuid);

        impl $name {
            pub fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// An order: a UUIDv7, so ids sort by creation time.
    OrderId
);
uuid_id!(
    /// A customer, as known to the (external) customer system.
    CustomerId
);

impl OrderId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(text: &str) -> Money {
        text.parse().unwrap()
    }

    #[test]
    fn money_is_exact_and_written_with_two_decimals() {
        let total = money("0.10").checked_add(money("0.20")).unwrap();
        assert_eq!(total, money("0.3"));
        assert_eq!(total.to_string(), "0.30");
        assert_eq!(money("19.99").times(Quantity::new(3).unwrap()).unwrap().to_string(), "59.97");
    }

    #[test]
    fn money_refuses_negative_and_sub_cent_amounts_and_text() {
        assert_eq!(Money::new(Decimal::NEGATIVE_ONE), Err(MoneyError::Negative(Decimal::NEGATIVE_ONE)));
        assert!(matches!("1.999".parse::<Money>(), Err(MoneyError::TooPrecise(_))));
        for text in ["ten", "-1", "+1", " 1", "1_000", "1e3", ".5", "1.", "", "1.2.3", "١"] {
            assert!(matches!(text.parse::<Money>(), Err(MoneyError::NotANumber(_))), "{text:?}");
        }
        assert_eq!(money("1.500"), money("1.5"), "trailing zeros are not precision");
        assert_eq!(money("007.5"), money("7.50"));
        assert!(money("0").is_zero());
    }

    #[test]
    fn money_stays_within_what_the_stores_hold() {
        assert_eq!(Money::MAX.to_string(), "99999999999999.99");
        assert_eq!(money("99999999999999.99"), Money::MAX);
        assert!(matches!("100000000000000".parse::<Money>(), Err(MoneyError::TooLarge(_))));
        assert!(matches!("99999999999999999999999999999999999".parse::<Money>(), Err(MoneyError::NotANumber(_))));
        assert_eq!(Money::MAX.checked_add(money("0.01")), Err(MoneyError::Overflow));
        assert_eq!(Money::MAX.times(Quantity::new(2).unwrap()), Err(MoneyError::Overflow));
        assert_eq!(serde_json::from_str::<Money>(r#""2.50""#).unwrap(), money("2.5"));
        assert!(serde_json::from_str::<Money>("2.5").is_err(), "a JSON number is not exact");
    }

    #[test]
    fn quantities_are_positive_and_bounded() {
        assert_eq!(Quantity::new(0), Err(QuantityError::NotPositive(0)));
        assert_eq!(Quantity::new(-3), Err(QuantityError::NotPositive(-3)));
        assert_eq!(Quantity::new(1_000_001), Err(QuantityError::TooLarge(1_000_001)));
        let most = Quantity::new(1_000_000).unwrap();
        assert!(most.checked_add(Quantity::new(1).unwrap()).is_err());
        assert_eq!(Quantity::new(2).unwrap().checked_add(Quantity::new(3).unwrap()).unwrap().get(), 5);
    }

    #[test]
    fn quantities_and_product_ids_deserialize_only_when_valid() {
        assert_eq!(serde_json::from_str::<Quantity>("3").unwrap().get(), 3);
        let zero = serde_json::from_str::<Quantity>("0").unwrap_err().to_string();
        assert!(zero.starts_with("a quantity must be at least 1 (got 0)"), "{zero}");
        assert!(serde_json::from_str::<Quantity>("1.5").is_err());
        assert!(serde_json::from_str::<Quantity>("1000001").is_err());
        assert_eq!(serde_json::from_str::<ProductId>("7").unwrap().get(), 7);
        assert!(serde_json::from_str::<ProductId>("-7").is_err());
    }

    #[test]
    fn product_ids_are_positive() {
        assert!(ProductId::new(0).is_err());
        assert!(ProductId::new(-1).is_err());
        assert_eq!(ProductId::new(42).unwrap().get(), 42);
    }
}
