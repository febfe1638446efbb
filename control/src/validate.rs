//! Cross-field checks (placeholder).
