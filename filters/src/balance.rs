//! Load balancing over a cluster's endpoints (issue "Filter chain").
//!
//! The markers below are how the retry layer and the upstream talk about
//! endpoints without knowing each other: the upstream stamps every response
//! with `ServedBy`, and every failure with `ProxyError::at_endpoint`; the
//! retry layer asks the next attempt to `Avoid` the endpoint that failed.

/// Response extension: the index (in its cluster) of the endpoint that answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServedBy(pub usize);

/// Request extension: don't pick this endpoint if another one is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Avoid(pub usize);
