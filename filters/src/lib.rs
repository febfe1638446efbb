//! Skiff's request filters. Each concern is a tower `Layer` in its own module,
//! with its config beside it; `stack` is the one place that orders them.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod authz;
pub mod balance;
pub mod body;
pub mod circuit_breaker;
pub mod classify;
pub mod error;
pub mod fault;
pub mod headers;
pub mod outlier;
pub mod rate_limit;
pub mod retry;
pub mod route;
pub mod stack;
pub mod stats;
pub mod telemetry;
pub mod timeout;

pub use body::Body;
pub use error::{BoxError, ProxyError, Reason};

/// The boxed future of a layer that has to do asynchronous work of its own;
/// layers return it only on their configured path, so pass-through costs no
/// allocation.
pub type BoxFuture<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, BoxError>> + Send>>;
