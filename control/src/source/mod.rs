//! Where configs come from after the first one. Each source publishes every
//! new version as an `Update`; the proxy applies the valid ones.

pub mod file;

use crate::{ConfigErrors, Snapshot};

/// A new version from a source: a validated snapshot to apply, or why the
/// source's new content was refused (the last good config stays).
#[derive(Debug)]
pub enum Update {
    /// Boxed: a config is large and updates are rare.
    Valid(Box<Snapshot>),
    Invalid(ConfigErrors),
}
