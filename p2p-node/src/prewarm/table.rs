//! The plan as a person reads it: a fixed-width table per image.

use std::fmt::Write as _;

use super::plan::{ImagePlan, Plan};
use super::quantity::human_bytes;

/// Ranked rows shown beyond the nodes to warm.
const EXTRA_ROWS: usize = 3;
/// Ineligible nodes shown as examples.
const EXAMPLES: usize = 5;

impl Plan {
    /// A fixed-width table per image: rank, node, region, score, likelihood, missing bytes,
    /// wave, reasons; then the ineligible nodes counted by reason, with a few examples.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        for (i, image) in self.images.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            render_image(&mut out, image);
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }
}

fn render_image(out: &mut String, image: &ImagePlan) {
    let _ = writeln!(out, "image {}", image.image);
    for r in &image.rollouts {
        let unplaced = if r.unplaced > 0 { format!(", {} pods found no node", r.unplaced) } else { String::new() };
        let _ = writeln!(out, "  {:?} {}/{}: {} pods, {} eligible nodes{unplaced}", r.kind, r.namespace, r.name, r.replicas, r.eligible);
    }
    let size = image.size_bytes.map(|b| format!(" ({} image)", human_bytes(b))).unwrap_or_default();
    let _ = writeln!(out, "  warm {} of {} eligible nodes{size}", image.budget, image.eligible);
    let rows: Vec<_> = image.ranked.iter().take(image.budget + EXTRA_ROWS).collect();
    if !rows.is_empty() {
        let node_w = rows.iter().map(|r| r.node.len()).max().unwrap_or(0).max(4);
        let region_w = rows.iter().map(|r| r.region.len()).max().unwrap_or(0).max(6);
        let _ = writeln!(
            out,
            "  {:>4}  {:<node_w$}  {:<region_w$}  {:>9}  {:>6}  {:>8}  {:>4}  reasons",
            "rank", "node", "region", "score", "likely", "missing", "wave"
        );
        for r in rows {
            let missing = r.missing_bytes.map_or_else(|| "?".to_string(), human_bytes);
            let wave = r.wave.map_or_else(|| "-".to_string(), |w| w.to_string());
            let likely = format!("{:.0}%", r.likelihood * 100.0);
            let _ = writeln!(
                out,
                "  {:>4}  {:<node_w$}  {:<region_w$}  {:>9.1}  {:>6}  {:>8}  {:>4}  {}",
                r.rank,
                r.node,
                r.region,
                r.score,
                likely,
                missing,
                wave,
                r.reasons.join("; ")
            );
        }
        let more = image.eligible.saturating_sub(image.budget + EXTRA_ROWS);
        if more > 0 {
            let _ = writeln!(out, "  … {more} more eligible nodes");
        }
    }
    if image.ineligible_total > 0 {
        let _ = writeln!(out, "  ineligible: {} nodes", image.ineligible_total);
        let mut counts: Vec<_> = image.ineligible_counts.iter().collect();
        counts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (reason, count) in &counts {
            let _ = writeln!(out, "  {count:>6}  {reason}");
        }
        // One example per kind of reason, the most common kinds first.
        for (kind, _) in counts.iter().take(EXAMPLES) {
            if let Some(e) = image.ineligible.iter().find(|e| &&e.kind == kind) {
                let _ = writeln!(out, "    e.g. {}: {}", e.node, e.reason);
            }
        }
    }
}
