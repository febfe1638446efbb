//! The directory as `skiff control` reads it, with real files.

use std::path::Path;

use super::catalog::{self, Catalog};
use super::served::Served;
use crate::Vars;

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{e}"));
}

fn read(dir: &Path) -> Result<Catalog, String> {
    catalog::read(dir, &Vars::process()).map_err(|e| e.to_string())
}

const LISTENERS: &str = "listeners:\n  - { name: main, address: 127.0.0.1:80, routes: main }\n";
const ROUTES: &str = "routes:\n  main:\n    - cluster: web\n";
const CLUSTERS: &str = "clusters:\n  web:\n    endpoints: [127.0.0.1:81]\n";

#[test]
fn files_merge_by_name_and_a_node_directory_overrides_for_its_node() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write(dir.path(), "listeners.yaml", LISTENERS);
    write(dir.path(), "routes.yml", ROUTES);
    write(dir.path(), "clusters.yaml", CLUSTERS);
    write(dir.path(), "README.md", "not YAML: skipped");
    write(dir.path(), ".hidden.yaml", "garbage: [");
    write(
        dir.path(),
        "p2/web.yaml",
        "clusters:\n  web:\n    endpoints: [127.0.0.1:82]\n",
    );
    let c = read(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.shared.listeners.len(), 1);
    assert_eq!(
        c.shared.clusters["web"].endpoints[0].address,
        "127.0.0.1:81"
    );
    assert_eq!(
        c.for_node("p1").clusters["web"].endpoints[0].address,
        "127.0.0.1:81"
    );
    assert_eq!(
        c.for_node("p2").clusters["web"].endpoints[0].address,
        "127.0.0.1:82"
    );
    assert_eq!(c.for_node("p2").listeners.len(), 1, "shared resources too");
}

#[test]
fn problems_of_the_merged_config_name_the_file_that_has_them() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write(dir.path(), "listeners.yaml", LISTENERS);
    write(
        dir.path(),
        "routes.yaml",
        "routes:\n  main:\n    - cluster: nowhere\n",
    );
    write(dir.path(), "clusters.yaml", CLUSTERS);
    let e = read(dir.path()).unwrap_err();
    assert!(e.contains("routes.yaml:3:"), "{e}");
    assert!(e.contains("routes.main[0].cluster"), "{e}");
    assert!(e.contains("nowhere"), "{e}");
}

#[test]
fn a_name_defined_twice_in_one_directory_is_refused_with_both_places() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write(
        dir.path(),
        "a.yaml",
        &format!("{LISTENERS}{ROUTES}{CLUSTERS}"),
    );
    write(dir.path(), "b.yaml", CLUSTERS);
    let e = read(dir.path()).unwrap_err();
    assert!(e.contains("b.yaml:2:3"), "{e}");
    assert!(e.contains("also defined at"), "{e}");
    assert!(e.contains("a.yaml:"), "{e}");
}

#[test]
fn the_proxys_own_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write(
        dir.path(),
        "a.yaml",
        &format!("admin: {{ address: 0.0.0.0:1 }}\n{LISTENERS}{ROUTES}{CLUSTERS}"),
    );
    let e = read(dir.path()).unwrap_err();
    assert!(e.contains("a.yaml:1:1: admin: not served over xDS"), "{e}");
    // The process's budgets are its own too.
    write(
        dir.path(),
        "a.yaml",
        &format!("overload: {{ max_connections: 10 }}\n{LISTENERS}{ROUTES}{CLUSTERS}"),
    );
    let e = read(dir.path()).unwrap_err();
    assert!(
        e.contains("a.yaml:1:1: overload: not served over xDS"),
        "{e}"
    );
}

/// Listener limits the xDS mapping does not carry yet are refused, never
/// served without them.
#[test]
fn listener_limits_not_carried_over_xds_are_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let limited = LISTENERS.replacen("routes:", "max_connections: 5, routes:", 1);
    assert_ne!(limited, LISTENERS, "the fixture has a listener with routes");
    write(
        dir.path(),
        "a.yaml",
        &format!("{limited}{ROUTES}{CLUSTERS}"),
    );
    let e = read(dir.path()).unwrap_err();
    assert!(
        e.contains("listeners[0].max_connections: not carried over xDS"),
        "{e}"
    );
}

#[test]
fn a_syntax_error_is_placed_and_nothing_is_served() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write(dir.path(), "a.yaml", "clusters:\n  web: { endpoints: [\n");
    let e = read(dir.path()).unwrap_err();
    assert!(e.contains("a.yaml:"), "{e}");
}

/// Versions are content hashes: the same config gives the same versions in
/// any process (routes with two per-filter configs included, which prost
/// keeps in a randomly ordered map), and a change changes them.
#[test]
fn versions_depend_on_content_alone() {
    let text = format!(
        "{LISTENERS}routes:\n  main:\n    - cluster: web\n      rate_limit: {{ requests_per_second: 5 }}\n      fault: {{ delay: {{ duration: 1s, percent: 10 }} }}\n{CLUSTERS}"
    );
    let config = crate::load_str(&text, "a.yaml").unwrap_or_else(|e| panic!("{e}"));
    let versions = |s: &Served| -> Vec<String> {
        crate::xds::TYPES
            .iter()
            .map(|t| s.all(t).map(|t| t.version.clone()).unwrap_or_default())
            .collect()
    };
    let first = versions(&Served::new(&config));
    for _ in 0..20 {
        assert_eq!(versions(&Served::new(&config)), first);
    }
    let mut changed = config.clone();
    changed
        .clusters
        .values_mut()
        .for_each(|c| c.endpoints[0].address = "127.0.0.1:99".into());
    let other = versions(&Served::new(&changed));
    assert_eq!(
        other[2..],
        first[2..],
        "listeners and routes did not change"
    );
    assert_ne!(other[1], first[1], "endpoints did");
}
