//! aadgate: a reverse-proxy authentication gateway for HTTP APIs protected by Azure AD /
//! Microsoft Entra ID, and the same validation pipeline as a library.
#![forbid(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod exchange;
pub mod explain;
pub mod jwks;
pub mod layer;
pub mod metrics;
pub mod routing;
pub mod server;
