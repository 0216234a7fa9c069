//! aadgate: a reverse-proxy authentication gateway for HTTP APIs protected by Azure AD /
//! Microsoft Entra ID, and the same validation pipeline as a library.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod exchange;
pub mod jwks;
pub mod metrics;
