//! Test tooling for a running shop, in its own crate so that the services never link it:
//! [`load`] drives orders through the HTTP APIs and checks the invariants afterwards, [`chaos`]
//! runs the services as processes and injects faults under that load.

pub mod chaos;
pub mod load;
pub mod proxy;
