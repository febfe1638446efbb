//! `skiff check -c FILE`: load and validate, print, exit 0 or 1.

use std::path::Path;
use std::process::ExitCode;

/// A one-line summary on stdout when valid (warnings go to stderr, so the
/// summary stays one line for scripts); one line per problem when not.
pub(super) fn check(path: &Path) -> ExitCode {
    match skiff_control::load_file(path) {
        Ok(c) => {
            let routes: usize = c.routes.values().map(Vec::len).sum();
            println!(
                "{}: valid: {} listener(s), {} route table(s) with {} route(s), {} cluster(s)",
                path.display(),
                c.listeners.len(),
                c.routes.len(),
                routes,
                c.clusters.len()
            );
            for warning in c.warnings() {
                eprintln!("{}: warning: {warning}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                println!("{e}");
            }
            ExitCode::FAILURE
        }
    }
}
