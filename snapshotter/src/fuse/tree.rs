//! The inode tree of a lazy layer, built once from its validated TOC: directories the TOC only
//! implies are created, hardlinks share their target's inode, and overlay whiteouts take the form
//! overlayfs reads in a lower layer — `.wh.NAME` becomes a character device 0/0 named NAME, and
//! `.wh..wh..opq` marks its directory opaque (`trusted.overlay.opaque=y`).
//!
//! Pure: no I/O.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use crate::toc::{Kind, Toc};

/// The root directory's inode number (FUSE's).
pub const ROOT: u64 = 1;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    Reg,
    Symlink,
    Char,
    Block,
    Fifo,
    /// An overlay whiteout: a character device 0/0.
    Whiteout,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub kind: NodeKind,
    /// The TOC entry with this node's metadata and content (none for implied dirs, whiteouts).
    pub entry: Option<usize>,
    pub parent: u64,
    pub children: BTreeMap<OsString, u64>,
    pub nlink: u32,
    pub opaque: bool,
}

#[derive(Debug, Clone)]
pub struct Tree {
    /// Node `ino` is `nodes[ino - 1]`.
    pub nodes: Vec<Node>,
}

fn kind_of(k: Kind) -> NodeKind {
    match k {
        Kind::Dir => NodeKind::Dir,
        Kind::Reg | Kind::Hardlink => NodeKind::Reg,
        Kind::Symlink => NodeKind::Symlink,
        Kind::Char => NodeKind::Char,
        Kind::Block => NodeKind::Block,
        Kind::Fifo => NodeKind::Fifo,
    }
}

impl Tree {
    pub fn build(toc: &Toc) -> Tree {
        let mut t = Tree {
            nodes: vec![Node { kind: NodeKind::Dir, entry: None, parent: ROOT, children: BTreeMap::new(), nlink: 2, opaque: false }],
        };
        let mut by_name: BTreeMap<&str, u64> = BTreeMap::new();
        for (i, e) in toc.entries.iter().enumerate() {
            let (dir, base) = match e.name.rsplit_once('/') {
                Some((d, b)) => (t.dir(d), b),
                None => (ROOT, e.name.as_str()),
            };
            if base == OPAQUE {
                t.node_mut(dir).opaque = true;
                continue;
            }
            if let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX) {
                let ino =
                    t.add(Node { kind: NodeKind::Whiteout, entry: None, parent: dir, children: BTreeMap::new(), nlink: 1, opaque: false });
                t.node_mut(dir).children.insert(OsString::from(hidden), ino);
                continue;
            }
            let ino = match e.kind {
                Kind::Hardlink => match by_name.get(e.link_name.as_str()) {
                    Some(&target) => {
                        t.node_mut(target).nlink += 1;
                        target
                    }
                    None => continue, // validation guarantees the target came first
                },
                Kind::Dir => match t.node(dir).children.get(OsStr::new(base)).copied() {
                    // A directory the TOC implied before naming it: give it its metadata.
                    Some(existing) if t.node(existing).kind == NodeKind::Dir => {
                        t.node_mut(existing).entry = Some(i);
                        existing
                    }
                    _ => {
                        t.node_mut(dir).nlink += 1;
                        t.add(Node { kind: NodeKind::Dir, entry: Some(i), parent: dir, children: BTreeMap::new(), nlink: 2, opaque: false })
                    }
                },
                k => t.add(Node { kind: kind_of(k), entry: Some(i), parent: dir, children: BTreeMap::new(), nlink: 1, opaque: false }),
            };
            t.node_mut(dir).children.insert(OsString::from(base), ino);
            by_name.insert(e.name.as_str(), ino);
        }
        t
    }

    pub fn node(&self, ino: u64) -> &Node {
        &self.nodes[(ino - 1) as usize]
    }

    fn node_mut(&mut self, ino: u64) -> &mut Node {
        &mut self.nodes[(ino - 1) as usize]
    }

    /// The node `ino`, if it exists.
    pub fn get(&self, ino: u64) -> Option<&Node> {
        ino.checked_sub(1).and_then(|i| self.nodes.get(i as usize))
    }

    fn add(&mut self, node: Node) -> u64 {
        self.nodes.push(node);
        self.nodes.len() as u64
    }

    /// The directory at clean path `path`, created (implied) where missing.
    fn dir(&mut self, path: &str) -> u64 {
        let mut ino = ROOT;
        for part in path.split('/') {
            let next = self.node(ino).children.get(OsStr::new(part)).copied();
            ino = match next {
                Some(child) if self.node(child).kind == NodeKind::Dir => child,
                _ => {
                    let child = self.add(Node {
                        kind: NodeKind::Dir,
                        entry: None,
                        parent: ino,
                        children: BTreeMap::new(),
                        nlink: 2,
                        opaque: false,
                    });
                    self.node_mut(ino).children.insert(OsString::from(part), child);
                    self.node_mut(ino).nlink += 1;
                    child
                }
            };
        }
        ino
    }

    /// The child `name` of directory `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.get(parent)?.children.get(name).copied()
    }
}

/// The NUL-separated xattr name list of `names`.
pub fn xattr_list<'a>(names: impl Iterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::new();
    for n in names {
        out.extend_from_slice(OsStr::new(n).as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toc::{Entry, Timestamp};

    fn entry(name: &str, kind: Kind, link: &str) -> Entry {
        Entry {
            name: name.into(),
            kind,
            size: 0,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: Timestamp::default(),
            link_name: link.into(),
            dev_major: 0,
            dev_minor: 0,
            xattrs: BTreeMap::new(),
            digest: None,
            chunks: Vec::new(),
        }
    }

    #[test]
    fn implied_dirs_hardlinks_and_whiteouts_take_their_overlay_form() {
        let toc = Toc {
            entries: vec![
                entry("usr/bin/tool", Kind::Reg, ""),
                entry("usr", Kind::Dir, ""),
                entry("usr/bin/alias", Kind::Hardlink, "usr/bin/tool"),
                entry("etc/.wh.old.conf", Kind::Reg, ""),
                entry("var/cache/.wh..wh..opq", Kind::Reg, ""),
            ],
        };
        let t = Tree::build(&toc);
        let usr = t.lookup(ROOT, OsStr::new("usr")).expect("usr");
        assert_eq!(t.node(usr).entry, Some(1), "the implied dir got its TOC metadata");
        let bin = t.lookup(usr, OsStr::new("bin")).expect("bin (implied)");
        let tool = t.lookup(bin, OsStr::new("tool")).expect("tool");
        assert_eq!(t.lookup(bin, OsStr::new("alias")), Some(tool), "a hardlink shares the inode");
        assert_eq!(t.node(tool).nlink, 2);
        let etc = t.lookup(ROOT, OsStr::new("etc")).expect("etc");
        let wh = t.lookup(etc, OsStr::new("old.conf")).expect("the whiteout, by the name it hides");
        assert_eq!(t.node(wh).kind, NodeKind::Whiteout);
        assert!(t.lookup(etc, OsStr::new(".wh.old.conf")).is_none());
        let cache = t.lookup(t.lookup(ROOT, OsStr::new("var")).expect("var"), OsStr::new("cache")).expect("cache");
        assert!(t.node(cache).opaque && t.node(cache).children.is_empty());
        assert_eq!(t.node(ROOT).nlink, 5, "root: 2 + usr, etc, var");
        assert!(t.get(0).is_none() && t.get(999).is_none());
    }
}
