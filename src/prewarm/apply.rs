//! `ferry prewarm apply` and `status`: the plan's warm nodes become signed orders, handed to the
//! local node's admin socket wave by wave; the nodes' progress is shown until every order ends or
//! the timeout passes, then a report per node.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use p2p_node::prewarm::order::{Order, OrderProgress, OrderState, SignedOrder, SigningKey};
use p2p_node::prewarm::{human_bytes, Plan};
use registry_proxy::admin::{deliver_orders, order_progress, prewarm_status};
use registry_proxy::prewarm::{Delivery, ProgressQuery, Report};

use super::keys;
use crate::cli::{AdminFlags, ApplyArgs, OutputFormat, PrewarmStatusArgs};
use crate::config;

const POLL: Duration = Duration::from_millis(500);

/// What became of one order, for the report.
#[derive(Debug, serde::Serialize)]
struct Outcome {
    node: String,
    image: String,
    wave: u32,
    /// `done`, `failed`, `refused`, `undelivered`, or `timeout` (still going at the end).
    result: String,
    why: Option<String>,
    bytes: u64,
    seconds: f64,
}

pub async fn apply(args: ApplyArgs) -> Result<()> {
    let socket = admin_socket(&args.admin)?;
    let key = keys::load(&args.key)?;
    let plan: Plan = {
        let (name, text) = super::read(&args.plan)?;
        serde_json::from_str(&text).with_context(|| format!("{name}: not a plan from `ferry prewarm plan -o`"))?
    };
    let rate = match &args.rate {
        Some(r) => Some(config::parse_capacity(r, Path::new("/")).context("--rate")?),
        None => None,
    };
    let max = p2p_node::prewarm::order::MAX_VALIDITY;
    anyhow::ensure!((60..=max).contains(&args.valid_for.as_secs()), "--valid-for must be between 1 minute and {} hours", max / 3600);
    let waves = orders(&plan, &args, rate, &key)?;
    if waves.is_empty() {
        bail!("the plan warms no node{}", if args.nodes.is_empty() { "" } else { " of those given with --node" });
    }
    let deadline = Instant::now() + args.timeout;
    let bars = MultiProgress::new();
    let mut outcomes = Vec::new();
    for (wave, signed) in waves {
        let deliveries: Vec<Delivery> = deliver_orders(&socket, &signed).await.context("delivering orders")?;
        let mut waiting = BTreeMap::new();
        for (d, s) in deliveries.into_iter().zip(&signed) {
            let order = s.peek().map_err(|e| anyhow::anyhow!("{e}"))?;
            if d.accepted {
                waiting.insert(d.id.clone(), (order, bar(&bars, &d.node, wave)));
            } else {
                let why = d.why.unwrap_or_default();
                let result = if d.reached { "refused" } else { "undelivered" };
                outcomes.push(Outcome {
                    node: d.node,
                    image: order.image,
                    wave,
                    result: result.into(),
                    why: Some(why),
                    bytes: 0,
                    seconds: 0.0,
                });
            }
        }
        outcomes.extend(follow(&socket, waiting, deadline).await?);
    }
    bars.clear().ok();
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&outcomes)?),
        OutputFormat::Text => print!("{}", render(&outcomes)),
    }
    let bad = outcomes.iter().filter(|o| o.result != "done").count();
    if bad > 0 {
        bail!("{bad} of {} orders did not finish", outcomes.len());
    }
    Ok(())
}

/// The plan's signed orders, by wave.
fn orders(plan: &Plan, args: &ApplyArgs, rate: Option<u64>, key: &SigningKey) -> Result<BTreeMap<u32, Vec<SignedOrder>>> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut waves: BTreeMap<u32, Vec<SignedOrder>> = BTreeMap::new();
    for image in &plan.images {
        for node in image.warm().filter(|n| args.nodes.is_empty() || args.nodes.contains(&n.node)) {
            let wave = node.wave.unwrap_or(0);
            let order = Order {
                id: keys::order_id()?,
                node: node.node.clone(),
                image: full_reference(&image.image),
                wave,
                issued_at: now,
                expires_at: now + args.valid_for.as_secs(),
                rate,
            };
            waves.entry(wave).or_default().push(key.sign(&order));
        }
    }
    Ok(waves)
}

/// An image as Kubernetes names it, with the registry host the node's mirror knows it by:
/// `nginx:1` is `docker.io/library/nginx:1`.
fn full_reference(image: &str) -> String {
    let first = image.split('/').next().unwrap_or_default();
    let has_host = image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    match (has_host, image.contains('/')) {
        (true, _) => image.to_string(),
        (false, true) => format!("docker.io/{image}"),
        (false, false) => format!("docker.io/library/{image}"),
    }
}

fn bar(bars: &MultiProgress, node: &str, wave: u32) -> ProgressBar {
    let bar = bars.add(ProgressBar::new(0));
    let style = ProgressStyle::with_template("{prefix:>24} [{bar:30}] {bytes}/{total_bytes} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("{node} (wave {wave})"));
    bar
}

/// Polls the nodes until each order ends or `deadline`.
async fn follow(socket: &Path, mut waiting: BTreeMap<String, (Order, ProgressBar)>, deadline: Instant) -> Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    let mut last: BTreeMap<String, OrderProgress> = BTreeMap::new();
    while !waiting.is_empty() {
        let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, (order, _)) in &waiting {
            by_node.entry(order.node.clone()).or_default().push(id.clone());
        }
        let queries: Vec<ProgressQuery> = by_node.into_iter().map(|(node, ids)| ProgressQuery { node, ids }).collect();
        let reports: Vec<Report> = order_progress(socket, &queries).await.context("asking for progress")?;
        for p in reports.into_iter().flat_map(|r| r.orders) {
            let Some((_, bar)) = waiting.get(&p.id) else { continue };
            bar.set_length(p.total_bytes);
            bar.set_position(p.done_bytes);
            bar.set_message(state_word(&p.state).to_string());
            if p.state.is_final() {
                bar.finish();
                if let Some((order, _)) = waiting.remove(&p.id) {
                    outcomes.push(outcome(&order, &p));
                }
            } else {
                last.insert(p.id.clone(), p);
            }
        }
        if Instant::now() >= deadline {
            for (id, (order, bar)) in std::mem::take(&mut waiting) {
                bar.abandon();
                let (bytes, seconds) = last.get(&id).map(|p| (p.done_bytes, p.seconds)).unwrap_or_default();
                let why = Some("still going at the timeout (see `ferry prewarm status`)".to_string());
                outcomes.push(Outcome {
                    node: order.node,
                    image: order.image,
                    wave: order.wave,
                    result: "timeout".into(),
                    why,
                    bytes,
                    seconds,
                });
            }
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(outcomes)
}

fn outcome(order: &Order, p: &OrderProgress) -> Outcome {
    let (result, why) = match &p.state {
        OrderState::Done => ("done", None),
        OrderState::Failed(w) => ("failed", Some(w.clone())),
        _ => ("timeout", None),
    };
    Outcome {
        node: order.node.clone(),
        image: order.image.clone(),
        wave: order.wave,
        result: result.into(),
        why,
        bytes: p.done_bytes,
        seconds: p.seconds,
    }
}

fn state_word(s: &OrderState) -> &'static str {
    match s {
        OrderState::Queued => "queued",
        OrderState::Priority => "startup chunks",
        OrderState::Layers => "layers",
        OrderState::Done => "done",
        OrderState::Failed(_) => "failed",
    }
}

fn render(outcomes: &[Outcome]) -> String {
    let mut out = format!("{:<24} {:<4} {:<12} {:>10} {:>8}  {}\n", "NODE", "WAVE", "RESULT", "BYTES", "SECONDS", "IMAGE");
    for o in outcomes {
        out.push_str(&format!(
            "{:<24} {:<4} {:<12} {:>10} {:>8.1}  {}{}\n",
            o.node,
            o.wave,
            o.result,
            human_bytes(o.bytes),
            o.seconds,
            o.image,
            o.why.as_deref().map(|w| format!(" ({w})")).unwrap_or_default()
        ));
    }
    let done = outcomes.iter().filter(|o| o.result == "done").count();
    out.push_str(&format!("{done} of {} orders done\n", outcomes.len()));
    out
}

pub async fn status(args: PrewarmStatusArgs) -> Result<()> {
    let socket = admin_socket(&args.admin)?;
    let reports: Vec<Report> = prewarm_status(&socket).await?;
    if args.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    let mut out = format!("{:<24} {:<16} {:<4} {:<15} {:>21} {:>8}  {}\n", "NODE", "ORDER", "WAVE", "STATE", "BYTES", "SECONDS", "IMAGE");
    for r in &reports {
        if let Some(e) = &r.error {
            out.push_str(&format!("{:<24} cannot be asked: {e}\n", r.node));
        }
        if r.orders.is_empty() && r.error.is_none() {
            out.push_str(&format!("{:<24} no orders\n", r.node));
        }
        for p in &r.orders {
            let state = match &p.state {
                OrderState::Failed(w) => format!("failed: {w}"),
                s => state_word(s).to_string(),
            };
            let bytes = format!("{}/{}", human_bytes(p.done_bytes), human_bytes(p.total_bytes));
            out.push_str(&format!(
                "{:<24} {:<16} {:<4} {:<15} {:>21} {:>8.1}  {}\n",
                r.node,
                p.id.chars().take(16).collect::<String>(),
                p.wave,
                state,
                bytes,
                p.seconds,
                p.image
            ));
        }
    }
    print!("{out}");
    Ok(())
}

fn admin_socket(flags: &AdminFlags) -> Result<std::path::PathBuf> {
    Ok(config::load(&flags.node_flags())?.admin.socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_image_names_get_their_registry() {
        assert_eq!(full_reference("nginx:1.25"), "docker.io/library/nginx:1.25");
        assert_eq!(full_reference("pytorch/pytorch:2.4"), "docker.io/pytorch/pytorch:2.4");
        assert_eq!(full_reference("registry.local/ml/llm:1"), "registry.local/ml/llm:1");
        assert_eq!(full_reference("localhost:5000/x"), "localhost:5000/x");
    }
}
