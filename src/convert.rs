//! `ferry convert SRC DST`: glue between the registry client (registry-proxy) and the converter
//! (snapshotter), which do not know each other. A registry source is first pulled into a temp
//! OCI layout; a registry destination is pushed from one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use registry_proxy::names::{Reference, Repo};
use registry_proxy::upstream::Upstream;
use registry_proxy::{MirrorSettings, UpstreamSettings};
use snapshotter::convert::oci::{self, Descriptor, Layout, MT_OCI_MANIFEST};
use snapshotter::convert::{convert_image, ConvertOptions, Priorities, Progress, Report};
use snapshotter::zstd_chunked::WriteOptions;

use crate::cli::{ConvertArgs, OutputFormat};

/// Where an image is: an OCI layout directory, or a registry.
#[derive(Debug, Clone, PartialEq)]
enum Location {
    Layout { dir: PathBuf, tag: String },
    Registry { host: String, repo: Repo, reference: Reference },
}

fn parse_location(s: &str) -> Result<Location> {
    if let Some(rest) = s.strip_prefix("oci:") {
        let (dir, tag) = match rest.rsplit_once(':') {
            Some((d, t)) if !t.contains('/') => (d, t),
            _ => (rest, "latest"),
        };
        if dir.is_empty() {
            bail!("{s:?}: expected oci:DIR[:TAG]");
        }
        return Ok(Location::Layout { dir: dir.into(), tag: tag.into() });
    }
    let (host, path) = s.split_once('/').with_context(|| format!("{s:?}: expected HOST/REPO[:TAG] or oci:DIR[:TAG]"))?;
    if !(host.contains('.') || host.contains(':') || host == "localhost") {
        bail!("{s:?}: name the registry host (e.g. registry.example.com/{s})");
    }
    let (repo, reference) = if let Some((r, d)) = path.split_once('@') {
        (r, d)
    } else {
        match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (path, "latest"),
        }
    };
    Ok(Location::Registry { host: host.into(), repo: Repo::parse(repo)?, reference: Reference::parse(reference)? })
}

fn upstream_for(host: &str, args: &ConvertArgs) -> Result<Arc<Upstream>> {
    let loopback = host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]");
    let scheme = if args.plain_http || loopback { "http" } else { "https" };
    let docker_config = args.docker_config.clone().or_else(|| {
        let p = PathBuf::from(std::env::var_os("HOME")?).join(".docker/config.json");
        p.is_file().then_some(p)
    });
    let settings = MirrorSettings {
        upstreams: vec![UpstreamSettings::parse(&format!("{host}={scheme}://{host}"))?],
        extra_ca_files: args.upstream_cas.clone(),
        docker_config,
        ..MirrorSettings::default()
    };
    Ok(registry_proxy::upstream::Upstreams::new(&settings)?.select(Some(host))?)
}

/// Pulls a single-platform image (linux/amd64 from an index) into `layout` as `tag`.
async fn pull(up: &Upstream, repo: &Repo, reference: &Reference, layout: &Layout, tag: &str) -> Result<()> {
    let mut m = up.get_manifest(repo, reference).await?;
    let v: serde_json::Value = serde_json::from_slice(&m.bytes).context("the manifest is not JSON")?;
    if oci::is_index(&m.media_type, &v) {
        let list: Vec<Descriptor> = serde_json::from_value(v["manifests"].clone()).context("reading the image index")?;
        let pick = oci::pick_platform(&list).context("the image index has no linux/amd64 image")?;
        m = up.get_manifest(repo, &Reference::Digest(pick.digest)).await?;
    }
    let manifest: serde_json::Value = serde_json::from_slice(&m.bytes).context("the manifest is not JSON")?;
    let mut blobs: Vec<Descriptor> = serde_json::from_value(manifest["layers"].clone()).context("reading the manifest's layers")?;
    blobs.push(serde_json::from_value(manifest["config"].clone()).context("reading the manifest's config")?);
    for b in &blobs {
        if layout.has_blob(&b.digest) {
            continue;
        }
        let temp = layout.temp_path(&b.digest.hex()[..12]);
        up.download_blob(repo, &b.digest, &temp).await.with_context(|| format!("pulling {}", b.digest))?;
        layout.commit_temp(&temp, &b.digest)?;
    }
    layout.put_bytes(&m.bytes)?;
    let desc = Descriptor {
        media_type: m.media_type,
        digest: m.digest,
        size: m.bytes.len() as u64,
        annotations: Default::default(),
        platform: None,
    };
    layout.tag(&desc, tag)?;
    Ok(())
}

/// Pushes the converted image's blobs (those the registry lacks) and its manifest.
async fn push(up: &Upstream, layout: &Layout, report: &Report, repo: &Repo, reference: &Reference) -> Result<()> {
    let manifest_bytes = layout.read_small(&report.manifest_digest)?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes)?;
    let mut blobs: Vec<Descriptor> = serde_json::from_value(manifest["layers"].clone())?;
    blobs.push(serde_json::from_value(manifest["config"].clone())?);
    for b in &blobs {
        if !up.has_blob(repo, &b.digest).await? {
            up.upload_blob(repo, &b.digest, &layout.blob_path(&b.digest)).await.with_context(|| format!("pushing {}", b.digest))?;
        }
    }
    up.put_manifest(repo, &reference.to_string(), manifest_bytes.into(), MT_OCI_MANIFEST).await?;
    Ok(())
}

struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn layer(&mut self, index: usize, count: usize, size: u64) {
        self.0.set_message(format!("layer {}/{count} ({})", index + 1, crate::status::bytes(size)));
    }
    fn advance(&mut self, n: u64) {
        self.0.inc(n);
    }
}

pub async fn run(args: ConvertArgs) -> Result<()> {
    let src = parse_location(&args.src)?;
    let dst = parse_location(&args.dst)?;
    let priorities = match &args.prioritize {
        Some(p) => Priorities::parse(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)?,
        None => Priorities::default(),
    };
    let chunk_size = crate::config::parse_capacity(&args.chunk_size, Path::new("/"))?;
    if !(64 << 10..=64 << 20).contains(&chunk_size) {
        bail!("--chunk-size must be between 64KiB and 64MiB");
    }
    let opts = ConvertOptions { write: WriteOptions { level: args.level, chunk_size, ..WriteOptions::default() }, priorities };
    let tmp_root = args.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("ferry-convert-")
        .tempdir_in(&tmp_root)
        .with_context(|| format!("creating a work folder in {}", tmp_root.display()))?;

    let (src_layout, src_tag) = match &src {
        Location::Layout { dir, tag } => (Layout::open(dir)?, tag.clone()),
        Location::Registry { host, repo, reference } => {
            let layout = Layout::create(&work.path().join("src"))?;
            eprintln!("pulling {}", args.src);
            pull(&*upstream_for(host, &args)?, repo, reference, &layout, "src").await.with_context(|| format!("pulling {}", args.src))?;
            (layout, "src".to_string())
        }
    };
    let (dst_layout, dst_tag) = match &dst {
        Location::Layout { dir, tag } => (Layout::create(dir)?, tag.clone()),
        Location::Registry { .. } => (Layout::create(&work.path().join("dst"))?, "dst".to_string()),
    };
    let total: u64 = source_size(&src_layout, &src_tag).unwrap_or(0);
    let bar = indicatif::ProgressBar::new(total);
    if args.output == OutputFormat::Text {
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let (s, d) = (src_layout.clone(), dst_layout.clone());
    let (st, dt) = (src_tag.clone(), dst_tag.clone());
    let mut progress = Bar(bar.clone());
    let report = tokio::task::spawn_blocking(move || convert_image(&s, &st, &d, &dt, &opts, &mut progress)).await?.context("converting")?;
    bar.finish_and_clear();
    if let Location::Registry { host, repo, reference } = &dst {
        eprintln!("pushing {}", args.dst);
        push(&*upstream_for(host, &args)?, &dst_layout, &report, repo, reference).await.with_context(|| format!("pushing {}", args.dst))?;
    }
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => print_report(&args, &report),
    }
    Ok(())
}

fn source_size(layout: &Layout, tag: &str) -> Option<u64> {
    let desc = layout.resolve(tag).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&layout.read_small(&desc.digest).ok()?).ok()?;
    Some(v["layers"].as_array()?.iter().filter_map(|l| l["size"].as_u64()).sum())
}

fn print_report(args: &ConvertArgs, r: &Report) {
    use crate::status::bytes;
    println!("converted {} -> {} ({})", args.src, args.dst, r.manifest_digest);
    for (i, l) in r.layers.iter().enumerate() {
        println!(
            "  layer {}: {} -> {} ({}), {} files, {} chunks ({} to prefetch)",
            i + 1,
            l.source_digest.short(),
            l.digest.short(),
            bytes(l.size),
            l.files,
            l.chunks,
            l.prefetch_chunks
        );
    }
    let mbs = r.uncompressed_bytes as f64 / 1e6 / r.seconds.max(1e-9);
    println!(
        "  {} compressed before, {} after, {} uncompressed; {:.1} s ({mbs:.0} MB/s)",
        bytes(r.source_bytes),
        bytes(r.converted_bytes),
        bytes(r.uncompressed_bytes),
        r.seconds
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(parse_location("oci:/tmp/img:v1").expect("ok"), Location::Layout { dir: "/tmp/img".into(), tag: "v1".into() });
        assert_eq!(parse_location("oci:relative/dir").expect("ok"), Location::Layout { dir: "relative/dir".into(), tag: "latest".into() });
        let Location::Registry { host, repo, reference } = parse_location("127.0.0.1:5000/test/busybox:1.36").expect("ok") else {
            panic!("registry")
        };
        assert_eq!((host.as_str(), repo.as_str(), reference.to_string().as_str()), ("127.0.0.1:5000", "test/busybox", "1.36"));
        assert!(
            matches!(parse_location("reg.local/a/b").expect("ok"), Location::Registry { reference: Reference::Tag(t), .. } if t == "latest")
        );
        for bad in ["busybox", "library/busybox:1", "oci:", "reg.local/UPPER:x", "reg.local/a@sha256:nothex"] {
            assert!(parse_location(bad).is_err(), "{bad}");
        }
    }
}
