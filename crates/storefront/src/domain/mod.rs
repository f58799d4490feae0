//! Accounts: who may sign in to the storefront, as a customer or an operator. No I/O here.

mod account;

pub use account::{Account, AccountError, Email, Password, Role};
