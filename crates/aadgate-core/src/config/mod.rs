//! Configuration: the TOML file model, its validation, and the runtime model the gateway serves
//! from. See `docs/configuration.md` for every key.

mod cloud;
mod compile;
pub mod duration;
mod error;
pub mod file;
mod model;
pub mod redis_url;
mod route;
pub use cloud::Cloud;

pub use compile::{
    is_guid, load, load_str, load_tenant_file, TenantFileError, DEFAULT_AUTHORITY,
    DEFAULT_CLOCK_SKEW, DEFAULT_ISSUERS, DEFAULT_MAX_TOKEN_BYTES, DEFAULT_MIN_REFETCH_INTERVAL,
    DEFAULT_ONBOARDING_PREFIX, DEFAULT_REFRESH_INTERVAL, DEFAULT_TOKEN_CACHE_SIZE, STORE_URL_ENV,
};
pub use duration::{parse_duration, Duration, DurationError};
pub use error::{ConfigError, ConfigErrors, Reporter};
pub use model::*;
pub use redis_url::RedisTarget;
