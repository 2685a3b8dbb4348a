//! The environment a task's step sees, the same on every provider: which
//! task and attempt, its rank among the task's nodes, every node's address
//! and port, its slot's cores, GPUs and workers, then the task's own `env`.

use crate::runner::exec::AttemptRequest;

/// Each slot gets its own range of ports from here on.
pub const BASE_PORT: u32 = 20000;
pub const PORTS_PER_SLOT: u32 = 16;

/// The first port of slot `slot`.
pub fn port(slot: u32) -> u32 {
    BASE_PORT + slot * PORTS_PER_SLOT
}

/// One of the task's nodes, by rank.
pub struct RankNode<'a> {
    pub name: &'a str,
    pub addr: &'a str,
}

/// What a node offers, shared out among its slots.
pub struct Shape {
    pub gpus: u32,
    pub vcpus: u32,
    pub slots: u32,
    pub workers_per_slot: Option<u32>,
}

pub struct Phase<'a> {
    /// The plan's `phase` value.
    pub phase: &'a str,
    /// The plan's name (`phase15`).
    pub name: &'a str,
    pub provider: &'a str,
}

/// The environment of rank `rank`: the common variables, then `extra`
/// (the provider's own), then the task's `env`, which wins over both.
pub fn task_env(
    phase: &Phase,
    req: &AttemptRequest,
    rank: usize,
    nodes: &[RankNode],
    shape: &Shape,
    extra: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let t = &req.task;
    let slot = req.seats[rank].slot;
    let mut env: Vec<(String, String)> = vec![
        ("INFRA_PHASE".into(), phase.phase.to_string()),
        ("INFRA_PHASE_NAME".into(), phase.name.to_string()),
        ("INFRA_PROVIDER".into(), phase.provider.to_string()),
        ("INFRA_TASK_ID".into(), t.id.clone()),
        ("INFRA_TASK_KEY".into(), t.key.clone()),
        ("INFRA_LAYER".into(), t.layer.clone()),
        ("INFRA_ATTEMPT".into(), req.attempt.to_string()),
        ("INFRA_NODE_RANK".into(), rank.to_string()),
        ("INFRA_NODES".into(), req.seats.len().to_string()),
        ("INFRA_NODE_NAME".into(), nodes[rank].name.to_string()),
        ("INFRA_NODE_ADDR".into(), nodes[rank].addr.to_string()),
        ("INFRA_PORT".into(), port(slot).to_string()),
        ("INFRA_SLOT".into(), slot.to_string()),
    ];
    env.extend(extra);
    for (r, s) in req.seats.iter().enumerate() {
        env.push((format!("INFRA_NODE_{r}_ADDR"), nodes[r].addr.to_string()));
        env.push((format!("INFRA_NODE_{r}_PORT"), port(s.slot).to_string()));
    }
    if let Some((i, k)) = t.partition {
        env.push(("INFRA_PARTITION".into(), i.to_string()));
        env.push(("INFRA_N_PARTITIONS".into(), k.to_string()));
    }
    if shape.gpus > 0 {
        let (g, s) = (shape.gpus, shape.slots.max(1));
        let devices: Vec<u32> = if s <= g {
            let per = g / s;
            (slot * per..(slot + 1) * per).collect()
        } else {
            vec![slot * g / s]
        };
        env.push((
            "CUDA_VISIBLE_DEVICES".into(),
            devices
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ));
    }
    let per = (shape.vcpus / shape.slots.max(1)).max(1);
    let first = slot * per;
    env.push((
        "INFRA_CORES".into(),
        format!("{}-{}", first, first + per - 1),
    ));
    env.push((
        "INFRA_N_WORKERS".into(),
        shape.workers_per_slot.unwrap_or(per).to_string(),
    ));
    for (k, v) in &t.env {
        env.push((k.clone(), v.clone()));
    }
    env
}
