//! containerd's `config.toml` as doctor reads it: the few keys that decide whether containerd
//! pulls through the node and mounts through ferry's snapshotter, found where each config version
//! keeps them. `imports` are followed and merged as containerd merges them: files in order,
//! later values over earlier ones, lists appended, each `plugins.<id>` and `proxy_plugins.<name>`
//! table replaced whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

/// CRI's plugin id in config versions 2 and 3 (the runtime and server half in version 3).
pub const CRI_V2: &str = "io.containerd.grpc.v1.cri";
/// CRI's image service in config version 3 (containerd 2.x).
pub const CRI_IMAGES_V3: &str = "io.containerd.cri.v1.images";

/// The parts of a containerd config that matter to Ferry.
#[derive(Debug, Clone, Default)]
pub struct ContainerdConfig {
    /// `version`; 1 when absent (containerd 1.x reads such a file as version 1).
    pub version: i64,
    /// Imported files that were merged, in order.
    pub imports: Vec<PathBuf>,
    pub disabled_plugins: Vec<String>,
    /// `[grpc] address`: where this containerd listens.
    pub grpc_address: Option<PathBuf>,
    plugins: Table,
    pub proxy_plugins: BTreeMap<String, ProxyPlugin>,
}

/// One `[proxy_plugins.<name>]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyPlugin {
    pub kind: Option<String>,
    pub address: Option<String>,
}

/// CRI's image settings, wherever the config version keeps them.
#[derive(Debug, Clone, Default)]
pub struct Cri {
    /// CRI is in `disabled_plugins`: Kubernetes cannot use this containerd.
    pub disabled: bool,
    /// The TOML table header that holds `snapshotter` and the other image settings.
    pub images_table: String,
    /// The TOML table header that holds `config_path`.
    pub registry_table: String,
    /// The table for containerd 2.x's image service (`use_local_image_pull`).
    pub images_v3_table: String,
    pub snapshotter: Option<String>,
    pub disable_snapshot_annotations: Option<bool>,
    pub discard_unpacked_layers: Option<bool>,
    pub use_local_image_pull: Option<bool>,
    pub config_path: Option<String>,
    /// Registries under the deprecated `registry.mirrors`.
    pub mirrors: Vec<String>,
}

/// `[plugins."ID".rest]` as a TOML header.
fn header(id: &str, rest: &str) -> String {
    if rest.is_empty() {
        format!("[plugins.\"{id}\"]")
    } else {
        format!("[plugins.\"{id}\".{rest}]")
    }
}

impl ContainerdConfig {
    /// Parses one file's text (imports are not followed here).
    pub fn parse(text: &str) -> Result<(ContainerdConfig, Vec<String>), String> {
        let table: Table = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array).map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
        };
        let proxy_plugins = table
            .get("proxy_plugins")
            .and_then(Value::as_table)
            .map(|t| {
                t.iter()
                    .map(|(name, v)| {
                        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
                        (name.clone(), ProxyPlugin { kind: s("type"), address: s("address") })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let config = ContainerdConfig {
            version: table.get("version").and_then(Value::as_integer).unwrap_or(1),
            imports: Vec::new(),
            disabled_plugins: strings(table.get("disabled_plugins")),
            grpc_address: table
                .get("grpc")
                .and_then(|g| g.get("address"))
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
                .map(PathBuf::from),
            plugins: table.get("plugins").and_then(Value::as_table).cloned().unwrap_or_default(),
            proxy_plugins,
        };
        Ok((config, strings(table.get("imports"))))
    }

    /// Merges an imported file over this one, as containerd does.
    pub fn merge(&mut self, other: ContainerdConfig, path: PathBuf) {
        for d in other.disabled_plugins {
            if !self.disabled_plugins.contains(&d) {
                self.disabled_plugins.push(d);
            }
        }
        if other.grpc_address.is_some() {
            self.grpc_address = other.grpc_address;
        }
        self.plugins.extend(other.plugins);
        self.proxy_plugins.extend(other.proxy_plugins);
        self.imports.push(path);
    }

    /// The `[proxy_plugins.<name>]` whose address is `socket`: how this containerd knows the
    /// snapshotter served there.
    pub fn proxy_plugin_at(&self, socket: &Path) -> Option<(&String, &ProxyPlugin)> {
        self.proxy_plugins.iter().find(|(_, p)| p.address.as_deref().map(Path::new) == Some(socket))
    }

    fn plugin(&self, id: &str) -> Option<&Table> {
        self.plugins.get(id).and_then(Value::as_table)
    }

    /// CRI's image settings. Version 3 keeps them in `io.containerd.cri.v1.images`; versions 2
    /// and 1 in CRI's own table (`io.containerd.grpc.v1.cri`, `cri`), its `containerd` and
    /// `registry` subtables, which containerd 2.x migrates to the version 3 place at start.
    pub fn cri(&self) -> Cri {
        let images_v3 = self.plugin(CRI_IMAGES_V3);
        let get = |t: Option<&Table>, path: &[&str]| -> Option<Value> {
            let mut v = t?.get(path[0])?;
            for k in &path[1..] {
                v = v.get(k)?;
            }
            Some(v.clone())
        };
        let boolean = |v: Option<Value>| v.and_then(|v| v.as_bool());
        let string = |v: Option<Value>| v.and_then(|v| v.as_str().map(str::to_string));
        let mirrors = |v: Option<Value>| v.and_then(|v| v.as_table().map(|t| t.keys().cloned().collect())).unwrap_or_default();
        let disabled = self.disabled_plugins.iter().any(|p| p == CRI_V2 || p == "cri" || p == CRI_IMAGES_V3);
        let images_v3_table = header(CRI_IMAGES_V3, "");
        if self.version >= 3 {
            return Cri {
                disabled,
                images_table: images_v3_table.clone(),
                registry_table: header(CRI_IMAGES_V3, "registry"),
                images_v3_table,
                snapshotter: string(get(images_v3, &["snapshotter"])),
                disable_snapshot_annotations: boolean(get(images_v3, &["disable_snapshot_annotations"])),
                discard_unpacked_layers: boolean(get(images_v3, &["discard_unpacked_layers"])),
                use_local_image_pull: boolean(get(images_v3, &["use_local_image_pull"])),
                config_path: string(get(images_v3, &["registry", "config_path"])),
                mirrors: mirrors(get(images_v3, &["registry", "mirrors"])),
            };
        }
        let id = if self.version == 1 { "cri" } else { CRI_V2 };
        let cri = self.plugin(id);
        // A version 2 file may also carry a version 3 images table (for containerd 2.x).
        let either = |old: &[&str], new: &[&str]| get(cri, old).or_else(|| get(images_v3, new));
        Cri {
            disabled,
            images_table: header(id, "containerd"),
            registry_table: header(id, "registry"),
            images_v3_table,
            snapshotter: string(either(&["containerd", "snapshotter"], &["snapshotter"])),
            disable_snapshot_annotations: boolean(either(
                &["containerd", "disable_snapshot_annotations"],
                &["disable_snapshot_annotations"],
            )),
            discard_unpacked_layers: boolean(either(&["containerd", "discard_unpacked_layers"], &["discard_unpacked_layers"])),
            use_local_image_pull: boolean(get(images_v3, &["use_local_image_pull"])),
            config_path: string(either(&["registry", "config_path"], &["registry", "config_path"])),
            mirrors: mirrors(get(cri, &["registry", "mirrors"])),
        }
    }
}

/// Why a config could not be read.
#[derive(Debug)]
pub enum LoadError {
    Missing,
    Unreadable(String),
    Invalid { path: PathBuf, error: String },
}

/// Reads `path` and, in order, every file it imports (relative to the importing file; `*` in
/// the file name matches as in a shell glob), each once.
pub fn load(path: &Path) -> Result<ContainerdConfig, LoadError> {
    let read = |p: &Path| -> Result<(ContainerdConfig, Vec<String>), LoadError> {
        let text = std::fs::read_to_string(p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound if p == path => LoadError::Missing,
            _ => LoadError::Unreadable(format!("reading {}: {e}", p.display())),
        })?;
        ContainerdConfig::parse(&text).map_err(|error| LoadError::Invalid { path: p.to_path_buf(), error })
    };
    let (mut config, imports) = read(path)?;
    let mut seen = vec![path.to_path_buf()];
    let mut pending = resolve_imports(path, &imports);
    while !pending.is_empty() {
        let next = pending.remove(0);
        if seen.contains(&next) {
            continue;
        }
        seen.push(next.clone());
        let (imported, more) = read(&next)?;
        pending.extend(resolve_imports(&next, &more));
        config.merge(imported, next);
    }
    Ok(config)
}

fn resolve_imports(parent: &Path, imports: &[String]) -> Vec<PathBuf> {
    let base = parent.parent().unwrap_or(Path::new("/"));
    let mut out = Vec::new();
    for import in imports {
        let path = base.join(import);
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        match name.split_once('*') {
            None => out.push(path),
            Some((prefix, suffix)) => {
                let dir = path.parent().unwrap_or(base);
                let mut matches: Vec<PathBuf> = std::fs::read_dir(dir)
                    .into_iter()
                    .flatten()
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        let n = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                        n.len() >= prefix.len() + suffix.len() && n.starts_with(prefix) && n.ends_with(suffix)
                    })
                    .collect();
                matches.sort();
                out.extend(matches);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ContainerdConfig {
        ContainerdConfig::parse(text).expect("parses").0
    }

    #[test]
    fn version_2_keeps_cri_settings_in_cris_own_table() {
        let c = parse(crate::doctor::cri::tests::GOOD_V2);
        let cri = c.cri();
        assert_eq!(cri.snapshotter.as_deref(), Some("ferry"));
        assert_eq!(cri.disable_snapshot_annotations, Some(false));
        assert_eq!(cri.config_path.as_deref(), Some("/etc/containerd/certs.d"));
        assert_eq!(cri.registry_table, "[plugins.\"io.containerd.grpc.v1.cri\".registry]");
        assert!(!cri.disabled);
        let ferry = &c.proxy_plugins["ferry"];
        assert_eq!((ferry.kind.as_deref(), ferry.address.as_deref()), (Some("snapshot"), Some("/run/ferry/snapshotter.sock")));
    }

    #[test]
    fn version_3_keeps_them_in_the_image_service() {
        let c = parse(
            "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'ferry'\n  use_local_image_pull = true\n\
             [plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d'\n",
        );
        let cri = c.cri();
        assert_eq!(cri.snapshotter.as_deref(), Some("ferry"));
        assert_eq!(cri.use_local_image_pull, Some(true));
        assert_eq!(cri.config_path.as_deref(), Some("/etc/containerd/certs.d"));
        assert_eq!(cri.images_table, "[plugins.\"io.containerd.cri.v1.images\"]");
    }

    #[test]
    fn no_version_is_version_1_with_short_plugin_ids_and_disabled_cri_is_seen() {
        let c = parse("disabled_plugins = [\"cri\"]\n[plugins.cri.registry]\nconfig_path = \"/x\"\n");
        assert_eq!(c.version, 1);
        let cri = c.cri();
        assert!(cri.disabled);
        assert_eq!(cri.config_path.as_deref(), Some("/x"));
    }

    #[test]
    fn imports_are_merged_over_the_main_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("conf.d")).expect("mkdir");
        std::fs::write(
            dir.path().join("config.toml"),
            "version = 2\nimports = [\"conf.d/*.toml\"]\ndisabled_plugins = [\"a\"]\n\
             [plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/old\"\n[proxy_plugins.ferry]\naddress = \"/old.sock\"\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("conf.d/10-ferry.toml"),
            "version = 2\ndisabled_plugins = [\"b\"]\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/new\"\n\
             [proxy_plugins.ferry]\ntype = \"snapshot\"\naddress = \"/new.sock\"\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("conf.d/ignored.txt"), "not = [toml").expect("write");
        let c = load(&dir.path().join("config.toml")).expect("loads");
        assert_eq!(c.imports, vec![dir.path().join("conf.d/10-ferry.toml")]);
        assert_eq!(c.disabled_plugins, vec!["a", "b"]);
        assert_eq!(c.cri().config_path.as_deref(), Some("/new"));
        assert_eq!(c.proxy_plugins["ferry"].address.as_deref(), Some("/new.sock"));
    }

    #[test]
    fn a_missing_file_and_bad_toml_are_told_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(load(&dir.path().join("none.toml")), Err(LoadError::Missing)));
        std::fs::write(dir.path().join("bad.toml"), "version = \n").expect("write");
        assert!(matches!(load(&dir.path().join("bad.toml")), Err(LoadError::Invalid { .. })));
    }
}
