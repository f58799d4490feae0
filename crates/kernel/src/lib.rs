//! The shared kernel: value objects whose meaning both bounded contexts agree on.
//! Each constructor enforces the type's rule, so a value that exists is valid.

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

/// An amount of money in the shop's single currency: exact, never negative, whole cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(Decimal);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("an amount of money cannot be negative (got {0})")]
    Negative(Decimal),
    #[error("an amount of money has at most 2 decimal places (got {0})")]
    TooPrecise(Decimal),
    #[error("not a decimal amount: {0:?}")]
    NotANumber(String),
    #[error("amount too large")]
    Overflow,
}

impl Money {
    pub const ZERO: Money = Money(Decimal::ZERO);

    pub fn new(amount: Decimal) -> Result<Self, MoneyError> {
        if amount.is_sign_negative() && !amount.is_zero() {
            return Err(MoneyError::Negative(amount));
        }
        if amount.normalize().scale() > 2 {
            return Err(MoneyError::TooPrecise(amount));
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
        self.0.checked_add(other.0).map(Money).ok_or(MoneyError::Overflow)
    }

    pub fn times(self, quantity: Quantity) -> Result<Money, MoneyError> {
        self.0.checked_mul(Decimal::from(quantity.get())).map(Money).ok_or(MoneyError::Overflow)
    }
}

impl FromStr for Money {
    type Err = MoneyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let amount = Decimal::from_str_exact(text.trim()).map_err(|_| MoneyError::NotANumber(text.to_owned()))?;
        Self::new(amount)
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
        assert_eq!("-1".parse::<Money>(), Err(MoneyError::Negative(Decimal::NEGATIVE_ONE)));
        assert!(matches!("1.999".parse::<Money>(), Err(MoneyError::TooPrecise(_))));
        assert!(matches!("ten".parse::<Money>(), Err(MoneyError::NotANumber(_))));
        assert_eq!(money("1.500"), money("1.5"), "trailing zeros are not precision");
        assert!(money("0").is_zero());
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
    fn product_ids_are_positive() {
        assert!(ProductId::new(0).is_err());
        assert!(ProductId::new(-1).is_err());
        assert_eq!(ProductId::new(42).unwrap().get(), 42);
    }
}
