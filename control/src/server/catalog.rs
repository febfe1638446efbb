//! The directory `skiff control` serves, read whole: every YAML file at its
//! top merged by name into the config every node gets, and each
//! subdirectory (named after a node id) merged over that for its node alone.
//!
//! Files hold only what travels over xDS: `listeners`, `routes` and
//! `clusters`. Everything else in Skiff's schema (admin, runtime, identity,
//! telemetry, authorization, control) is the proxy's own and stays in its
//! own file; a directory that sets it is refused, so nobody believes it was
//! served.
//!
//! A directory is validated whole before anything is served from it: each
//! file is parsed on its own (unknown keys, wrong types), then the merged
//! config of every node is validated, and each problem is placed at the
//! `FILE:LINE:COL` of the file that defined what is wrong.

use std::collections::BTreeMap;
use std::path::Path;

use crate::load::Fragment;
use crate::model::{Config, Identity};
use crate::{ConfigError, ConfigErrors, Vars, validate};

/// What a directory serves: the shared config, and per node id the config
/// that node gets (the shared one with the node's own resources over it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    pub shared: Config,
    pub nodes: BTreeMap<String, Config>,
}

impl Catalog {
    /// The config for the node called `id`.
    pub fn for_node(&self, id: &str) -> &Config {
        self.nodes.get(id).unwrap_or(&self.shared)
    }
}

/// Reads and validates every file under `dir`. Hidden entries are skipped:
/// a Kubernetes ConfigMap volume keeps its real files in `..data` and
/// timestamped `..2026_…` directories, and shows them through symlinks.
pub fn read(dir: &Path, vars: &Vars) -> Result<Catalog, ConfigErrors> {
    let mut errors = Vec::new();
    let (files, subdirs) = entries(dir, &mut errors);
    let shared: Vec<Fragment> = files
        .iter()
        .filter_map(|p| fragment(p, vars, &mut errors))
        .collect();
    let mut node_fragments = BTreeMap::new();
    for (node, sub) in &subdirs {
        let (files, _nested) = entries(sub, &mut errors);
        let own: Vec<Fragment> = files
            .iter()
            .filter_map(|p| fragment(p, vars, &mut errors))
            .collect();
        node_fragments.insert(node.clone(), own);
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }

    let all: Vec<&Fragment> = shared.iter().collect();
    let shared_config = merged(&all, &mut errors);
    let mut nodes = BTreeMap::new();
    for (node, own) in &node_fragments {
        // The node's files override shared resources of the same name.
        let mut layers: Vec<&Fragment> = shared.iter().collect();
        layers.extend(own.iter());
        nodes.insert(node.clone(), merged(&layers, &mut errors));
    }
    if errors.is_empty() {
        Ok(Catalog {
            shared: shared_config,
            nodes,
        })
    } else {
        // A shared file's problem shows once, not once per node.
        errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        errors.dedup();
        Err(ConfigErrors(errors))
    }
}

/// YAML files (sorted by name) and subdirectories (by name) of `dir`.
fn entries(
    dir: &Path,
    errors: &mut Vec<ConfigError>,
) -> (
    Vec<std::path::PathBuf>,
    BTreeMap<String, std::path::PathBuf>,
) {
    let mut files = Vec::new();
    let mut dirs = BTreeMap::new();
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) => {
            errors.push(whole(dir, format!("cannot read the directory: {e}")));
            return (files, dirs);
        }
    };
    for entry in read.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks: a ConfigMap's files are links into `..data`.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => {
                dirs.insert(name, path);
            }
            Ok(m) if m.is_file() && (name.ends_with(".yaml") || name.ends_with(".yml")) => {
                files.push(path);
            }
            _ => {}
        }
    }
    files.sort();
    (files, dirs)
}

fn whole(path: &Path, message: String) -> ConfigError {
    ConfigError {
        file: path.display().to_string(),
        line: 0,
        column: 0,
        message,
    }
}

/// One file parsed, with what it may not set refused.
fn fragment(path: &Path, vars: &Vars, errors: &mut Vec<ConfigError>) -> Option<Fragment> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(whole(path, format!("cannot read the file: {e}")));
            return None;
        }
    };
    let f = match Fragment::parse(&text, &path.display().to_string(), vars) {
        Ok(f) => f,
        Err(e) => {
            errors.extend(e.0);
            return None;
        }
    };
    let c = &f.config;
    let own = [
        ("admin", c.admin != Default::default()),
        ("runtime", c.runtime != Default::default()),
        ("identity", c.identity.is_some()),
        ("authorization", !c.authorization.is_empty()),
        ("telemetry", c.telemetry.is_some()),
        ("control", c.control.is_some()),
        ("overload", c.overload != Default::default()),
    ];
    let before = errors.len();
    // What the xDS mapping cannot carry yet: refused here, not served
    // without it.
    for (table, routes) in &c.routes {
        for (i, r) in routes.iter().enumerate() {
            if r.matches.port.is_some() {
                let path = format!("routes.{table}[{i}].match.port");
                errors.push(f.at(
                    &path,
                    format!("{path}: not carried over xDS yet; put this route table in the proxy's own file"),
                ));
            }
        }
    }
    for (i, l) in c.listeners.iter().enumerate() {
        let defaults = [
            ("max_connections", l.max_connections.is_some()),
            ("max_concurrent_streams", l.max_concurrent_streams != 1024),
        ];
        for (key, _) in defaults.iter().filter(|(_, set)| *set) {
            let path = format!("listeners[{i}].{key}");
            errors.push(f.at(
                &path,
                format!(
                    "{path}: not carried over xDS yet; put this listener in the proxy's own file"
                ),
            ));
        }
        if l.transparent && l.cluster.is_some() {
            let path = format!("listeners[{i}].cluster");
            errors.push(f.at(
                &path,
                format!("{path}: a transparent listener's cluster is not carried over xDS yet; put this listener in the proxy's own file"),
            ));
        }
    }
    for (name, cluster) in &c.clusters {
        if cluster.original_destination.is_some() {
            let path = format!("clusters.{name}.original_destination");
            errors.push(f.at(
                &path,
                format!("{path}: xDS has no field for it (Envoy's ORIGINAL_DST keeps the address); put this cluster in the proxy's own file"),
            ));
        }
    }
    for (key, _) in own.iter().filter(|(_, set)| *set) {
        errors.push(f.at(
            key,
            format!(
                "{key}: not served over xDS; it belongs in each proxy's own file (this directory serves listeners, routes and clusters)"
            ),
        ));
    }
    (errors.len() == before).then_some(f)
}

/// Where a merged resource came from: its fragment and its path there.
struct Origin<'a> {
    fragment: &'a Fragment,
    path: String,
}

/// Merges `layers` in order (a later layer's resource replaces an earlier
/// one of the same name only across layers of different directories; two
/// files of one directory defining one name is an error) and validates the
/// result, placing each problem in the file it comes from.
fn merged(layers: &[&Fragment], errors: &mut Vec<ConfigError>) -> Config {
    let mut config = Config::default();
    let mut listeners: BTreeMap<String, (usize, Origin)> = BTreeMap::new();
    let mut routes: BTreeMap<String, Origin> = BTreeMap::new();
    let mut clusters: BTreeMap<String, Origin> = BTreeMap::new();
    let dir_of = |f: &Fragment| {
        Path::new(&f.file)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    };
    // A name defined twice in one directory; across directories the node's wins.
    let mut twice = |first: &Origin, f: &Fragment, path: &str, what: &str| -> bool {
        if dir_of(first.fragment) == dir_of(f) {
            let other = first.fragment.at(&first.path, String::new());
            errors.push(f.at(
                path,
                format!(
                    "{path}: {what} also defined at {}:{}:{}; a name may be defined once in a directory",
                    other.file, other.line, other.column
                ),
            ));
            true
        } else {
            false
        }
    };
    for f in layers {
        for (j, l) in f.config.listeners.iter().enumerate() {
            let path = format!("listeners[{j}]");
            let i = match listeners.get(&l.name) {
                Some((i, first)) => {
                    if twice(first, f, &path, "this listener is") {
                        continue;
                    }
                    config.listeners[*i] = l.clone();
                    *i
                }
                None => {
                    config.listeners.push(l.clone());
                    config.listeners.len() - 1
                }
            };
            listeners.insert(l.name.clone(), (i, Origin { fragment: f, path }));
        }
        for (name, table) in &f.config.routes {
            let path = format!("routes.{name}");
            if let Some(first) = routes.get(name)
                && twice(first, f, &path, "this route table is")
            {
                continue;
            }
            config.routes.insert(name.clone(), table.clone());
            routes.insert(name.clone(), Origin { fragment: f, path });
        }
        for (name, cluster) in &f.config.clusters {
            let path = format!("clusters.{name}");
            if let Some(first) = clusters.get(name)
                && twice(first, f, &path, "this cluster is")
            {
                continue;
            }
            config.clusters.insert(name.clone(), cluster.clone());
            clusters.insert(name.clone(), Origin { fragment: f, path });
        }
    }

    // Validated as a proxy will hold it: with an identity of its own (TLS
    // settings are checked, the certificate is each proxy's business).
    let mut checked = config.clone();
    checked.identity = Some(Identity {
        cert: "proxy".into(),
        key: "proxy".into(),
        trust_bundle: "proxy".into(),
    });
    let by_index: Vec<&Origin> = {
        let mut v: Vec<(usize, &Origin)> = listeners.values().map(|(i, o)| (*i, o)).collect();
        v.sort_by_key(|(i, _)| *i);
        v.into_iter().map(|(_, o)| o).collect()
    };
    for invalid in validate(&checked) {
        let found = origin(&invalid.path, &by_index, &routes, &clusters);
        match found {
            Some((o, rest)) => {
                errors.push(o.fragment.locate(&format!("{}{rest}", o.path), &invalid))
            }
            None => match layers.first() {
                Some(f) => errors.push(f.at("", invalid.to_string())),
                None => errors.push(ConfigError {
                    file: String::new(),
                    line: 0,
                    column: 0,
                    message: invalid.to_string(),
                }),
            },
        }
    }
    config
}

/// The origin of the resource a validation path is about, and the rest of
/// the path below it.
fn origin<'p, 'o>(
    path: &'p str,
    listeners: &[&'o Origin<'o>],
    routes: &'o BTreeMap<String, Origin<'o>>,
    clusters: &'o BTreeMap<String, Origin<'o>>,
) -> Option<(&'o Origin<'o>, &'p str)> {
    if let Some(rest) = path.strip_prefix("listeners[") {
        let (i, rest) = rest.split_once(']')?;
        let o = listeners.get(i.parse::<usize>().ok()?)?;
        return Some((o, rest));
    }
    let named = |prefix: &str, map: &'o BTreeMap<String, Origin<'o>>| {
        let rest = path.strip_prefix(prefix)?;
        // The longest name that fits: names may hold dots.
        map.iter()
            .filter_map(|(name, o)| {
                let tail = rest.strip_prefix(name.as_str())?;
                (tail.is_empty() || tail.starts_with(['.', '['])).then_some((name.len(), o, tail))
            })
            .max_by_key(|(len, _, _)| *len)
            .map(|(_, o, tail)| (o, tail))
    };
    named("routes.", routes).or_else(|| named("clusters.", clusters))
}
