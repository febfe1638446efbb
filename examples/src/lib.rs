//! Demo backends for Skiff.
//!
//! Two small services that sit behind the proxy in `skiff demo` and in the
//! integration tests, and that also run on their own (see `src/bin/`):
//!
//! * [`http_service`]: an HTTP/1.1 + h2c JSON service that describes each
//!   request it gets, echoes bodies, answers chosen statuses and can be made
//!   flaky, so retries, balancing and header rewriting are visible.
//! * [`greeter`]: a tonic gRPC service covering unary, server-streaming,
//!   client-streaming and bidirectional calls, with errors on request.
//!
//! [`demo`] wires them to the fixed addresses `examples/demo/skiff.yaml` expects.
#![forbid(unsafe_code)]

/// Code generated from `proto/greeter.proto` (package `skiff.demo.v1`).
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used)]
    tonic::include_proto!("skiff.demo.v1");
}

pub mod demo;
pub mod greeter;
pub mod http_service;
