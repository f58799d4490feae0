//! The storefront: a web application for people, in front of the order and inventory APIs
//! (backend-for-frontend). Customers sign up, browse, fill a cart (a draft order), check out
//! and watch their order decided live; operators manage products and orders and watch the
//! system's queues. It keeps only its own accounts; everything else it asks the services,
//! with tokens it signs for the person it acts for.
//!
//! - `domain`: accounts (email, password rules, role).
//! - `application`: signing up and in, the operator's account, and the account store port.
//! - `infrastructure`: the PostgreSQL account store, the services' API client, secret files.
//! - `http`: the pages, sessions and CSRF checks, templates.

pub mod application;
pub mod domain;
pub mod http;
pub mod infrastructure;
