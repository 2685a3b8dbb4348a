//! Slot scheduling, pure: which task goes to which free slots, and what the
//! resulting makespan is. The live runner and the estimator share it.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashSet};

/// The slots of one node.
#[derive(Debug, Clone)]
pub struct NodeSlots {
    pub name: String,
    pub group: String,
    pub busy: Vec<bool>,
    /// Gone (or going): nothing more is placed on it.
    pub retired: bool,
}

impl NodeSlots {
    pub fn free(&self) -> usize {
        self.busy.iter().filter(|b| !**b).count()
    }
}

/// A placement: (node index, slot index) per rank of the task.
pub type Placement = Vec<(usize, u32)>;

#[derive(Debug, Clone, Default)]
pub struct Pool {
    pub nodes: Vec<NodeSlots>,
}

impl Pool {
    pub fn new(nodes: impl IntoIterator<Item = (String, String, u32)>) -> Pool {
        Pool {
            nodes: nodes
                .into_iter()
                .map(|(name, group, slots)| NodeSlots {
                    name,
                    group,
                    busy: vec![false; slots as usize],
                    retired: false,
                })
                .collect(),
        }
    }

    /// A node that joined (it gets the next index).
    pub fn add(&mut self, name: String, group: String, slots: u32) -> usize {
        self.nodes.push(NodeSlots {
            name,
            group,
            busy: vec![false; slots as usize],
            retired: false,
        });
        self.nodes.len() - 1
    }

    /// Place nothing more on node `i`.
    pub fn retire(&mut self, i: usize) {
        if let Some(n) = self.nodes.get_mut(i) {
            n.retired = true;
        }
    }

    /// Nodes of `group` that can take tasks.
    pub fn live_nodes(&self, group: &str) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.group == group && !n.retired && !n.busy.is_empty())
            .count()
    }

    /// One free slot on each of `ranks` distinct nodes of `group`; the nodes
    /// with the most free slots first, so load spreads.
    pub fn place(&mut self, group: &str, ranks: u32) -> Option<Placement> {
        let mut cands: Vec<(usize, usize)> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.group == group && !n.retired)
            .map(|(i, n)| (i, n.free()))
            .filter(|(_, f)| *f > 0)
            .collect();
        if cands.len() < ranks as usize {
            return None;
        }
        cands.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut out = Vec::with_capacity(ranks as usize);
        for (i, _) in cands.into_iter().take(ranks as usize) {
            let slot = self.nodes[i].busy.iter().position(|b| !*b)?;
            self.nodes[i].busy[slot] = true;
            out.push((i, slot as u32));
        }
        Some(out)
    }

    /// Take these seats, named by node and slot (an adopted attempt goes
    /// on where it ran): None when a node is unknown or retired, or a slot
    /// is taken or out of range.
    pub fn take(&mut self, seats: &[(&str, u32)]) -> Option<Placement> {
        let mut out: Placement = Vec::with_capacity(seats.len());
        for (name, slot) in seats {
            let i = self
                .nodes
                .iter()
                .position(|n| n.name == *name && !n.retired)?;
            let free = self.nodes[i].busy.get(*slot as usize) == Some(&false);
            if !free || out.contains(&(i, *slot)) {
                return None;
            }
            out.push((i, *slot));
        }
        for (i, s) in &out {
            self.nodes[*i].busy[*s as usize] = true;
        }
        Some(out)
    }

    pub fn release(&mut self, p: &Placement) {
        for (i, s) in p {
            if let Some(b) = self
                .nodes
                .get_mut(*i)
                .and_then(|n| n.busy.get_mut(*s as usize))
            {
                *b = false;
            }
        }
    }

    /// Free slots on live nodes.
    pub fn free_slots(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| !n.retired)
            .map(|n| n.free())
            .sum()
    }

    pub fn busy(&self) -> usize {
        self.nodes.iter().map(|n| n.busy.len() - n.free()).sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    LongestFirst,
    Fifo,
}

/// Queue order: longest estimate first (ties and unknowns keep plan order).
pub fn order(estimates: &[Option<f64>], policy: Policy) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..estimates.len()).collect();
    if policy == Policy::LongestFirst {
        idx.sort_by(|a, b| {
            let (x, y) = (estimates[*a].unwrap_or(0.0), estimates[*b].unwrap_or(0.0));
            y.partial_cmp(&x).unwrap_or(Ordering::Equal).then(a.cmp(b))
        });
    }
    idx
}

#[derive(Debug, Clone)]
pub struct SimTask {
    pub seconds: f64,
    pub ranks: u32,
    pub group: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Simulation {
    pub makespan: f64,
    pub lower_bound: f64,
    /// Busy time per group (seconds, all slots) and its makespan.
    pub groups: BTreeMap<String, (f64, f64)>,
    /// Tasks that fit on no node of their group.
    pub unplaceable: usize,
}

#[derive(PartialEq)]
struct Done(f64, usize);
impl Eq for Done {}
impl PartialOrd for Done {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Done {
    fn cmp(&self, o: &Self) -> Ordering {
        o.0.partial_cmp(&self.0)
            .unwrap_or(Ordering::Equal)
            .then(o.1.cmp(&self.1))
    }
}

/// Play the queue out on `pool` with the given policy.
pub fn simulate(tasks: &[SimTask], pool: &Pool, policy: Policy) -> Simulation {
    let mut pool = pool.clone();
    let est: Vec<Option<f64>> = tasks.iter().map(|t| Some(t.seconds)).collect();
    let mut queue: Vec<usize> = order(&est, policy);
    let mut unplaceable = 0;
    // drop what can never run
    queue.retain(|i| {
        let t = &tasks[*i];
        let nodes = pool
            .nodes
            .iter()
            .filter(|n| n.group == t.group && !n.busy.is_empty())
            .count();
        let ok = nodes >= t.ranks as usize;
        if !ok {
            unplaceable += 1;
        }
        ok
    });
    let mut running: BinaryHeap<Done> = BinaryHeap::new();
    let mut placements: Vec<Option<Placement>> = vec![None; tasks.len()];
    let mut now = 0.0f64;
    let mut group_end: BTreeMap<String, f64> = BTreeMap::new();
    let mut group_busy: BTreeMap<String, f64> = BTreeMap::new();
    let mut pending: std::collections::VecDeque<usize> = queue.into_iter().collect();
    loop {
        // place what fits, in queue order, skipping (backfilling) what does not
        let mut blocked: HashSet<(String, u32)> = HashSet::new();
        let mut kept = std::collections::VecDeque::with_capacity(pending.len());
        while let Some(i) = pending.pop_front() {
            let t = &tasks[i];
            let k = (t.group.clone(), t.ranks);
            if blocked.contains(&k) {
                kept.push_back(i);
                continue;
            }
            match pool.place(&t.group, t.ranks) {
                Some(p) => {
                    placements[i] = Some(p);
                    running.push(Done(now + t.seconds, i));
                    *group_busy.entry(t.group.clone()).or_default() += t.seconds * t.ranks as f64;
                }
                None => {
                    blocked.insert(k);
                    kept.push_back(i);
                }
            }
        }
        pending = kept;
        let Some(Done(t_end, i)) = running.pop() else {
            break;
        };
        now = t_end;
        let e = group_end.entry(tasks[i].group.clone()).or_default();
        *e = e.max(now);
        if let Some(p) = placements[i].take() {
            pool.release(&p);
        }
        // finish everything ending at the same moment before placing again
        while running.peek().is_some_and(|d| d.0 <= now) {
            let Done(_, j) = running.pop().unwrap_or(Done(now, i));
            if let Some(p) = placements[j].take() {
                pool.release(&p);
            }
        }
    }
    let mut lower_bound = 0.0f64;
    let mut groups = BTreeMap::new();
    for (g, busy) in &group_busy {
        let slots: usize = pool
            .nodes
            .iter()
            .filter(|n| &n.group == g)
            .map(|n| n.busy.len())
            .sum();
        let longest = tasks
            .iter()
            .filter(|t| &t.group == g)
            .map(|t| t.seconds)
            .fold(0.0, f64::max);
        lower_bound = lower_bound.max((busy / slots.max(1) as f64).max(longest));
        groups.insert(g.clone(), (*busy, group_end.get(g).copied().unwrap_or(0.0)));
    }
    Simulation {
        makespan: now,
        lower_bound,
        groups,
        unplaceable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_takes_distinct_nodes_and_respects_slots() {
        let mut pool = Pool::new([("a".into(), "g".into(), 2), ("b".into(), "g".into(), 1)]);
        let p = pool.place("g", 2).unwrap();
        assert_ne!(p[0].0, p[1].0);
        assert!(
            pool.place("g", 2).is_none(),
            "only node a has a free slot left"
        );
        assert!(pool.place("g", 1).is_some());
        assert!(pool.place("g", 1).is_none());
        assert!(pool.place("other", 1).is_none());
        pool.release(&p);
        assert_eq!(pool.busy(), 1);
    }

    #[test]
    fn named_seats_are_taken_only_when_free_on_a_live_node() {
        let mut pool = Pool::new([("a".into(), "g".into(), 2), ("b".into(), "g".into(), 1)]);
        let p = pool.take(&[("a", 1), ("b", 0)]).unwrap();
        assert_eq!(p, vec![(0, 1), (1, 0)]);
        assert!(pool.take(&[("b", 0)]).is_none(), "taken");
        assert!(pool.take(&[("a", 2)]).is_none(), "no such slot");
        assert!(pool.take(&[("c", 0)]).is_none(), "no such node");
        assert!(pool.take(&[("a", 0), ("a", 0)]).is_none(), "twice");
        assert_eq!(pool.busy(), 2, "a refused take holds nothing");
        pool.retire(0);
        assert!(pool.take(&[("a", 0)]).is_none(), "retired");
    }

    #[test]
    fn retired_nodes_take_nothing_and_added_nodes_do() {
        let mut pool = Pool::new([("a".into(), "g".into(), 1), ("b".into(), "g".into(), 1)]);
        pool.retire(0);
        assert_eq!(pool.live_nodes("g"), 1);
        assert_eq!(pool.place("g", 1), Some(vec![(1, 0)]));
        assert!(pool.place("g", 1).is_none());
        assert_eq!(pool.add("c".into(), "g".into(), 1), 2);
        assert_eq!(pool.place("g", 1), Some(vec![(2, 0)]));
    }

    #[test]
    fn longest_first_beats_fifo_on_a_skewed_queue() {
        let mut tasks: Vec<SimTask> = (0..20)
            .map(|_| SimTask {
                seconds: 1.0,
                ranks: 1,
                group: "g".into(),
            })
            .collect();
        tasks.push(SimTask {
            seconds: 10.0,
            ranks: 1,
            group: "g".into(),
        });
        let pool = Pool::new([("n".into(), "g".into(), 2)]);
        let lf = simulate(&tasks, &pool, Policy::LongestFirst);
        let ff = simulate(&tasks, &pool, Policy::Fifo);
        assert_eq!(lf.makespan, 15.0);
        assert_eq!(ff.makespan, 20.0);
        assert_eq!(lf.lower_bound, 15.0);
    }
}
