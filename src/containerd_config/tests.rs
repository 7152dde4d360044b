use super::*;

const OPERATORS: &[u8] = b"server = \"https://registry.example.com\"\n# the operator's own, with a byte that is not UTF-8: \xff\n";

fn ours(mirror: &str) -> String {
    hosts_toml("reg.local", "http://127.0.0.1:5000/", mirror)
}

/// A certs.d with the operator's own `reg.local/hosts.toml`; and that folder.
fn with_operators_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = dir.path().join("reg.local");
    std::fs::create_dir(&folder).expect("mkdir");
    std::fs::write(folder.join("hosts.toml"), OPERATORS).expect("operator's file");
    (dir, folder)
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = walk(dir).iter().map(|p| p.strip_prefix(dir).expect("under dir").display().to_string()).collect();
    names.sort();
    names
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("ls").map(|e| e.expect("entry").path()) {
        if entry.is_dir() {
            out.extend(walk(&entry));
        }
        out.push(entry);
    }
    out
}

#[test]
fn the_text_names_the_mirror_first_and_the_registry_as_fallback() {
    let text = ours("http://127.0.0.1:5050");
    assert!(text.starts_with(MARK));
    assert!(text.contains("server = \"http://127.0.0.1:5000\""));
    assert!(text.contains("[host.\"http://127.0.0.1:5050\"]"));
}

#[test]
fn a_file_that_replaced_nothing_is_removed_with_its_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("other.example")).expect("mkdir");
    assert_eq!(apply(dir.path(), "reg.local", &ours("http://a")).expect("apply").1, Applied::Wrote);
    assert_eq!(listing(dir.path()), ["other.example", "reg.local", "reg.local/hosts.toml"]);
    let done = restore(dir.path(), None).expect("restore");
    assert_eq!(done, [(dir.path().join("reg.local/hosts.toml"), Restored::Removed)]);
    assert_eq!(listing(dir.path()), ["other.example"], "folders Ferry did not write in are left alone");
    assert!(restore(dir.path(), None).expect("again").is_empty(), "a second restore has nothing to do");
}

#[test]
fn the_operators_file_is_kept_once_and_put_back_byte_for_byte() {
    let (dir, folder) = with_operators_file();

    assert_eq!(apply(dir.path(), "reg.local", &ours("http://a")).expect("apply").1, Applied::Replaced);
    assert_eq!(apply(dir.path(), "reg.local", &ours("http://a")).expect("again").1, Applied::Unchanged);
    // A later apply with another mirror address replaces Ferry's file only.
    assert_eq!(apply(dir.path(), "reg.local", &ours("http://b")).expect("new mirror").1, Applied::Wrote);
    assert_eq!(std::fs::read(folder.join(ORIGINAL)).expect("kept"), OPERATORS);
    assert_eq!(listing(dir.path()), ["reg.local", "reg.local/hosts.toml", "reg.local/hosts.toml.ferry-orig"]);

    assert_eq!(restore(dir.path(), None).expect("restore"), [(folder.join("hosts.toml"), Restored::PutBack)]);
    assert_eq!(std::fs::read(folder.join("hosts.toml")).expect("read"), OPERATORS);
    assert_eq!(listing(dir.path()), ["reg.local", "reg.local/hosts.toml"]);
    assert!(restore(dir.path(), None).expect("again").is_empty(), "the operator's file is not Ferry's to touch");
}

#[test]
fn a_file_someone_wrote_over_ferrys_is_neither_replaced_nor_lost() {
    let (dir, folder) = with_operators_file();
    apply(dir.path(), "reg.local", &ours("http://a")).expect("apply");
    std::fs::write(folder.join("hosts.toml"), "server = \"https://newer\"\n").expect("someone else's");

    let err = apply(dir.path(), "reg.local", &ours("http://a")).expect_err("two files of the operator's");
    let msg = format!("{err:#}");
    assert!(msg.contains("is not Ferry's") && msg.contains(ORIGINAL), "{msg}");
    assert_eq!(restore(dir.path(), None).expect("restore"), [(folder.join("hosts.toml"), Restored::Conflict)]);
    assert_eq!(std::fs::read(folder.join(ORIGINAL)).expect("kept"), OPERATORS);
    assert_eq!(std::fs::read_to_string(folder.join("hosts.toml")).expect("read"), "server = \"https://newer\"\n");
}

#[test]
fn an_apply_stopped_after_keeping_the_original_is_finished_by_the_next() {
    // kill -9 between keeping the operator's file and renaming Ferry's over it.
    let (dir, folder) = with_operators_file();
    std::fs::hard_link(folder.join("hosts.toml"), folder.join(ORIGINAL)).expect("kept");
    std::fs::write(folder.join(".hosts.toml.tmp"), "half").expect("a torn temp file");
    assert_eq!(apply(dir.path(), "reg.local", &ours("http://a")).expect("apply").1, Applied::Replaced);
    assert!(std::fs::read_to_string(folder.join("hosts.toml")).expect("read").starts_with(MARK));
    assert_eq!(listing(dir.path()), ["reg.local", "reg.local/hosts.toml", "reg.local/hosts.toml.ferry-orig"]);
    restore(dir.path(), None).expect("restore");
    assert_eq!(std::fs::read(folder.join("hosts.toml")).expect("put back"), OPERATORS);
}

#[test]
fn a_failed_write_leaves_the_operators_file_in_place() {
    let (dir, folder) = with_operators_file();
    // The temp file's name is taken by a folder: the write fails before anything changed.
    std::fs::create_dir(folder.join(".hosts.toml.tmp")).expect("mkdir");
    let err = apply(dir.path(), "reg.local", &ours("http://a")).expect_err("cannot write");
    assert!(format!("{err:#}").contains(".hosts.toml.tmp"), "{err:#}");
    assert_eq!(std::fs::read(folder.join("hosts.toml")).expect("still there"), OPERATORS);
    assert!(!folder.join(ORIGINAL).exists());
}

#[test]
fn the_original_comes_back_when_ferrys_file_was_removed_by_hand() {
    let (dir, folder) = with_operators_file();
    apply(dir.path(), "reg.local", &ours("http://a")).expect("apply");
    std::fs::remove_file(folder.join("hosts.toml")).expect("rm");
    assert_eq!(restore(dir.path(), None).expect("restore"), [(folder.join("hosts.toml"), Restored::PutBack)]);
    assert_eq!(std::fs::read(folder.join("hosts.toml")).expect("read"), OPERATORS);
}

#[test]
fn restore_of_some_registries_leaves_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    apply(dir.path(), "reg.local", &ours("http://a")).expect("apply");
    apply(dir.path(), "docker.io", &ours("http://a")).expect("apply");
    let done = restore(dir.path(), Some(&["reg.local".to_string()])).expect("restore");
    assert_eq!(done, [(dir.path().join("reg.local/hosts.toml"), Restored::Removed)]);
    assert_eq!(listing(dir.path()), ["docker.io", "docker.io/hosts.toml"]);
    assert!(restore(&dir.path().join("missing"), None).expect("no folder").is_empty());
}
