//! Helpers shared by the end-to-end tests.

pub mod certs;
pub mod cluster;
pub mod gateway;
pub mod http;
