//! The part of containerd's filter syntax snapshot listings use: a filter is comma-separated
//! conditions that must all hold — `field==value`, `field!=value`, or `field` (present) — over
//! `name`, `parent`, `kind` and `labels.<key>` (the key may be quoted: `labels."a.b/c"`).
//! A listing returns the snapshots that match any filter; no filters match everything.

use super::meta::{Info, Kind};

/// Whether `info` matches any of `filters` (or there are none).
pub fn matches_any(filters: &[String], info: &Info) -> bool {
    filters.is_empty() || filters.iter().any(|f| f.split(',').all(|c| condition(c.trim(), info)))
}

fn field<'a>(info: &'a Info, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    let kind = |k: Kind| match k {
        Kind::View => "view",
        Kind::Active => "active",
        Kind::Committed => "committed",
    };
    match name {
        "name" => Some(info.name.as_str().into()),
        "parent" => info.parent.as_deref().map(Into::into),
        "kind" => Some(kind(info.kind).into()),
        _ => {
            let key = name.strip_prefix("labels.")?;
            let key = key.strip_prefix('"').and_then(|k| k.strip_suffix('"')).unwrap_or(key);
            info.labels.get(key).map(|v| v.as_str().into())
        }
    }
}

fn condition(c: &str, info: &Info) -> bool {
    let unquote = |v: &str| v.trim().trim_matches('"').to_string();
    if let Some((f, v)) = c.split_once("!=") {
        return field(info, f.trim()).is_none_or(|x| x != unquote(v));
    }
    if let Some((f, v)) = c.split_once("==") {
        let f = f.trim();
        // containerd's metadata asks the backend for `parent==""` when looking for the committed
        // remote snapshot of a base layer: no parent is the empty parent.
        if f == "parent" && info.parent.is_none() {
            return unquote(v).is_empty();
        }
        return field(info, f).is_some_and(|x| x == unquote(v));
    }
    field(info, c).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_combine_as_containerd_filters_do() {
        let now = std::time::SystemTime::now();
        let info = Info {
            name: "layer-2".into(),
            parent: Some("layer-1".into()),
            kind: Kind::Committed,
            created: now,
            updated: now,
            labels: [("containerd.io/gc.root".to_string(), "x".to_string())].into_iter().collect(),
        };
        let f = |s: &[&str]| matches_any(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>(), &info);
        assert!(f(&[]));
        assert!(f(&["parent==layer-1"]));
        assert!(f(&["kind==committed,name==layer-2"]));
        assert!(!f(&["kind==active"]));
        assert!(f(&["kind==active", "name==layer-2"]), "any filter");
        assert!(f(&[r#"labels."containerd.io/gc.root""#]));
        assert!(!f(&["labels.other"]));
        assert!(f(&["parent!=layer-0"]));
        assert!(!f(&["name==\"layer-3\""]));
        assert!(!f(&[r#"parent==""#]));
        let base = Info { parent: None, ..info.clone() };
        let remote = r#"labels."containerd.io/gc.root"==x,parent==""#;
        assert!(matches_any(&[remote.to_string()], &base), "the filter containerd walks a remote base layer with");
    }
}
