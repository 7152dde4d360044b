//! Placement simulation: the rollouts' pods placed one at a time on the best-scoring feasible
//! node, [`Policy::runs`](super::Policy) times with seeded perturbations.
//!
//! State: what the cluster's pods use (`base`, dense, node × resource) plus, per run, what that
//! run placed (`extra`, sparse). A DaemonSet placed before any run diverged goes into `base`.
//! Per rollout, the filters and the base scores are computed once; a run only rescores the
//! nodes its earlier placements touched.
//!
//! Each run keeps a max-heap of (key, node). Keys only fall while a rollout is placed (spread
//! penalties grow) except for the node just chosen, which is re-pushed with its new key, so a
//! popped entry whose key is still current is the best node. Hard spread constraints park a node
//! until the domain minimum rises; required self anti-affinity drops it for the run.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use super::cluster::Node;
use super::filter::{self, Exclusion};
use super::rollout::{Kind, Rollout, Unsatisfiable};
use super::score::{fit_points, fits, fixed_key, jitter, stream, Dims, PodReq, POINT};
use super::Policy;

/// An eligible node of one rollout.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    pub node: u32,
    /// Score in thousandths of a point before this rollout's pods, perturbation excluded.
    pub key: i64,
}

/// What placing one rollout found.
#[derive(Debug)]
pub(crate) struct Outcome<'a> {
    pub candidates: Vec<Candidate>,
    /// Per candidate: bit `r` set when run `r` placed at least one pod there.
    pub hits: Vec<u64>,
    pub excluded: Vec<(u32, Exclusion<'a>)>,
    /// The most pods any run could not place.
    pub unplaced: u32,
}

enum Rule {
    Hard(u32),
    Soft(i64),
    Anti,
}

/// One spread or anti-affinity constraint during a run.
struct Constraint {
    rule: Rule,
    /// Per candidate: its domain, `u32::MAX` for none.
    domain: Vec<u32>,
    counts: Vec<u32>,
    min: u32,
    at_min: usize,
    parked: Vec<u32>,
}

impl Constraint {
    fn reset(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.min = 0;
        self.at_min = self.counts.len();
        self.parked.clear();
    }

    fn penalty(&self, ci: usize) -> i64 {
        match (&self.rule, self.domain[ci]) {
            (Rule::Soft(points), d) if d != u32::MAX => i64::from(self.counts[d as usize]) * points,
            _ => 0,
        }
    }

    /// Adds a pod in `ci`'s domain; true when the minimum rose (parked nodes may now fit).
    fn add(&mut self, ci: usize) -> bool {
        let d = self.domain[ci];
        if d == u32::MAX {
            return false;
        }
        let c = &mut self.counts[d as usize];
        *c += 1;
        if *c - 1 == self.min {
            self.at_min -= 1;
            if self.at_min == 0 {
                self.min += 1;
                self.at_min = self.counts.iter().filter(|c| **c == self.min).count();
                return true;
            }
        }
        false
    }
}

pub(crate) struct Engine<'a> {
    nodes: &'a [Node],
    policy: &'a Policy,
    pub dims: Dims,
    alloc: Vec<i128>,
    base: Vec<i128>,
    extra: Vec<BTreeMap<u32, Vec<i128>>>,
}

impl<'a> Engine<'a> {
    pub fn new(nodes: &'a [Node], rollouts: &[Rollout], policy: &'a Policy) -> Engine<'a> {
        let dims = Dims::new(nodes, rollouts);
        let d = dims.len();
        let (mut alloc, mut base) = (Vec::with_capacity(nodes.len() * d), Vec::with_capacity(nodes.len() * d));
        for node in nodes {
            let mut a = dims.dense(&node.allocatable);
            if !node.allocatable.contains_key("pods") {
                a[dims.pods] = i128::MAX / 4;
            }
            alloc.extend(a);
            let mut used = dims.dense(&node.requested);
            used[dims.pods] = i128::from(node.pods) * 1000;
            base.extend(used);
        }
        Engine { nodes, policy, dims, alloc, base, extra: (0..policy.runs).map(|_| BTreeMap::new()).collect() }
    }

    fn row(v: &[i128], d: usize, node: u32) -> &[i128] {
        &v[node as usize * d..(node as usize + 1) * d]
    }

    /// Places rollout number `index`; `cache_bonus(node)` is in thousandths of a point.
    pub fn place(&mut self, index: usize, rollout: &'a Rollout, cache_bonus: &dyn Fn(u32) -> i64) -> Outcome<'a> {
        let (d, pod, strategy) = (self.dims.len(), PodReq::new(&self.dims, rollout, self.policy.gpu_weight), self.policy.strategy);
        let daemonset = rollout.kind == Kind::DaemonSet;
        let mut candidates = Vec::new();
        let mut excluded = Vec::new();
        let mut raw = Vec::new(); // (preferred weight, PreferNoSchedule taints, pool level)
        for (i, node) in self.nodes.iter().enumerate() {
            let i = i as u32;
            let fit = filter::check(node, &rollout.pod, daemonset).and_then(|()| {
                fits(Self::row(&self.alloc, d, i), Self::row(&self.base, d, i), None, &pod).map_err(|(dim, need, free)| {
                    let name = &self.dims.names[dim];
                    let resource = rollout.pod.requests.keys().find(|k| *k == name).map_or("pods", String::as_str);
                    if self.alloc[i as usize * d + dim] <= 0 {
                        Exclusion::NoResource { resource }
                    } else {
                        Exclusion::Insufficient { resource, need, free }
                    }
                })
            });
            if let Err(e) = fit {
                excluded.push((i, e));
                continue;
            }
            let preferred: u32 = rollout.pod.preferred.iter().filter(|(_, t)| t.matches(node)).map(|(w, _)| *w).sum();
            let pool = self.policy.pools.iter().position(|p| p.matches(node)).map_or(0, |p| (self.policy.pools.len() - p) as i64);
            raw.push((preferred, filter::preferred_taints(node, &rollout.pod), pool));
            let key = fit_points(strategy, Self::row(&self.alloc, d, i), Self::row(&self.base, d, i), None, &pod) * POINT + cache_bonus(i);
            candidates.push(Candidate { node: i, key });
        }
        let max_pref = raw.iter().map(|r| r.0).max().unwrap_or(0);
        let max_taints = raw.iter().map(|r| r.1).max().unwrap_or(0);
        for (c, (p, t, pool)) in candidates.iter_mut().zip(&raw) {
            c.key += fixed_key(*p, max_pref, *t, max_taints, *pool);
        }
        let mut hits = vec![0u64; candidates.len()];
        let mut unplaced = 0;
        if daemonset {
            self.place_everywhere(&candidates, &pod, &mut hits);
        } else if rollout.replicas > 0 && !candidates.is_empty() {
            let mut constraints = self.constraints(rollout, &candidates);
            for run in 0..self.policy.runs {
                let left = self.run(run, index, rollout.replicas, &candidates, &pod, &mut constraints, &mut hits);
                unplaced = unplaced.max(left);
            }
        } else {
            unplaced = rollout.replicas;
        }
        Outcome { candidates, hits, excluded, unplaced }
    }

    /// A DaemonSet: one pod on every candidate, in every run where it still fits.
    fn place_everywhere(&mut self, candidates: &[Candidate], pod: &PodReq, hits: &mut [u64]) {
        let d = self.dims.len();
        let all = u64::MAX >> (64 - self.policy.runs);
        for (ci, c) in candidates.iter().enumerate() {
            if self.extra.iter().all(|e| !e.contains_key(&c.node)) {
                let at = c.node as usize * d;
                for &(dim, a) in &pod.req {
                    self.base[at + dim] += a;
                }
                hits[ci] = all;
                continue;
            }
            for (run, extra) in self.extra.iter_mut().enumerate() {
                let e = extra.entry(c.node).or_insert_with(|| vec![0; d]);
                if fits(Self::row(&self.alloc, d, c.node), Self::row(&self.base, d, c.node), Some(e), pod).is_ok() {
                    for &(dim, a) in &pod.req {
                        e[dim] += a;
                    }
                    hits[ci] |= 1 << run;
                }
            }
        }
    }

    fn constraints(&self, rollout: &Rollout, candidates: &[Candidate]) -> Vec<Constraint> {
        let mut rules: Vec<(&str, Rule)> = Vec::new();
        for s in &rollout.pod.spread {
            let rule = match s.when_unsatisfiable {
                Unsatisfiable::DoNotSchedule => Rule::Hard(s.max_skew),
                Unsatisfiable::ScheduleAnyway => Rule::Soft(100 * POINT / i64::from(s.max_skew)),
            };
            rules.push((&s.topology_key, rule));
        }
        rules.extend(rollout.pod.anti_affinity.iter().map(|k| (k.as_str(), Rule::Anti)));
        rules
            .into_iter()
            .map(|(key, rule)| {
                // Domains: every node the pod's selectors allow that has the key, as the
                // scheduler counts them (taints do not matter), so an empty domain holds the
                // minimum at zero.
                let mut ids: BTreeMap<&str, u32> = BTreeMap::new();
                for node in self.nodes.iter().filter(|n| filter::check_selectors(n, &rollout.pod).is_ok()) {
                    if let Some(v) = node.label(key) {
                        let next = ids.len() as u32;
                        ids.entry(v).or_insert(next);
                    }
                }
                let domain = candidates
                    .iter()
                    .map(|c| self.nodes[c.node as usize].label(key).and_then(|v| ids.get(v)).copied().unwrap_or(u32::MAX))
                    .collect();
                let n = ids.len();
                Constraint { rule, domain, counts: vec![0; n], min: 0, at_min: n, parked: Vec::new() }
            })
            .collect()
    }

    /// One run of one rollout; returns how many pods found no node.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        run: u32,
        index: usize,
        replicas: u32,
        candidates: &[Candidate],
        pod: &PodReq,
        constraints: &mut [Constraint],
        hits: &mut [u64],
    ) -> u32 {
        let (d, strategy) = (self.dims.len(), self.policy.strategy);
        let noise = stream(self.policy.seed, run, index);
        let amplitude = self.policy.jitter;
        constraints.iter_mut().for_each(Constraint::reset);
        let extra = &mut self.extra[run as usize];
        let (alloc, base) = (&self.alloc, &self.base);
        // Current key of each candidate, penalties excluded; i64::MIN once it cannot take a pod.
        let rescore = |c: &Candidate, e: Option<&Vec<i128>>| -> i64 {
            let (a, u) = (Self::row(alloc, d, c.node), Self::row(base, d, c.node));
            let e = e.map(Vec::as_slice);
            if fits(a, u, e, pod).is_err() {
                return i64::MIN;
            }
            let fresh = fit_points(strategy, a, u, None, pod) * POINT;
            c.key - fresh + fit_points(strategy, a, u, e, pod) * POINT + jitter(noise, c.node, amplitude)
        };
        let mut current: Vec<i64> = candidates
            .iter()
            .map(|c| match extra.get(&c.node) {
                Some(e) => rescore(c, Some(e)),
                None => c.key + jitter(noise, c.node, amplitude),
            })
            .collect();
        let mut heap: BinaryHeap<(i64, Reverse<u32>)> =
            current.iter().enumerate().filter(|(_, k)| **k != i64::MIN).map(|(ci, k)| (*k, Reverse(ci as u32))).collect();
        let penalty = |constraints: &[Constraint], ci: usize| constraints.iter().map(|c| c.penalty(ci)).sum::<i64>();
        let mut placed = 0;
        while placed < replicas {
            let Some((key, Reverse(ci))) = heap.pop() else { break };
            let ci = ci as usize;
            let blocked = constraints.iter().position(|c| {
                let dom = c.domain[ci];
                match c.rule {
                    Rule::Hard(skew) => dom != u32::MAX && c.counts[dom as usize] + 1 - c.min > skew,
                    Rule::Anti => dom != u32::MAX && c.counts[dom as usize] > 0,
                    Rule::Soft(_) => false,
                }
            });
            if let Some(b) = blocked {
                if matches!(constraints[b].rule, Rule::Hard(_)) {
                    constraints[b].parked.push(ci as u32);
                }
                continue;
            }
            let now = current[ci] - penalty(constraints, ci);
            if now < key {
                heap.push((now, Reverse(ci as u32)));
                continue;
            }
            let c = &candidates[ci];
            let e = extra.entry(c.node).or_insert_with(|| vec![0; d]);
            for &(dim, a) in &pod.req {
                e[dim] += a;
            }
            hits[ci] |= 1 << run;
            placed += 1;
            let mut unparked = Vec::new();
            for c in constraints.iter_mut() {
                if c.add(ci) {
                    unparked.append(&mut c.parked);
                }
            }
            for p in unparked {
                heap.push((current[p as usize] - penalty(constraints, p as usize), Reverse(p)));
            }
            current[ci] = rescore(c, extra.get(&c.node));
            if current[ci] != i64::MIN {
                heap.push((current[ci] - penalty(constraints, ci), Reverse(ci as u32)));
            }
        }
        replicas - placed
    }
}
