//! containerd's config against what the node needs: `[proxy_plugins.ferry]` at the node's
//! snapshotter socket, and CRI (Kubernetes' door into containerd) reading the hosts.toml files
//! (`config_path`), unpacking with ferry's snapshotter, and pulling the way Ferry's lazy layers
//! are tested with. Pure: the parsed config and the containerd version in, checks out.
//!
//! Facts behind the checks (containerd's CRI docs, stargz-snapshotter's transfer-service doc):
//! - CRI reads `certs.d/<registry>/hosts.toml` only when `config_path` names the folder, and
//!   refuses to start when the deprecated `registry.mirrors` is set beside it.
//! - containerd's unpacker sets `containerd.io/snapshot.ref` on every layer it prepares: that
//!   label is all Ferry needs to mount a lazy layer. `disable_snapshot_annotations = false` only
//!   adds CRI's own `containerd.io/snapshot/cri.*` labels, which Ferry does not read.
//! - containerd 2.0's CRI still pulls in its own process. From 2.1, CRI hands pulls to the
//!   transfer service unless `use_local_image_pull = true`, or a setting the transfer service
//!   lacks forces the local pull (`disable_snapshot_annotations = false`, `discard_unpacked_layers
//!   = true`, registry mirrors, …). Ferry's lazy layers are tested with the local pull.
//! - `discard_unpacked_layers = true` lets containerd's GC drop layer blobs from containerd's own
//!   content store once unpacked; Ferry's store is separate and keeps them.

use std::path::Path;

use super::containerd::Version;
use super::containerd_toml::{ContainerdConfig, Cri};
use super::{Check, Ferry};

pub fn evaluate(cfg: &ContainerdConfig, version: Option<Version>, ferry: &Ferry, certs_dir: &Path) -> Vec<Check> {
    let mut checks = vec![proxy_plugin(cfg, ferry)];
    let cri = cfg.cri();
    if cri.disabled {
        checks.push(Check::info(
            "cri.enabled",
            "CRI is in disabled_plugins: Kubernetes cannot use this containerd (ctr and `ferry pull` can); CRI settings not checked",
        ));
        return checks;
    }
    checks.push(Check::ok("cri.enabled", "CRI is enabled"));
    checks.push(config_path(&cri, certs_dir));
    let plugin = snapshotter_name(cfg, ferry);
    checks.push(snapshotter(&cri, ferry, &plugin));
    if ferry.snapshotter_socket.is_some() && cri.snapshotter.as_deref() == Some(plugin.as_str()) {
        checks.push(snapshot_annotations(&cri));
        checks.push(pull_path(&cri, version));
    }
    checks.push(discard_unpacked_layers(&cri));
    checks
}

/// The name containerd knows ferry's snapshotter by: the proxy plugin at the node's socket.
fn snapshotter_name(cfg: &ContainerdConfig, ferry: &Ferry) -> String {
    let plugin = ferry.snapshotter_socket.as_deref().and_then(|socket| cfg.proxy_plugin_at(socket));
    plugin.map_or_else(|| "ferry".to_string(), |(name, _)| name.clone())
}

fn proxy_plugin(cfg: &ContainerdConfig, ferry: &Ferry) -> Check {
    const NAME: &str = "containerd.proxy_plugin";
    let declared = cfg.proxy_plugins.get("ferry");
    let Some(socket) = &ferry.snapshotter_socket else {
        return match declared.and_then(|p| p.address.as_deref()) {
            Some(address) => Check::warn(
                NAME,
                format!("containerd has [proxy_plugins.ferry] at {address}, but the node serves no snapshotter (no snapshotter.socket): pulls and runs with --snapshotter ferry fail"),
                format!("start the node with --snapshotter-socket {address}, or remove [proxy_plugins.ferry]"),
            ),
            None => Check::info(NAME, "the node's snapshotter is off (no snapshotter.socket): images are unpacked in full, no lazy layers"),
        };
    };
    let snippet = format!(
        "[proxy_plugins.ferry] type = \"snapshot\" address = \"{}\" (`ferry containerd-config` prints it), then restart containerd",
        socket.display()
    );
    match (cfg.proxy_plugin_at(socket), declared) {
        (Some((name, p)), _) if p.kind.as_deref() != Some("snapshot") => Check::fail(
            NAME,
            format!("[proxy_plugins.{name}] points at the node's socket with type {:?}, not \"snapshot\"", p.kind.as_deref().unwrap_or("")),
            format!("set type = \"snapshot\" under [proxy_plugins.{name}] and restart containerd"),
        ),
        (Some((name, _)), _) if name == "ferry" => Check::ok(NAME, format!("[proxy_plugins.ferry] is a snapshot plugin at {}", socket.display())),
        (Some((name, _)), _) => Check::ok(
            NAME,
            format!("ferry's snapshotter is [proxy_plugins.{name}] at {}: use --snapshotter {name} with ctr and ferry pull", socket.display()),
        ),
        (None, Some(p)) => Check::fail(
            NAME,
            format!(
                "[proxy_plugins.ferry] points at {}, but the node serves its snapshotter at {}: containerd cannot reach it, and pulls with --snapshotter ferry fail after ~3 s",
                p.address.as_deref().unwrap_or("nothing"),
                socket.display()
            ),
            format!("set address = \"{}\" under [proxy_plugins.ferry] and restart containerd", socket.display()),
        ),
        (None, None) => Check::fail(
            NAME,
            format!("containerd has no [proxy_plugins.ferry]: it does not know the snapshotter the node serves at {}", socket.display()),
            format!("add {snippet}"),
        ),
    }
}

fn config_path(cri: &Cri, certs_dir: &Path) -> Check {
    const NAME: &str = "cri.config_path";
    let certs = certs_dir.display();
    let set = format!("set config_path = \"{certs}\" under {} and restart containerd", cri.registry_table);
    let Some(value) = cri.config_path.as_deref().filter(|v| !v.is_empty()) else {
        return Check::fail(
            NAME,
            format!("config_path is not set under {}: CRI ignores {certs}/*/hosts.toml and pulls straight from the registries, not through the node", cri.registry_table),
            set,
        );
    };
    if !cri.mirrors.is_empty() {
        return Check::fail(
            NAME,
            format!(
                "{} sets both config_path and registry.mirrors ({}): CRI refuses to start with both",
                cri.registry_table,
                cri.mirrors.join(", ")
            ),
            "remove the registry.mirrors tables: the hosts.toml files replace them",
        );
    }
    let dirs: Vec<&str> = value.split(':').collect();
    if !dirs.iter().any(|d| Path::new(d) == certs_dir) {
        return Check::fail(
            NAME,
            format!("config_path = {value:?}: CRI reads hosts.toml files there, not in {certs} where doctor checked them"),
            format!("{set}, or write the files there (`ferry containerd-config --apply {}`) and pass --certs-dir", dirs[0]),
        );
    }
    Check::ok(NAME, format!("config_path = {value:?}: CRI reads {certs}/<registry>/hosts.toml"))
}

fn snapshotter(cri: &Cri, ferry: &Ferry, plugin: &str) -> Check {
    const NAME: &str = "cri.snapshotter";
    let used = cri.snapshotter.as_deref().unwrap_or("overlayfs");
    let table = &cri.images_table;
    match &ferry.snapshotter_socket {
        // containerd needs the snapshotter to create any container on it, the node's own too:
        // after a reboot, or a pod restart, nothing could start again.
        Some(_) if used == plugin && ferry.in_pod => Check::fail(
            NAME,
            format!("CRI unpacks every image with {plugin:?}, but the node serving it runs in a pod: whenever that pod is down (a reboot, an upgrade, a crash) containerd can start no container, the node's own included, so the node never comes back"),
            format!("set snapshotter = \"overlayfs\" under {table} and restart containerd (pods then pull whole images, through the mirror), or run Ferry as a host service (deploy/install.sh) for lazy layers in pods"),
        ),
        Some(_) if used == plugin => {
            Check::ok(NAME, format!("CRI unpacks images with {plugin:?}: pods' lazy layers are mounted, not downloaded"))
        }
        Some(_) if ferry.in_pod => Check::info(
            NAME,
            format!("CRI unpacks images with {used:?}: pods pull whole images through the mirror; lazy layers are for `ferry pull` and `ctr --snapshotter {plugin}` (CRI on ferry's snapshotter needs Ferry outside Kubernetes, deploy/install.sh)"),
        ),
        Some(_) => Check::warn(
            NAME,
            format!("CRI unpacks images with {used:?}: pods get no lazy layers (only `ferry pull` and `ctr --snapshotter {plugin}` do)"),
            format!("set snapshotter = \"{plugin}\" under {table} and restart containerd"),
        ),
        None if used == "ferry" => Check::fail(
            NAME,
            "CRI unpacks images with \"ferry\", but the node serves no snapshotter (no snapshotter.socket): every pod's image pull fails",
            format!("start the node with --snapshotter-socket, or set snapshotter = \"overlayfs\" under {table}"),
        ),
        None => Check::ok(NAME, format!("CRI unpacks images with {used:?} (the node's snapshotter is off)")),
    }
}

fn snapshot_annotations(cri: &Cri) -> Check {
    const NAME: &str = "cri.snapshot_annotations";
    match cri.disable_snapshot_annotations {
        Some(false) => Check::ok(NAME, "disable_snapshot_annotations = false: CRI adds its image labels to each layer's snapshot"),
        _ => Check::info(
            NAME,
            "disable_snapshot_annotations is true (the default): CRI adds no cri.* labels; Ferry does not need them, it finds lazy layers by the containerd.io/snapshot.ref label containerd always sets",
        ),
    }
}

fn pull_path(cri: &Cri, version: Option<Version>) -> Check {
    const NAME: &str = "cri.pull";
    let local_pull = format!("set use_local_image_pull = true under {} and restart containerd", cri.images_v3_table);
    let Some(v) = version else {
        return Check::info(NAME, format!("containerd's version is unknown; if it is 2.1 or later, {local_pull}"));
    };
    if !v.at_least(2, 1) {
        return Check::ok(NAME, format!("containerd {v}: CRI pulls in its own process and prepares each layer on ferry's snapshotter"));
    }
    if cri.use_local_image_pull == Some(true) {
        return Check::ok(NAME, format!("containerd {v}: use_local_image_pull = true, CRI pulls in its own process"));
    }
    let forced = [
        (cri.disable_snapshot_annotations == Some(false), "disable_snapshot_annotations = false"),
        (cri.discard_unpacked_layers == Some(true), "discard_unpacked_layers = true"),
        (!cri.mirrors.is_empty(), "registry.mirrors"),
    ];
    if let Some((_, why)) = forced.iter().find(|(on, _)| *on) {
        return Check::ok(NAME, format!("containerd {v}: {why} makes CRI fall back to pulling in its own process (it logs a warning); use_local_image_pull = true says so outright"));
    }
    Check::warn(
        NAME,
        format!("containerd {v} hands CRI pulls to its transfer service, which unpacks only with the snapshotters of its unpack_config; Ferry's lazy layers are tested with CRI's own pull"),
        local_pull,
    )
}

fn discard_unpacked_layers(cri: &Cri) -> Check {
    const NAME: &str = "cri.discard_unpacked_layers";
    if cri.discard_unpacked_layers == Some(true) {
        return Check::info(
            NAME,
            "discard_unpacked_layers = true: containerd drops layer blobs from its own content store once unpacked; Ferry's store is separate and keeps serving them to peers, and a re-pull fetches them again from the node",
        );
    }
    Check::ok(NAME, "containerd keeps unpacked layer blobs (the default)")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::doctor::tests::ferry;
    use crate::doctor::Status;

    pub(crate) const GOOD_V2: &str = r#"version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "ferry"
  disable_snapshot_annotations = false
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
[proxy_plugins.ferry]
  type = "snapshot"
  address = "/run/ferry/snapshotter.sock"
"#;

    const GOOD_V3: &str = r#"version = 3
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'ferry'
  use_local_image_pull = true
[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = '/etc/containerd/certs.d'
[proxy_plugins.ferry]
  type = 'snapshot'
  address = '/run/ferry/snapshotter.sock'
"#;

    fn run(text: &str, version: &str) -> Vec<Check> {
        let (cfg, _) = ContainerdConfig::parse(text).expect("parses");
        evaluate(&cfg, Version::parse(version), &ferry(), Path::new("/etc/containerd/certs.d"))
    }

    fn status(checks: &[Check], name: &str) -> Status {
        checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check {name} in {checks:#?}")).status
    }

    fn worst(checks: &[Check]) -> Status {
        checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok)
    }

    #[test]
    fn good_configs_pass() {
        for (text, version) in [(GOOD_V2, "1.6.20"), (GOOD_V2, "1.7.24"), (GOOD_V2, "2.1.0"), (GOOD_V3, "2.0.0"), (GOOD_V3, "2.1.4")] {
            let checks = run(text, version);
            assert!(worst(&checks) <= Status::Info, "{version}: {checks:#?}");
            assert_eq!(status(&checks, "cri.config_path"), Status::Ok);
            assert_eq!(status(&checks, "cri.snapshotter"), Status::Ok);
        }
    }

    #[test]
    fn a_missing_config_path_fails_and_says_where_it_goes() {
        let checks = run(&GOOD_V2.replace("config_path = \"/etc/containerd/certs.d\"", ""), "1.6.20");
        let c = checks.iter().find(|c| c.name == "cri.config_path").expect("check");
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.as_deref().is_some_and(|f| f.contains("[plugins.\"io.containerd.grpc.v1.cri\".registry]")), "{c:?}");
        let v3 = run(&GOOD_V3.replace("config_path = '/etc/containerd/certs.d'", ""), "2.1.0");
        let c = v3.iter().find(|c| c.name == "cri.config_path").expect("check");
        assert!(c.fix.as_deref().is_some_and(|f| f.contains("[plugins.\"io.containerd.cri.v1.images\".registry]")), "{c:?}");
    }

    #[test]
    fn config_path_elsewhere_or_beside_mirrors_fails() {
        let elsewhere = run(&GOOD_V2.replace("/etc/containerd/certs.d", "/etc/docker/certs.d"), "1.6.20");
        assert_eq!(status(&elsewhere, "cri.config_path"), Status::Fail);
        let listed = run(&GOOD_V2.replace("/etc/containerd/certs.d", "/etc/containerd/certs.d:/etc/docker/certs.d"), "1.6.20");
        assert_eq!(status(&listed, "cri.config_path"), Status::Ok);
        let mirrors =
            format!("{GOOD_V2}[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\nendpoint = [\"https://x\"]\n");
        assert_eq!(status(&run(&mirrors, "1.6.20"), "cri.config_path"), Status::Fail);
    }

    #[test]
    fn a_missing_or_misaddressed_proxy_plugin_fails() {
        let without: String = GOOD_V2.split("[proxy_plugins.ferry]").next().expect("head").to_string();
        assert_eq!(status(&run(&without, "1.6.20"), "containerd.proxy_plugin"), Status::Fail);
        let elsewhere = run(&GOOD_V2.replace("/run/ferry/snapshotter.sock", "/run/other.sock"), "1.6.20");
        let c = elsewhere.iter().find(|c| c.name == "containerd.proxy_plugin").expect("check");
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("/run/other.sock") && c.detail.contains("/run/ferry/snapshotter.sock"), "{c:?}");
        let wrong_type = run(&GOOD_V2.replace("type = \"snapshot\"", "type = \"content\""), "1.6.20");
        assert_eq!(status(&wrong_type, "containerd.proxy_plugin"), Status::Fail);
    }

    #[test]
    fn a_renamed_plugin_is_followed_to_cris_snapshotter() {
        let renamed =
            GOOD_V2.replace("[proxy_plugins.ferry]", "[proxy_plugins.lazy]").replace("snapshotter = \"ferry\"", "snapshotter = \"lazy\"");
        let checks = run(&renamed, "1.6.20");
        assert_eq!(status(&checks, "containerd.proxy_plugin"), Status::Ok);
        assert_eq!(status(&checks, "cri.snapshotter"), Status::Ok);
    }

    #[test]
    fn cri_on_overlayfs_warns_and_on_an_absent_snapshotter_fails() {
        let overlay = run(&GOOD_V2.replace("snapshotter = \"ferry\"", "snapshotter = \"overlayfs\""), "1.6.20");
        assert_eq!(status(&overlay, "cri.snapshotter"), Status::Warn);
        let (cfg, _) = ContainerdConfig::parse(GOOD_V2).expect("parses");
        let off = crate::doctor::Ferry { snapshotter_socket: None, ..ferry() };
        let checks = evaluate(&cfg, Version::parse("1.6.20"), &off, Path::new("/etc/containerd/certs.d"));
        assert_eq!(status(&checks, "cri.snapshotter"), Status::Fail);
        assert_eq!(status(&checks, "containerd.proxy_plugin"), Status::Warn);
    }

    #[test]
    fn in_a_pod_cri_on_ferrys_snapshotter_fails_and_overlayfs_is_expected() {
        let (cfg, _) = ContainerdConfig::parse(GOOD_V2).expect("parses");
        let pod = crate::doctor::Ferry { in_pod: true, ..ferry() };
        let checks = evaluate(&cfg, Version::parse("1.7.24"), &pod, Path::new("/etc/containerd/certs.d"));
        let c = checks.iter().find(|c| c.name == "cri.snapshotter").expect("check");
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("the node's own included"), "{c:?}");
        let (overlay, _) =
            ContainerdConfig::parse(&GOOD_V2.replace("snapshotter = \"ferry\"", "snapshotter = \"overlayfs\"")).expect("parses");
        let checks = evaluate(&overlay, Version::parse("1.7.24"), &pod, Path::new("/etc/containerd/certs.d"));
        assert_eq!(status(&checks, "cri.snapshotter"), Status::Info);
    }

    #[test]
    fn containerd_2_1_needs_the_local_pull() {
        let transfer = GOOD_V3.replace("use_local_image_pull = true", "use_local_image_pull = false");
        let c = run(&transfer, "2.1.0");
        assert_eq!(status(&c, "cri.pull"), Status::Warn);
        assert!(c.iter().any(|c| c.fix.as_deref().is_some_and(|f| f.contains("use_local_image_pull = true"))));
        assert_eq!(status(&run(&transfer, "2.0.5"), "cri.pull"), Status::Ok, "2.0's CRI does not use the transfer service");
        let forced = transfer.replace("snapshotter = 'ferry'", "snapshotter = 'ferry'\n  disable_snapshot_annotations = false");
        assert_eq!(status(&run(&forced, "2.2.0"), "cri.pull"), Status::Ok);
        assert_eq!(status(&run(GOOD_V2, "2.1.0"), "cri.pull"), Status::Ok, "a v2 file with annotations on falls back too");
    }

    #[test]
    fn discarding_layers_and_default_annotations_only_inform() {
        let discard = GOOD_V2.replace("disable_snapshot_annotations = false", "discard_unpacked_layers = true");
        let checks = run(&discard, "1.6.20");
        assert_eq!(status(&checks, "cri.discard_unpacked_layers"), Status::Info);
        assert_eq!(status(&checks, "cri.snapshot_annotations"), Status::Info);
    }

    #[test]
    fn disabled_cri_skips_cri_checks() {
        let checks = run(&format!("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n{GOOD_V2}"), "1.6.20");
        assert_eq!(status(&checks, "cri.enabled"), Status::Info);
        assert!(!checks.iter().any(|c| c.name == "cri.config_path"));
    }
}
