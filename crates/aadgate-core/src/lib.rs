//! aadgate-core: the decision of the aadgate gateway — configuration, signing keys, the token
//! validation pipeline with its hooks, token exchange, metrics, request-target rules and the
//! tower layer — without the transport. The `aadgate` binary puts it behind pingora; an
//! axum/hyper application puts it in front of its handlers with `layer::AuthLayer`.
//!
//! Features (all on by default): `tower` (the [`layer`] module), `axum` (a `Principal` handler
//! argument; implies `tower`), `cel` (validators and tenant hooks written in CEL).
#![forbid(unsafe_code)]

pub mod admission;
pub mod auth;
pub mod certs;
pub mod clock;
pub mod config;
pub mod exchange;
pub mod explain;
pub mod jwks;
#[cfg(feature = "tower")]
pub mod layer;
pub mod metrics;
pub mod onboarding;
pub mod ratelimit;
pub mod reason;
pub mod registry;
pub mod request_id;
pub mod routing;
pub mod runtime;
pub mod singleflight;
pub mod store;
pub mod target;
