//! Scores as the scheduler's scoring plugins compute them, in integer points, plus Ferry's own
//! preferences; and the dense resource vectors that make fit and score cheap.
//!
//! Points (the scheduler's plugin weights in brackets): resource fit 0..100 by [`Strategy`] over
//! cpu, memory (weight 1 each) and every GPU-like resource the pod requests (weight
//! [`Policy::gpu_weight`](super::Policy), 3 by default) [×1];
//! preferred node affinity normalized to 0..100 [×2]; untolerated `PreferNoSchedule` taints,
//! reversed to 0..100 [×3]; the policy's pool order, [`POOL_POINTS`] per level, so that an earlier
//! pool always wins; and in thousandths of a point: the cache bonus (below one point by default)
//! and the per-run perturbation.
//!
//! Invariant: integer arithmetic only, so a score is the same on every machine.

use super::cluster::Node;
use super::{Quantity, Rollout, Strategy};

/// Thousandths of a point: the unit of a sort key.
pub(crate) const POINT: i64 = 1000;
/// Points per pool level: larger than every other score combined.
pub(crate) const POOL_POINTS: i64 = 100_000;
/// The scheduler scores a pod without a cpu/memory request as if it asked for this much.
const DEFAULT_CPU_MILLI: i128 = 100;
const DEFAULT_MEMORY_MILLI: i128 = 200 * 1024 * 1024 * 1000;

/// Resources whose scarcity matters most: GPUs, MIG slices, shared GPU memory.
pub(crate) fn is_gpu_like(name: &str) -> bool {
    name.starts_with("nvidia.com/") || name.contains("gpu")
}

/// The resource names seen anywhere, as dense indices.
#[derive(Debug)]
pub(crate) struct Dims {
    pub names: Vec<String>,
    pub cpu: usize,
    pub memory: usize,
    pub pods: usize,
}

impl Dims {
    pub fn new(nodes: &[Node], rollouts: &[Rollout]) -> Dims {
        const FIRST: [&str; 3] = ["cpu", "memory", "pods"];
        let all: std::collections::BTreeSet<&str> = nodes
            .iter()
            .flat_map(|n| n.allocatable.keys().chain(n.requested.keys()))
            .chain(rollouts.iter().flat_map(|r| r.pod.requests.keys()))
            .map(String::as_str)
            .filter(|n| !FIRST.contains(n))
            .collect();
        let names = FIRST.into_iter().chain(all).map(String::from).collect();
        Dims { names, cpu: 0, memory: 1, pods: 2 }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// `resources` as a dense vector of milli-units.
    pub fn dense(&self, resources: &super::Resources) -> Vec<i128> {
        let mut v = vec![0; self.len()];
        for (name, q) in resources {
            if let Some(i) = self.index(name) {
                v[i] += q.milli();
            }
        }
        v
    }
}

/// A pod's request in dense form, and the dimensions its score looks at.
#[derive(Debug)]
pub(crate) struct PodReq {
    /// (dim, milli) for every resource requested, GPU-like ones first, `pods` (one) last.
    pub req: Vec<(usize, i128)>,
    /// (dim, weight, amount counted for scoring).
    pub scored: Vec<(usize, i64, i128)>,
}

impl PodReq {
    /// `gpu_weight`: weight of each GPU-like resource in the fit score (cpu and memory weigh 1);
    /// 0 leaves them out, as the scheduler's default configuration does.
    pub fn new(dims: &Dims, rollout: &Rollout, gpu_weight: u32) -> PodReq {
        let mut req: Vec<(usize, i128)> = Vec::new();
        for (name, q) in &rollout.pod.requests {
            if let Some(i) = dims.index(name) {
                req.push((i, q.milli()));
            }
        }
        if !req.iter().any(|(d, _)| *d == dims.pods) {
            req.push((dims.pods, 1000));
        }
        // Scarce resources first, so that a refusal names the GPU rather than the CPU.
        req.sort_by_key(|(d, _)| (!is_gpu_like(&dims.names[*d]), *d == dims.pods, *d));
        let amount = |d: usize| req.iter().find(|(x, _)| *x == d).map_or(0, |(_, a)| *a);
        let mut scored =
            vec![(dims.cpu, 1, amount(dims.cpu).max(DEFAULT_CPU_MILLI)), (dims.memory, 1, amount(dims.memory).max(DEFAULT_MEMORY_MILLI))];
        for &(d, a) in &req {
            if gpu_weight > 0 && is_gpu_like(&dims.names[d]) {
                scored.push((d, i64::from(gpu_weight), a));
            }
        }
        PodReq { req, scored }
    }
}

/// Whether the pod fits `alloc − used − extra`; else the first resource that does not, with
/// (need, free). `extra` is what a simulation run placed on top of `used`.
pub(crate) fn fits(alloc: &[i128], used: &[i128], extra: Option<&[i128]>, pod: &PodReq) -> Result<(), (usize, Quantity, Quantity)> {
    for &(d, need) in &pod.req {
        let free = alloc[d] - used[d] - extra.map_or(0, |e| e[d]);
        if free < need {
            return Err((d, Quantity::from_milli(need), Quantity::from_milli(free)));
        }
    }
    Ok(())
}

/// Resource-fit points 0..100 after placing the pod, as `LeastAllocated`/`MostAllocated` compute
/// them (integer division, weighted mean).
pub(crate) fn fit_points(strategy: Strategy, alloc: &[i128], used: &[i128], extra: Option<&[i128]>, pod: &PodReq) -> i64 {
    let (mut sum, mut weights) = (0i128, 0i128);
    for &(d, w, amount) in &pod.scored {
        let a = alloc[d];
        if a <= 0 {
            continue;
        }
        let after = (used[d] + extra.map_or(0, |e| e[d]) + amount).clamp(0, a);
        let s = match strategy {
            Strategy::Spread => (a - after) * 100 / a,
            Strategy::Binpack => after * 100 / a,
        };
        sum += s * i128::from(w);
        weights += i128::from(w);
    }
    if weights == 0 {
        0
    } else {
        (sum / weights) as i64
    }
}

/// The points that do not change while pods are placed: preferred affinity (given the largest
/// raw sum among candidates), `PreferNoSchedule` taints (given the most among candidates) and
/// pool level; in thousandths of a point.
pub(crate) fn fixed_key(preferred: u32, max_preferred: u32, taints: usize, max_taints: usize, pool_level: i64) -> i64 {
    let affinity = if max_preferred == 0 { 0 } else { i64::from(preferred) * 100 / i64::from(max_preferred) };
    let taint = if max_taints == 0 { 100 } else { (max_taints - taints) as i64 * 100 / max_taints as i64 };
    (affinity * 2 + taint * 3 + pool_level * POOL_POINTS) * POINT
}

/// splitmix64: the planner's only source of variation, seeded.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The perturbation stream of one (run, rollout): `jitter(stream, node)` is in `0..amplitude`.
pub(crate) fn stream(seed: u64, run: u32, rollout: usize) -> u64 {
    splitmix64(splitmix64(seed ^ u64::from(run)) ^ rollout as u64)
}

pub(crate) fn jitter(stream: u64, node: u32, amplitude: u32) -> i64 {
    if amplitude == 0 {
        return 0;
    }
    (splitmix64(stream ^ u64::from(node)) % u64::from(amplitude)) as i64
}
