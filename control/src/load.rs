//! Parse then validate, in one call: no unvalidated config escapes this module.
//! (Placeholder: the real implementation is being written.)
use std::path::Path;

use crate::model::Config;

/// One problem in a config, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
    }
}

/// Every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError { file: name.clone(), line: 0, column: 0, message: e.to_string() }])
    })?;
    load_str(&text, &name)
}

pub fn load_str(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    serde_saphyr::from_str(text).map_err(|e| {
        ConfigErrors(vec![ConfigError { file: file.to_owned(), line: 0, column: 0, message: e.to_string() }])
    })
}
