//! Containers and CUDA MPS on the cluster, as the team's sbatch script
//! has them: every step runs through `apptainer exec --nv ... <image>`,
//! and each allocation starts the MPS daemon and quits it when it ends.
//! The test cluster has neither Apptainer nor GPUs: stand-ins on PATH
//! (passed on by sbatch and srun) record how they were called and run
//! the step.

use std::os::unix::fs::PermissionsExt;

use super::{cluster, jobs_of, slurm_cmd};
use crate::common::{one_step_template, Project, Run};

fn script(p: &Project, name: &str, body: &str) {
    p.write(&format!("bin/{name}"), body);
    let path = p.path().join("bin").join(name);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn slurm_steps_run_in_the_plan_s_container_and_each_allocation_starts_mps() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    let log = p.path().join("calls.log");
    script(
        &p,
        "apptainer",
        &format!(
            r#"#!/bin/bash
echo "apptainer $*" >> {log}
shift
while [ $# -gt 0 ]; do
  case "$1" in
    --nv) shift ;;
    --bind|--overlay) shift 2 ;;
    --pwd) cd "$2" || exit 97; shift 2 ;;
    *) break ;;
  esac
done
image="$1"; shift
IN_CONTAINER="$image" exec "$@"
"#,
            log = log.display()
        ),
    );
    script(
        &p,
        "nvidia-cuda-mps-control",
        &format!(
            r#"#!/bin/bash
if [ "$1" = -d ]; then echo "mps start job=$SLURM_JOB_ID pipe=$CUDA_MPS_PIPE_DIRECTORY" >> {log}
else read -r what; echo "mps $what job=$SLURM_JOB_ID" >> {log}; fi
"#,
            log = log.display()
        ),
    );
    p.write(
        "plans/templates/box.json.hbs",
        &one_step_template(
            "echo in=$IN_CONTAINER mps=$CUDA_MPS_PIPE_DIRECTORY gpus=$CUDA_VISIBLE_DEVICES pwd=$(pwd) > where.txt",
            "\"outputs\": [\"where.txt\"],",
        ),
    );
    p.write(
        "plans/box.json",
        r#"{"phase": "box", "name": "container and mps", "provider": "slurm",
          "node_groups": {"gpu": {"count": 1, "gpus": 1, "slots": 2}},
          "slurm": {"mps": true,
                    "container": {"runtime": "apptainer", "image": "/shared/train.sif",
                                  "binds": ["/shared/data:/data"]},
                    "node_groups": {"gpu": {"gres": "none"}}},
          "layers": [{"id": "L0", "grid": {"backend": "box", "id": "box-{i}", "factors": {"i": [0, 1]}}}]}"#,
    );
    let path = format!(
        "{}:{}",
        p.path().join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let r = Run::from(
        slurm_cmd(&p, &["up", "box", "--yes"])
            .env("PATH", &path)
            .output()
            .unwrap(),
    );
    r.ok();
    for i in 0..2 {
        let w = p.read(&format!("results/box/box-{i}/where.txt"));
        assert!(
            w.starts_with("in=/shared/train.sif mps=/tmp/infra-mps-"),
            "{w}"
        );
        // two workers share the one GPU
        assert!(w.contains("/pipe gpus=0 pwd="), "{w}");
    }
    // the holder's MPS daemon: started, and quit when the allocation ended
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let calls = loop {
        let calls = std::fs::read_to_string(&log).unwrap_or_default();
        if calls.contains("mps quit") || std::time::Instant::now() > deadline {
            break calls;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(calls.contains("mps start job="), "{calls}");
    assert!(calls.contains("pipe=/tmp/infra-mps-"), "{calls}");
    assert!(calls.contains("mps quit job="), "{calls}");
    assert_eq!(
        calls
            .matches("apptainer exec --nv --bind /shared/data:/data --pwd ")
            .count(),
        2,
        "{calls}"
    );
    assert!(jobs_of(&p, "box").is_empty(), "{:?}", jobs_of(&p, "box"));
}
