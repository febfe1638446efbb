//! The log level, changeable while Skiff runs (`POST /logging?level=...` on
//! the admin port). The CLI installs the hook when it sets up logging; a
//! proxy built in-process (tests, embedders) has none, and the endpoint
//! says so.

use std::sync::OnceLock;

type Reload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static RELOAD: OnceLock<Reload> = OnceLock::new();

/// Installs how to change the level; only the first call counts.
pub fn install(reload: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static) {
    let _ = RELOAD.set(Box::new(reload));
}

/// Why a level could not be set.
#[derive(Debug, thiserror::Error)]
pub enum LevelError {
    #[error("this process's logging cannot be changed at runtime")]
    NotInstalled,
    #[error("{0}")]
    Invalid(String),
}

/// Sets the tracing filter (`debug`, `skiff=debug,hyper=info`, ...).
pub fn set_level(level: &str) -> Result<(), LevelError> {
    let reload = RELOAD.get().ok_or(LevelError::NotInstalled)?;
    reload(level).map_err(LevelError::Invalid)
}
