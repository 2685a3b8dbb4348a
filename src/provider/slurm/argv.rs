//! Every command line the Slurm provider runs, built as argument vectors:
//! nothing from the plan passes through a shell on the way to `sbatch` or
//! `srun` (a step's own command is one argument of `bash -c`, as on every
//! provider). Pure functions, pinned by the tests below.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use crate::plan::slurm::{Container, SlurmGroup, SlurmSection};
use crate::plan::{NodeGroup, Plan};

/// The holder job's script: it keeps the allocation until it is
/// cancelled; with MPS it first starts the CUDA MPS daemon on the node
/// (pipe and log folders per job, node-local, as NVIDIA advises) and
/// quits it when the job ends. Constant text: no plan value is in it.
pub fn holder_script(mps: bool) -> &'static str {
    if mps {
        "export CUDA_MPS_PIPE_DIRECTORY=/tmp/infra-mps-$SLURM_JOB_ID/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/infra-mps-$SLURM_JOB_ID/log; \
mkdir -p \"$CUDA_MPS_PIPE_DIRECTORY\" \"$CUDA_MPS_LOG_DIRECTORY\" && nvidia-cuda-mps-control -d; \
trap 'echo quit | nvidia-cuda-mps-control' EXIT TERM; sleep infinity & wait"
    } else {
        "exec sleep infinity"
    }
}

/// `CUDA_MPS_PIPE_DIRECTORY` of the holder job `job` (see `holder_script`).
pub fn mps_pipe(job: &str) -> String {
    format!("/tmp/infra-mps-{job}/pipe")
}

/// The prefix of every job name of the phase: `infra.<project>.<phase>.`.
pub fn job_prefix(plan: &Plan) -> String {
    format!("infra.{}.{}.", plan.project, plan.name_key)
}

/// `--time` in whole minutes, rounded up (Slurm's unit).
pub fn minutes(d: Duration) -> u64 {
    d.as_secs().div_ceil(60).max(1)
}

/// What a node group's allocation asks for: the plan's `slurm` section,
/// the group's own entry over it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AllocSpec {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub constraint: Option<String>,
    pub time_limit: Option<Duration>,
    pub gres: Option<String>,
    pub cpus_per_task: Option<u32>,
    pub mem: Option<String>,
    pub sbatch_options: Vec<String>,
    pub srun_options: Vec<String>,
    pub container: Option<Container>,
    pub mps: bool,
    pub gpus: u32,
}

impl AllocSpec {
    pub fn of(plan: &Plan, group: &NodeGroup) -> AllocSpec {
        let empty = SlurmSection::default();
        let s = plan.slurm.as_ref().unwrap_or(&empty);
        let nog = SlurmGroup::default();
        let g = s.groups.get(&group.name).unwrap_or(&nog);
        let gpus = group.gpus.unwrap_or(0);
        AllocSpec {
            partition: g.partition.clone().or_else(|| s.partition.clone()),
            account: s.account.clone(),
            qos: s.qos.clone(),
            constraint: g.constraint.clone().or_else(|| s.constraint.clone()),
            time_limit: g.time_limit.or(s.time_limit),
            gres: g
                .gres
                .clone()
                .or_else(|| (gpus > 0).then(|| format!("gpu:{gpus}"))),
            cpus_per_task: g.cpus_per_task,
            mem: g.mem.clone(),
            sbatch_options: s.sbatch_options.clone(),
            srun_options: s.srun_options.clone(),
            container: g.container.clone().or_else(|| s.container.clone()),
            mps: g.mps.unwrap_or(s.mps),
            gpus,
        }
    }
}

/// `sbatch` for the holder job of allocation `name`, its output to `out`.
pub fn sbatch(spec: &AllocSpec, job_name: &str, out: &Path, chdir: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        "--parsable".into(),
        format!("--job-name={job_name}").into(),
        "--nodes=1".into(),
        "--ntasks=1".into(),
    ];
    let mut opt = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            a.push(format!("--{k}={v}").into());
        }
    };
    opt("partition", &spec.partition);
    opt("account", &spec.account);
    opt("qos", &spec.qos);
    opt("constraint", &spec.constraint);
    opt("gres", &spec.gres);
    opt("mem", &spec.mem);
    opt("cpus-per-task", &spec.cpus_per_task.map(|c| c.to_string()));
    opt("time", &spec.time_limit.map(|t| minutes(t).to_string()));
    let mut out_arg = OsString::from("--output=");
    out_arg.push(out);
    a.push(out_arg);
    let mut dir_arg = OsString::from("--chdir=");
    dir_arg.push(chdir);
    a.push(dir_arg);
    a.extend(spec.sbatch_options.iter().map(OsString::from));
    a.push("--wrap".into());
    a.push(holder_script(spec.mps).into());
    a
}

/// `srun` of one step inside allocation `job`: the step's environment
/// goes along (`--export=ALL` of the environment srun is started with);
/// what Slurm sets in a step and the slot needs otherwise
/// (`CUDA_VISIBLE_DEVICES`: Slurm gives a step the allocation's GPUs) is
/// set again by `env` on the node; then the container, then `bash -c`.
pub fn srun(
    spec: &AllocSpec,
    job: &str,
    cwd: &Path,
    command: &str,
    env: &[(String, String)],
) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        "srun".into(),
        format!("--jobid={job}").into(),
        "--overlap".into(),
        "--nodes=1".into(),
        "--ntasks=1".into(),
        "--export=ALL".into(),
        "--quiet".into(),
    ];
    let mut dir_arg = OsString::from("--chdir=");
    dir_arg.push(cwd);
    a.push(dir_arg);
    if spec.gpus > 0 {
        if let Some(g) = &spec.gres {
            a.push(format!("--gres={g}").into());
        }
    }
    a.extend(spec.srun_options.iter().map(OsString::from));
    let get = |k: &str| env.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v);
    let mut again: Vec<String> = Vec::new();
    if let Some(v) = get("CUDA_VISIBLE_DEVICES") {
        again.push(format!("CUDA_VISIBLE_DEVICES={v}"));
    }
    if spec.mps {
        again.push(format!("CUDA_MPS_PIPE_DIRECTORY={}", mps_pipe(job)));
    }
    if !again.is_empty() {
        a.push("env".into());
        a.extend(again.into_iter().map(OsString::from));
    }
    if let Some(c) = &spec.container {
        a.extend(container(c, cwd));
    }
    a.push("bash".into());
    a.push("-c".into());
    a.push(command.into());
    a
}

/// `apptainer exec --nv --bind ... --overlay ... <image>` (or
/// `singularity`), the working folder bound and entered.
pub fn container(c: &Container, cwd: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![c.runtime.clone().into(), "exec".into()];
    if c.nv {
        a.push("--nv".into());
    }
    for b in &c.binds {
        a.push("--bind".into());
        a.push(b.into());
    }
    if let Some(o) = &c.overlay {
        a.push("--overlay".into());
        a.push(o.into());
    }
    a.push("--pwd".into());
    a.push(cwd.into());
    a.push(c.image.clone().into());
    a
}

/// A node group's allocations as `infra plan` shows them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AllocLine {
    pub group: String,
    pub count: u32,
    /// The sbatch command line, quoted for reading.
    pub sbatch: String,
}

/// What each node group of a Slurm plan submits.
pub fn plan_lines(plan: &Plan) -> Vec<AllocLine> {
    plan.node_groups
        .iter()
        .map(|g| {
            let spec = AllocSpec::of(plan, g);
            let dir = super::state::alloc_dir(&plan.state_dir(), &format!("{}-N", g.name));
            let args = sbatch(
                &spec,
                &format!("{}{}-N", job_prefix(plan), g.name),
                &dir.join("holder.out"),
                &plan.root,
            );
            let words: Vec<String> = std::iter::once("sbatch".to_string())
                .chain(args.iter().map(|a| quote(&a.to_string_lossy())))
                .collect();
            AllocLine {
                group: g.name.clone(),
                count: g.count,
                sbatch: words.join(" "),
            }
        })
        .collect()
}

/// `s` as a shell would read it back (for display only: nothing runs it).
pub fn quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    fn team() -> AllocSpec {
        AllocSpec {
            partition: Some("gpu".into()),
            account: Some("dl-lab".into()),
            time_limit: Some(Duration::from_secs(12 * 3600)),
            gres: Some("gpu:rtx8000:8".into()),
            cpus_per_task: Some(48),
            mem: Some("160G".into()),
            sbatch_options: vec!["--exclusive".into()],
            container: Some(Container {
                runtime: "singularity".into(),
                image: "/shared/img/train.sif".into(),
                binds: vec!["/data:/data".into()],
                overlay: Some("/shared/ov.img".into()),
                nv: true,
            }),
            mps: true,
            gpus: 8,
            ..Default::default()
        }
    }

    #[test]
    fn the_teams_allocation_renders_as_their_sbatch_line() {
        let a = strs(&sbatch(
            &team(),
            "infra.lab.sweep.gpu-0",
            Path::new("/p/.infra/s/gpu-0.out"),
            Path::new("/p"),
        ));
        assert_eq!(
            a[..14],
            [
                "--parsable",
                "--job-name=infra.lab.sweep.gpu-0",
                "--nodes=1",
                "--ntasks=1",
                "--partition=gpu",
                "--account=dl-lab",
                "--gres=gpu:rtx8000:8",
                "--mem=160G",
                "--cpus-per-task=48",
                "--time=720",
                "--output=/p/.infra/s/gpu-0.out",
                "--chdir=/p",
                "--exclusive",
                "--wrap",
            ]
        );
        assert!(a[14].contains("nvidia-cuda-mps-control -d"), "{}", a[14]);
    }

    #[test]
    fn a_step_runs_in_its_slot_s_gpus_in_the_container_without_a_shell_around_plan_values() {
        let env = vec![("CUDA_VISIBLE_DEVICES".to_string(), "3".to_string())];
        let a = strs(&srun(
            &team(),
            "42",
            Path::new("/p/w; rm -rf /"),
            "python train.py --lr 0.001",
            &env,
        ));
        assert_eq!(
            a,
            [
                "srun",
                "--jobid=42",
                "--overlap",
                "--nodes=1",
                "--ntasks=1",
                "--export=ALL",
                "--quiet",
                "--chdir=/p/w; rm -rf /",
                "--gres=gpu:rtx8000:8",
                "env",
                "CUDA_VISIBLE_DEVICES=3",
                "CUDA_MPS_PIPE_DIRECTORY=/tmp/infra-mps-42/pipe",
                "singularity",
                "exec",
                "--nv",
                "--bind",
                "/data:/data",
                "--overlay",
                "/shared/ov.img",
                "--pwd",
                "/p/w; rm -rf /",
                "/shared/img/train.sif",
                "bash",
                "-c",
                "python train.py --lr 0.001",
            ]
        );
    }

    #[test]
    fn a_cpu_allocation_asks_for_no_gres_and_holds_with_sleep() {
        let spec = AllocSpec::default();
        let a = strs(&sbatch(&spec, "j", Path::new("/o"), Path::new("/p")));
        assert!(!a.iter().any(|x| x.starts_with("--gres")));
        assert_eq!(a.last().unwrap(), "exec sleep infinity");
        let s = strs(&srun(&spec, "7", Path::new("/w"), "echo hi", &[]));
        assert_eq!(s[s.len() - 3..], ["bash", "-c", "echo hi"]);
        assert!(!s.contains(&"env".to_string()));
    }

    #[test]
    fn time_limits_round_up_to_minutes() {
        assert_eq!(minutes(Duration::from_secs(61)), 2);
        assert_eq!(minutes(Duration::from_secs(3600)), 60);
    }
}
