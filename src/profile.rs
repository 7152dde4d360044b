//! `ferry profile IMAGE -- CMD`: reads where the node's mirror listens from the node's
//! configuration, hands over to `snapshotter::profile`, and writes the `--prioritize` file.

use anyhow::{Context, Result};
use snapshotter::profile::ProfileOptions;
use snapshotter::pull::ImageRef;

use crate::cli::ProfileArgs;
use crate::config;

pub async fn run(args: ProfileArgs) -> Result<()> {
    let image = ImageRef::parse(&args.image)?;
    let file = config::load(&args.mirror.node_flags())?;
    let opts = ProfileOptions {
        mirror: file.registry.listen,
        containerd: args.address.clone(),
        namespace: args.namespace.clone(),
        timeout: args.timeout,
        work_dir: std::env::temp_dir(),
    };
    let profile = snapshotter::profile::profile(&image, &args.command, &opts).await.with_context(|| format!("profiling {image}"))?;
    let mut text = format!("# ferry profile {image} -- {}\n", args.command.join(" "));
    for l in &profile.lines {
        text.push_str(l);
        text.push('\n');
    }
    match &args.output {
        Some(path) => std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?,
        None => print!("{text}"),
    }
    let ended = match profile.exit_code {
        Some(code) => format!("exited with {code}"),
        None => format!("was stopped after {:?}", args.timeout),
    };
    eprintln!(
        "the command {ended} after {:.1}s; it read {} chunks ({} MiB) in {} ranges",
        profile.seconds,
        profile.chunks,
        profile.bytes >> 20,
        profile.lines.len()
    );
    Ok(())
}
