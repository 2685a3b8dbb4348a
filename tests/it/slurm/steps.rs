//! What a step has on Slurm that it has everywhere: background steps with
//! health checks, a task over two allocations, each slot its own port and
//! its share of the allocation's GPUs (`CUDA_VISIBLE_DEVICES`).

use super::{cluster, jobs_of, slurm};
use crate::common::Project;

/// Two allocations of 2 slots and "2 GPUs" each (the test cluster has no
/// GPUs: no gres is asked for, the slots' devices are still given out).
/// Every task starts a server in the background on its node's address and
/// port, waits for its health check, then asks it from its main step (the
/// pair: from the other allocation). All run at once, and the test
/// cluster puts both allocations on one host: slot 0 of each had the same
/// port (a server failed to bind, or a task's health check and request
/// reached the other allocation's server); now an allocation's slots take
/// ports after those of the allocations before it on its node.
#[test]
fn slurm_allocations_sharing_a_host_give_their_slots_distinct_ports_for_background_servers() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    p.write(
        "plans/templates/serve.json.hbs",
        r#"{"outputs": ["got.txt"], "steps": [
  {"name": "server", "background": true,
   "command": "mkdir -p www && echo bg-{{i}} > www/index.html && exec python3 -m http.server \"$INFRA_PORT\" --bind \"$INFRA_NODE_ADDR\" --directory www",
   "health": {"command": "curl -sf \"http://$INFRA_NODE_ADDR:$INFRA_PORT/\"", "timeout_seconds": 60, "interval_seconds": 0.3}},
  {"name": "main", "command": "sleep 2; echo \"$(curl -sf http://$INFRA_NODE_ADDR:$INFRA_PORT/) gpus=$CUDA_VISIBLE_DEVICES slot=$INFRA_SLOT job=$SLURM_JOB_ID\" > got.txt"}]}"#,
    );
    p.write(
        "plans/templates/pair.json.hbs",
        r#"{"nodes": 2, "roles": ["producer", "consumer"], "outputs": ["got.txt"], "steps": [
  {"name": "producer", "node": "producer", "background": true,
   "command": "mkdir -p www && echo pair > www/index.html && exec python3 -m http.server \"$INFRA_PORT\" --bind \"$INFRA_NODE_ADDR\" --directory www",
   "health": {"command": "curl -sf \"http://$INFRA_NODE_0_ADDR:$INFRA_NODE_0_PORT/\"", "timeout_seconds": 60, "interval_seconds": 0.3}},
  {"name": "consumer", "node": "consumer",
   "command": "echo \"$(curl -sf http://$INFRA_NODE_0_ADDR:$INFRA_NODE_0_PORT/) job=$SLURM_JOB_ID\" > got.txt"}]}"#,
    );
    p.write(
        "plans/bg.json",
        r#"{"phase": "bg", "name": "steps on slurm", "provider": "slurm",
          "node_groups": {"cpu": {"count": 2, "slots": 2, "gpus": 2}},
          "slurm": {"node_groups": {"cpu": {"gres": "none"}}},
          "estimate": {"default": "5s"},
          "layers": [
            {"id": "L0", "patterns": [{"id": "bg-pair", "backend": "pair"}]},
            {"id": "L1", "grid": {"backend": "serve", "id": "bg-{i}", "factors": {"i": [0, 1, 2, 3]}}}]}"#,
    );
    let r = slurm(&p, &["up", "bg", "--yes"]);
    assert_eq!(
        r.code,
        0,
        "{}\n{}",
        r.stderr,
        std::fs::read_to_string(p.path().join("results/bg/failed-tasks.csv")).unwrap_or_default()
    );
    let pair = p.read("results/bg/bg-pair/got.txt");
    assert!(pair.starts_with("pair job="), "{pair}");
    let mut jobs = std::collections::BTreeSet::new();
    for i in 0..4 {
        let got = p.read(&format!("results/bg/bg-{i}/got.txt"));
        let slot = if got.contains("slot=0") { 0 } else { 1 };
        assert!(
            got.starts_with(&format!("bg-{i} gpus={slot} slot={slot} job=")),
            "{got}"
        );
        jobs.insert(got.rsplit("job=").next().unwrap().trim().to_string());
    }
    assert_eq!(jobs.len(), 2, "both allocations ran tasks: {jobs:?}");
    assert!(jobs_of(&p, "bg").is_empty(), "{:?}", jobs_of(&p, "bg"));
}
