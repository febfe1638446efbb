//! Skiff's configuration: the YAML model, loading with validation, and the
//! immutable snapshots that the proxy swaps atomically while traffic flows.
#![forbid(unsafe_code)]

pub mod duration;
mod env;
pub mod load;
mod locate;
pub mod model;
pub mod server;
mod shadow;
pub mod source;
pub mod spiffe;
pub mod validate;
pub mod xds;

pub use env::Vars;

/// The config file's JSON Schema, generated from the model's types and doc
/// comments: the source of `docs/reference/config.md` and of
/// `docs/reference/skiff.schema.json`, which editors use for completion.
pub fn json_schema() -> serde_json::Value {
    schemars::schema_for!(Config).to_value()
}
pub use load::{
    ConfigError, ConfigErrors, Fragment, load_file, load_file_with, load_str, load_str_with,
};
pub use model::Config;
pub use validate::{Invalid, validate};

/// One applied configuration. Immutable: a new config is a new `Snapshot`,
/// published whole, so a request never sees half of an update.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Increases by one with every applied config.
    pub version: u64,
    /// Where it came from: a file path, or `control:ADDR`.
    pub source: String,
    pub config: Config,
}

/// An error and its causes on one line, for logs (never for replies): a
/// connect error's "transport error" says nothing until its source
/// (refused, timed out) is read.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}
