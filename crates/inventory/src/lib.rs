pub mod application;
pub mod domain;
pub mod http;
pub mod infrastructure;
