//! Skiff's runtime: listeners, protocol handling, upstream pools and admin,
//! around the filters in `skiff-filters`. `app::build` runs the real proxy
//! in-process so that tests drive exactly what `skiff run` runs.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod error_log;
pub mod h1;
pub mod health;
pub mod k8s;
pub mod listener;
pub mod logging;
pub mod memory;
pub mod overload;
pub mod panics;
pub mod protocol;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod tls;
pub mod trace;
pub mod upstream;

pub use app::{Bound, BuildError, build, build_from};
