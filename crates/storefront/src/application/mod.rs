//! What the storefront decides itself: accounts (sign up, sign in, the operator's account from
//! configuration). Orders and products are the services' business: the pages call their APIs.

mod accounts;
mod passwords;

pub use accounts::{AccountStore, Accounts, AdminBootstrap, AppError, InsertError, StoreError};
