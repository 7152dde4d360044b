use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn opts(m: &[Mount]) -> String {
    m.iter().map(|m| format!("{} {} {}", m.kind, m.source, m.options.join(","))).collect::<Vec<_>>().join(";")
}

#[test]
fn layers_commit_into_a_chain_that_containers_mount_as_an_overlay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Snapshots::open(dir.path(), None).expect("open");
    let m = s.prepare("extract-1", None, BTreeMap::new(), Kind::Active).expect("prepare");
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].kind, "bind", "a first layer is unpacked into a plain dir: {}", opts(&m));
    std::fs::write(PathBuf::from(&m[0].source).join("a"), b"layer one").expect("unpack");
    s.commit("layer-1", "extract-1", labels(&[("x", "1")])).expect("commit");
    assert!(matches!(s.stat("extract-1"), Err(MetaError::NotFound(_))), "the active key is gone");
    assert_eq!(s.stat("layer-1").expect("stat").kind, Kind::Committed);
    assert!(s.usage("layer-1").expect("usage").size > 0);

    s.prepare("extract-2", Some("layer-1"), BTreeMap::new(), Kind::Active).expect("prepare");
    s.commit("layer-2", "extract-2", BTreeMap::new()).expect("commit");
    let m = s.prepare("container", Some("layer-2"), BTreeMap::new(), Kind::Active).expect("prepare");
    let o = opts(&m);
    assert!(o.starts_with("overlay overlay index=off,workdir="), "{o}");
    let lower = m[0].options.iter().find_map(|o| o.strip_prefix("lowerdir=")).expect("lowerdir");
    let ids: Vec<&str> = lower.split(':').map(|d| d.rsplit('/').nth(1).unwrap_or("")).collect();
    assert_eq!(ids, ["1", "0"], "nearest parent first: {lower}");

    let v = s.prepare("view", Some("layer-1"), BTreeMap::new(), Kind::View).expect("view");
    assert_eq!(opts(&v), format!("bind {}/snapshots/0/fs ro,rbind", dir.path().display()));
    assert_eq!(s.mounts("container").expect("mounts"), m);
}

#[test]
fn containerd_errors_come_out_as_their_kinds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Snapshots::open(dir.path(), None).expect("open");
    s.prepare("a", None, BTreeMap::new(), Kind::Active).expect("prepare");
    assert!(matches!(s.prepare("a", None, BTreeMap::new(), Kind::Active), Err(MetaError::AlreadyExists(_))));
    assert!(matches!(s.prepare("b", Some("nope"), BTreeMap::new(), Kind::Active), Err(MetaError::NotFound(_))));
    assert!(matches!(s.prepare("b", Some("a"), BTreeMap::new(), Kind::Active), Err(MetaError::InvalidArgument(_))), "active parent");
    assert!(matches!(s.prepare("", None, BTreeMap::new(), Kind::Active), Err(MetaError::InvalidArgument(_))));
    s.commit("c", "a", BTreeMap::new()).expect("commit");
    assert!(matches!(s.commit("c", "a", BTreeMap::new()), Err(MetaError::AlreadyExists(_))));
    assert!(matches!(s.commit("d", "c", BTreeMap::new()), Err(MetaError::FailedPrecondition(_))), "committing a committed one");
    s.prepare("child", Some("c"), BTreeMap::new(), Kind::View).expect("view");
    assert!(matches!(s.remove("c"), Err(MetaError::FailedPrecondition(_))), "a parent cannot go");
    s.remove("child").expect("remove child");
    s.remove("c").expect("remove parent");
    assert!(matches!(s.remove("c"), Err(MetaError::NotFound(_))));
    assert!(s.list().is_empty());
    assert_eq!(std::fs::read_dir(dir.path().join("snapshots")).expect("ls").count(), 0, "files went too");
}

#[test]
fn metadata_survives_a_restart_and_cleanup_removes_orphans() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = Snapshots::open(dir.path(), None).expect("open");
        s.prepare("a", None, labels(&[("k", "v")]), Kind::Active).expect("prepare");
        s.commit("base", "a", BTreeMap::new()).expect("commit");
        s.prepare("work", Some("base"), BTreeMap::new(), Kind::Active).expect("prepare");
        let mut info = s.stat("base").expect("stat");
        info.labels.insert("gc".into(), "keep".into());
        info.labels.remove("k");
        let updated = s.update(info, &["labels.gc".to_string()]).expect("update");
        assert_eq!(updated.labels, labels(&[("gc", "keep"), ("k", "v")]), "only the named label changed");
        assert!(matches!(s.update(updated, &["parent".to_string()]), Err(MetaError::InvalidArgument(_))));
    }
    std::fs::create_dir_all(dir.path().join("snapshots/99/fs")).expect("an orphan");
    let s = Snapshots::open(dir.path(), None).expect("reopen");
    let names: Vec<String> = s.list().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["base", "work"]);
    assert_eq!(s.stat("work").expect("stat").parent.as_deref(), Some("base"));
    assert_eq!(s.cleanup().expect("cleanup"), 1);
    assert!(!dir.path().join("snapshots/99").exists());
    s.prepare("next", None, BTreeMap::new(), Kind::Active).expect("ids are not reused");
    assert!(dir.path().join("snapshots/2").exists());
}

#[test]
fn damaged_metadata_is_an_error_not_an_empty_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("metadata.json"), b"{not json").expect("write");
    let err = Snapshots::open(dir.path(), None).err().expect("refused");
    assert!(err.to_string().contains("metadata"), "{err}");
}
