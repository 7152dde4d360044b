use std::process::Command;

use super::*;

/// A tar written by GNU tar (`--format` as given) of a tree with long names, links and xattrs.
fn gnu_tar(format: &str) -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let long = "d".repeat(120);
    std::fs::create_dir_all(root.join(&long)).expect("mkdir");
    std::fs::write(root.join(&long).join("f".repeat(150)), b"long name content").expect("write");
    std::fs::write(root.join("data"), vec![7u8; 1000]).expect("write");
    std::fs::write(root.join("empty"), b"").expect("write");
    std::os::unix::fs::symlink("data", root.join("link")).expect("symlink");
    std::fs::hard_link(root.join("data"), root.join("hard")).expect("hardlink");
    xattr_set(&root.join("data")).expect("setfattr (Debian package attr) sets a user xattr");
    let out = dir.path().join("out.tar");
    let mut cmd = Command::new("tar");
    if format == "posix" {
        cmd.args(["--xattrs", "--xattrs-include=user.*"]);
    }
    let status =
        cmd.args(["--sort=name", &format!("--format={format}"), "-cf"]).arg(&out).arg("-C").arg(&root).arg(".").status().expect("run tar");
    assert!(status.success());
    let bytes = std::fs::read(&out).expect("read");
    (dir, bytes)
}

fn xattr_set(path: &std::path::Path) -> std::io::Result<()> {
    let ok = Command::new("setfattr").args(["-n", "user.ferry", "-v", "yes"]).arg(path).status()?.success();
    ok.then_some(()).ok_or_else(|| std::io::Error::other("setfattr failed"))
}

fn read_all(bytes: &[u8]) -> Result<Vec<(TarEntry, Vec<u8>)>, Error> {
    let mut r = TarReader::new(bytes);
    let mut out = Vec::new();
    while let Some(e) = r.next_entry()? {
        let mut content = Vec::new();
        let mut buf = [0u8; 100];
        loop {
            let n = r.content(&mut buf)?;
            if n == 0 {
                break;
            }
            content.extend_from_slice(&buf[..n]);
        }
        out.push((e, content));
    }
    Ok(out)
}

#[test]
fn reads_gnu_and_pax_archives_with_long_names_links_and_xattrs() {
    for format in ["gnu", "posix"] {
        let (_dir, bytes) = gnu_tar(format);
        let entries = read_all(&bytes).expect("parse");
        let find = |suffix: &str| {
            entries.iter().find(|(e, _)| e.path.trim_end_matches('/').ends_with(suffix)).unwrap_or_else(|| panic!("{format}: no {suffix}"))
        };
        let (long, content) = find(&"f".repeat(150));
        assert_eq!(long.kind, Some(Kind::Reg));
        assert!(long.path.len() > 250, "{format}: long path kept: {}", long.path);
        assert_eq!(content, b"long name content");
        let (data, content) = find("/data");
        assert_eq!((data.size, content.len()), (1000, 1000));
        let (link, _) = find("/link");
        assert_eq!((link.kind, link.link_name.as_str()), (Some(Kind::Symlink), "data"));
        let (hard, content) = find("/hard");
        assert_eq!(hard.kind, Some(Kind::Hardlink));
        assert!(content.is_empty());
        assert_eq!(find("/empty").0.size, 0);
        assert!(entries.iter().all(|(e, _)| e.header_bytes.len() % 512 == 0 && !e.header_bytes.is_empty()));
        if format == "posix" {
            assert_eq!(data.xattrs.get("user.ferry").map(Vec::as_slice), Some(&b"yes"[..]));
        }
    }
}

#[test]
fn damaged_archives_are_refused() {
    let (_dir, bytes) = gnu_tar("posix");
    let mut flipped = bytes.clone();
    flipped[10] ^= 0x20; // inside the first header's name: checksum no longer matches
    assert!(read_all(&flipped).is_err(), "checksum mismatch accepted");
    let first = read_all(&bytes).expect("parse");
    let total_headers: usize = first.iter().map(|(e, _)| e.header_bytes.len()).sum();
    for cut in [100, 700, total_headers + 300] {
        assert!(read_all(&bytes[..cut.min(bytes.len() - 1)]).is_err(), "truncated at {cut} accepted");
    }
    let mut huge = vec![0u8; 512];
    huge[..4].copy_from_slice(b"file");
    huge[124..136].copy_from_slice(b"77777777777\0"); // 8 GiB: fine
    huge[156] = b'x';
    let sum: u32 = huge.iter().enumerate().map(|(i, &c)| if (148..156).contains(&i) { 32 } else { u32::from(c) }).sum();
    huge[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    assert!(matches!(read_all(&huge), Err(Error::TooLarge { .. })), "an 8 GiB PAX header must be refused before allocating");
}
