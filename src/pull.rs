//! `ferry pull IMAGE`: reads where the node's mirror listens from the node's configuration and
//! hands over to `snapshotter::pull`.

use anyhow::{Context, Result};
use snapshotter::pull::{ImageRef, LayerOutcome, PullOptions};

use crate::cli::{OutputFormat, PullArgs};
use crate::config;

pub async fn run(args: PullArgs) -> Result<()> {
    let image = ImageRef::parse(&args.image)?;
    let file = config::load(&args.mirror.node_flags())?;
    let opts = PullOptions {
        mirror: format!("http://{}", file.registry.listen),
        containerd: args.address.clone(),
        namespace: args.namespace.clone(),
        snapshotter: args.snapshotter.clone(),
    };
    let report = snapshotter::pull::pull(&image, &opts).await.with_context(|| format!("pulling {image}"))?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => {
            for l in &report.layers {
                let how = match l.outcome {
                    LayerOutcome::Lazy => "lazy: mounted, fetched on demand",
                    LayerOutcome::Unpacked => "downloaded and unpacked",
                    LayerOutcome::Present => "already there",
                };
                println!("{}  {:>12} bytes  {how}", l.digest, l.size);
            }
            println!("{} ({}) ready in {:.1}s on snapshotter {:?}", report.image, report.manifest, report.seconds, opts.snapshotter);
        }
    }
    Ok(())
}
