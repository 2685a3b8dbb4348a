//! The node agent (`infra node <mode> --spec '<JSON>'`, src/node/) as a
//! node runs it: the real binary, a node folder of its own per test, S3 of
//! the local emulator (tests/emulator, one account per test), and the
//! processes it leaves checked in /proc.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::aws::{account, emulator};

struct Node {
    root: tempfile::TempDir,
    acct: String,
    bucket: String,
    imds: Option<String>,
}

impl Node {
    fn new(test: &str) -> Node {
        let emu = emulator();
        let acct = account(test);
        emu.control("POST", "reset", json!({"account_id": acct}));
        let n = Node {
            root: tempfile::Builder::new()
                .prefix("infra-node-")
                .tempdir()
                .unwrap(),
            bucket: format!("node-agent-{acct}"),
            acct,
            imds: None,
        };
        n.boto(&format!(
            "s3.create_bucket(Bucket='{}'); print('{{}}')",
            n.bucket
        ));
        n
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    fn root_s(&self) -> String {
        self.root().to_string_lossy().into_owned()
    }

    fn cmd(&self, mode: &str, spec: &Value) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_infra"));
        c.args(["node", mode, "--spec", &spec.to_string()]);
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") || k.starts_with("INFRA_") {
                c.env_remove(k);
            }
        }
        let imds = self
            .imds
            .clone()
            .unwrap_or_else(|| format!("{}/_imds/i-none/", emulator().url()));
        c.env("INFRA_NODE_ROOT", self.root())
            .env("INFRA_INSTANCE_ID", "i-0123456789abcdef0")
            .env("INFRA_WATCH_INTERVAL", "0.2")
            .env("AWS_ENDPOINT_URL", emulator().url())
            .env("AWS_ACCESS_KEY_ID", &self.acct)
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds)
            .env("AWS_CONFIG_FILE", self.root().join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.root().join("no-aws-creds"),
            )
            .stdin(Stdio::null());
        c
    }

    fn run(&self, mode: &str, spec: &Value) -> Output {
        self.cmd(mode, spec).output().expect("run infra node")
    }

    fn spawn(&self, mode: &str, spec: &Value) -> Child {
        self.cmd(mode, spec)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start infra node")
    }

    fn boto(&self, code: &str) -> Value {
        let script = format!(
            "import boto3, json, hashlib\ns3 = boto3.client('s3', endpoint_url={:?}, region_name='us-east-1', aws_access_key_id={:?}, aws_secret_access_key='testing')\n{code}",
            emulator().url(),
            self.acct
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "boto3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// The bytes of an object (hex through JSON).
    fn object(&self, key: &str) -> Option<Vec<u8>> {
        let v = self.boto(&format!(
            "try:\n  print(json.dumps(s3.get_object(Bucket='{}', Key={key})['Body'].read().hex()))\nexcept s3.exceptions.NoSuchKey:\n  print('null')",
            self.bucket,
            key = serde_json::to_string(key).unwrap()
        ));
        let hex = v.as_str()?;
        Some(
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect(),
        )
    }

    fn put(&self, key: &str, bytes: &[u8]) {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.boto(&format!(
            "s3.put_object(Bucket='{}', Key={key}, Body=bytes.fromhex('{hex}')); print('{{}}')",
            self.bucket,
            key = serde_json::to_string(key).unwrap()
        ));
    }

    fn dest(&self, task: &str) -> String {
        format!("s3://{}/ph/results/{task}/attempt-1", self.bucket)
    }

    fn step_spec(&self, task: &str, key: &str, command: &str) -> Value {
        json!({"task": task, "attempt": 1, "key": key, "name": format!("s{key}"), "rank": 0,
               "dest": self.dest(task), "timeout_seconds": 0, "background": false,
               "outputs": [], "command": command, "grace_seconds": 1})
    }

    /// The live processes of steps started from this node folder.
    fn left(&self) -> Vec<i32> {
        let tag = format!("INFRA_STEP_ROOT={}", self.root_s());
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if env.split(|b| *b == 0).any(|kv| kv == tag.as_bytes()) {
                out.push(pid);
            }
        }
        out
    }

    fn run_dir(&self, task: &str, key: &str) -> PathBuf {
        self.root().join("run").join(task).join("1").join(key)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for p in self.left() {
            // SAFETY: a test's own leftover processes.
            unsafe {
                libc::kill(p, libc::SIGKILL);
            }
        }
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn wait_for(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} did not appear", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A step that ignores SIGTERM and starts a daemon that left its session
/// (and ignores SIGTERM too).
const STUBBORN: &str = "setsid sh -c 'trap \"\" TERM; sleep 1000' & trap '' TERM; sleep 1000";

#[test]
fn node_step_records_exit_code_and_valid_runtime_json_for_a_hostile_task_id() {
    let n = Node::new("node_step_hostile_task_id");
    let task = "t\r\u{1}\"q'\\";
    let out = n.run(
        "step",
        &n.step_spec(task, "0", "echo out; echo err >&2; exit 3"),
    );
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("infra-node: step s0 exited with code 3 after "),
        "{}",
        text(&out.stdout)
    );
    let prefix = format!("ph/results/{task}/attempt-1/steps/0");
    let rt = n
        .object(&format!("{prefix}/runtime.json"))
        .expect("runtime.json uploaded");
    let v: Value = serde_json::from_slice(&rt).expect("runtime.json is valid JSON");
    assert_eq!(v["task"], task);
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["status"], "exited");
    assert_eq!(v["attempt"], 1);
    assert_eq!(v["index"], 0);
    assert_eq!(v["background"], false);
    assert_eq!(v["instance_id"], "i-0123456789abcdef0");
    assert_eq!(v["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(v["peak_rss_kb"].as_u64().unwrap() > 0, "{v}");
    assert!(v["wall_seconds"].as_f64().is_some(), "{v}");
    assert_eq!(n.object(&format!("{prefix}/stdout.log")).unwrap(), b"out\n");
    assert_eq!(n.object(&format!("{prefix}/stderr.log")).unwrap(), b"err\n");
}

#[test]
fn node_step_collects_binary_stdout_byte_for_byte_and_outputs() {
    let n = Node::new("node_step_binary_stdout");
    let cmd = "for i in $(seq 0 255); do printf \"\\\\$(printf %o $i)\"; done; \
               mkdir -p res && echo r > res/a.txt && echo o > \"$INFRA_OUTPUT_DIR/o.txt\"";
    let mut spec = n.step_spec("bin", "0", cmd);
    spec["outputs"] = json!(["res", "missing.txt"]);
    let out = n.run("step", &spec);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let all: Vec<u8> = (0..=255u8).collect();
    let local = std::fs::read(n.run_dir("bin", "0").join("upload/steps/0/stdout.log")).unwrap();
    assert_eq!(local, all);
    let up = n
        .object("ph/results/bin/attempt-1/steps/0/stdout.log")
        .unwrap();
    assert_eq!(up, all);
    assert_eq!(
        n.object("ph/results/bin/attempt-1/files/res/a.txt")
            .unwrap(),
        b"r\n"
    );
    assert_eq!(
        n.object("ph/results/bin/attempt-1/files/o.txt").unwrap(),
        b"o\n"
    );
}

#[test]
fn node_step_timeout_kills_a_term_ignoring_step_and_its_escaped_daemon() {
    let n = Node::new("node_step_timeout_kills");
    let mut spec = n.step_spec("slow", "0", STUBBORN);
    spec["timeout_seconds"] = json!(1);
    let t0 = Instant::now();
    let out = n.run("step", &spec);
    assert_eq!(code(&out), 124, "{}", text(&out.stderr));
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert_eq!(
        n.left(),
        Vec::<i32>::new(),
        "processes left after the timeout"
    );
    let rt = n
        .object("ph/results/slow/attempt-1/steps/0/runtime.json")
        .unwrap();
    let v: Value = serde_json::from_slice(&rt).unwrap();
    assert_eq!(v["status"], "timeout");
    assert_eq!(v["exit_code"], 124);
}

#[test]
fn node_stop_kills_a_term_ignoring_background_step_and_its_escaped_daemon() {
    let n = Node::new("node_stop_kills");
    let mut spec = n.step_spec("bg", "0", STUBBORN);
    spec["background"] = json!(true);
    let agent = n.spawn("step", &spec);
    wait_for(&n.run_dir("bg", "0").join("pid"));
    // the daemon is up
    let deadline = Instant::now() + Duration::from_secs(10);
    while n.left().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the step did not start its daemon"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stop = n.run("stop", &json!({"task": "bg", "attempt": 1, "keys": ["0"]}));
    assert_eq!(code(&stop), 0, "{}", text(&stop.stderr));
    let out = agent.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("step s0 stopped with code 0"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(n.left(), Vec::<i32>::new(), "processes left after the stop");
    let v: Value = serde_json::from_slice(
        &n.object("ph/results/bg/attempt-1/steps/0/runtime.json")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(v["status"], "stopped");
    assert_eq!(v["background"], true);
}

/// A stop can overtake the step it stops (two Run Commands, the stop's
/// agent quicker to start): the step is then stopped as soon as it starts,
/// never left to run to its end.
#[test]
fn node_stop_that_arrives_before_the_step_starts_still_stops_it() {
    let n = Node::new("node_stop_early");
    let stop = n.run(
        "stop",
        &json!({"task": "early", "attempt": 1, "keys": ["0"]}),
    );
    assert_eq!(code(&stop), 0, "{}", text(&stop.stderr));
    let started = Instant::now();
    let out = n.run(
        "step",
        &n.step_spec("early", "0", "sleep 30; echo finished"),
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(
        text(&out.stdout).contains("step s0 stopped with code 0"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn node_step_agent_terminated_stops_the_step_and_exits_143() {
    let n = Node::new("node_step_agent_term");
    let agent = n.spawn("step", &n.step_spec("term", "0", STUBBORN));
    wait_for(&n.run_dir("term", "0").join("pid"));
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: our own child.
    unsafe {
        libc::kill(agent.id() as i32, libc::SIGTERM);
    }
    let out = agent.wait_with_output().unwrap();
    assert_eq!(code(&out), 143, "{}", text(&out.stderr));
    assert_eq!(n.left(), Vec::<i32>::new());
}

#[test]
fn node_reap_kills_a_step_left_by_a_killed_agent() {
    let n = Node::new("node_reap_after_kill");
    let mut agent = n.spawn("step", &n.step_spec("orphan", "0", STUBBORN));
    wait_for(&n.run_dir("orphan", "0").join("pid"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while n.left().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the step did not start its daemon"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.kill().unwrap(); // SIGKILL: the agent cannot clean up
    agent.wait().unwrap();
    assert!(!n.left().is_empty(), "the step outlives its agent");
    let out = n.run("reap", &json!({}));
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "infra-node: stopped 1 step(s)");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !n.left().is_empty() {
        assert!(Instant::now() < deadline, "left after reap: {:?}", n.left());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn node_step_write_failure_exits_176_never_0() {
    let n = Node::new("node_step_write_failure");
    // runtime.json: the step turns it into /dev/full (no space left)
    let cmd = "ln -s /dev/full \"$INFRA_STEP_ROOT/run/full/1/0/upload/steps/0/runtime.json\"";
    let out = n.run("step", &n.step_spec("full", "0", cmd));
    assert_eq!(code(&out), 176, "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("runtime.json") && err.contains("No space left"),
        "{err}"
    );
    // the exit code file (written beside it, then renamed; $PPID is the agent)
    let cmd = "ln -s /dev/full \"$INFRA_STEP_ROOT/run/full/1/1/rc.tmp$PPID\"";
    let out = n.run("step", &n.step_spec("full", "1", cmd));
    assert_eq!(code(&out), 176, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("rc.tmp"),
        "{}",
        text(&out.stderr)
    );
}

fn sha256(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The plan's setup calls the project's scripts the way steps do
/// (`bash "$INFRA_SCRIPTS/vllm_setup.sh"` in plans/phase15.json).
#[test]
fn the_setup_sees_the_bundles_scripts_as_infra_scripts() {
    let n = Node::new("node_setup_scripts");
    let script = b"echo from the bundle\n".to_vec();
    let setup = b"bash \"$INFRA_SCRIPTS/hello.sh\" > from-scripts\n".to_vec();
    let manifest = serde_json::to_vec_pretty(&json!({
        "scripts/hello.sh": sha256(&script),
        "setup.sh": sha256(&setup),
    }))
    .unwrap();
    n.put("ph/_bundle/scripts/hello.sh", &script);
    n.put("ph/_bundle/setup.sh", &setup);
    n.put("ph/_bundle.manifest", &manifest);
    let bundle = json!({"bucket": n.bucket, "prefix": "ph/_bundle",
                        "manifest_key": "ph/_bundle.manifest", "manifest_sha256": sha256(&manifest)});
    let setup_spec =
        json!({"hash": "h1", "dest": format!("s3://{}/ph/logs/setup", n.bucket), "bundle": bundle});
    let out = n.run("setup", &setup_spec);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(n.root().join("setup/from-scripts")).unwrap(),
        "from the bundle\n"
    );
}

#[test]
fn node_bundle_is_verified_and_tampering_is_refused() {
    let n = Node::new("node_bundle_verified");
    let script = b"echo from the bundle\n".to_vec();
    let setup = b"echo setting up; touch done-by-setup\n".to_vec();
    let manifest = serde_json::to_vec_pretty(&json!({
        "scripts/hello.sh": sha256(&script),
        "setup.sh": sha256(&setup),
        "tasks/t.json": sha256(b"{}"),
    }))
    .unwrap();
    n.put("ph/_bundle/scripts/hello.sh", &script);
    n.put("ph/_bundle/setup.sh", &setup);
    n.put("ph/_bundle.manifest", &manifest);
    let bundle = json!({"bucket": n.bucket, "prefix": "ph/_bundle",
                        "manifest_key": "ph/_bundle.manifest", "manifest_sha256": sha256(&manifest)});
    let mut spec = n.step_spec("b", "0", "bash \"$INFRA_SCRIPTS/hello.sh\"");
    spec["bundle"] = bundle.clone();
    let out = n.run("step", &spec);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(
        n.object("ph/results/b/attempt-1/steps/0/stdout.log")
            .unwrap(),
        b"from the bundle\n"
    );
    assert!(
        !n.root().join("bundle/tasks").exists(),
        "task definitions are not fetched"
    );

    // setup runs once per hash, its log goes up
    let setup_spec =
        json!({"hash": "h1", "dest": format!("s3://{}/ph/logs/setup", n.bucket), "bundle": bundle});
    let out = n.run("setup", &setup_spec);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(n.root().join("setup/done-by-setup").exists());
    assert_eq!(
        n.object("ph/logs/setup/i-0123456789abcdef0.log").unwrap(),
        b"setting up\n"
    );
    let out = n.run("setup", &setup_spec);
    assert_eq!(
        text(&out.stdout).trim(),
        "infra-node: setup h1 already done"
    );

    // a tampered file: the manifest (whose hash the command carries) no longer matches it
    let evil = b"touch \"$INFRA_WORK_DIR/pwned\"\n".to_vec();
    let manifest2 =
        serde_json::to_vec_pretty(&json!({"scripts/hello.sh": sha256(b"new\n")})).unwrap();
    n.put("ph/_bundle/scripts/hello.sh", &evil);
    n.put("ph/_bundle.manifest", &manifest2);
    let mut spec = n.step_spec("b", "1", "bash \"$INFRA_SCRIPTS/hello.sh\"; touch ran");
    spec["bundle"] = json!({"bucket": n.bucket, "prefix": "ph/_bundle",
                            "manifest_key": "ph/_bundle.manifest", "manifest_sha256": sha256(&manifest2)});
    let out = n.run("step", &spec);
    assert_eq!(code(&out), 172, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("scripts/hello.sh"),
        "{}",
        text(&out.stderr)
    );
    assert!(!n.root().join("work/b/1/ran").exists() && !n.root().join("work/b/1/pwned").exists());
    assert_eq!(
        std::fs::read(n.root().join("bundle/scripts/hello.sh")).unwrap(),
        script
    );

    // a tampered manifest: its hash is not the one the command carries
    let forged = serde_json::to_vec_pretty(&json!({"scripts/hello.sh": sha256(&evil)})).unwrap();
    n.put("ph/_bundle.manifest", &forged);
    let out = n.run("step", &spec);
    assert_eq!(code(&out), 172, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("manifest"),
        "{}",
        text(&out.stderr)
    );
    assert!(!n.root().join("work/b/1/ran").exists() && !n.root().join("work/b/1/pwned").exists());

    // a manifest naming a path outside the bundle folder
    let escape = serde_json::to_vec_pretty(&json!({"../evil.sh": sha256(&evil)})).unwrap();
    n.put("ph/_bundle.manifest", &escape);
    spec["bundle"]["manifest_sha256"] = json!(sha256(&escape));
    let out = n.run("step", &spec);
    assert_eq!(code(&out), 172, "{}", text(&out.stderr));
    assert!(!n.root().join("evil.sh").exists());
}

#[test]
fn node_health_waits_for_the_background_step() {
    let n = Node::new("node_health");
    let mut spec = n.step_spec("h", "0", "sleep 1000");
    spec["background"] = json!(true);
    let agent = n.spawn("step", &spec);
    wait_for(&n.run_dir("h", "0").join("pid"));
    let h = json!({"task": "h", "attempt": 1, "key": "0", "timeout_seconds": 5, "interval_seconds": 0.1,
                   "url": null, "command": "test -e ready"});
    let health = n.spawn("health", &h);
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(n.root().join("work/h/1/ready"), "").unwrap();
    let out = health.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "infra-node: healthy");
    let stop = n.run("stop", &json!({"task": "h", "attempt": 1, "keys": ["0"]}));
    assert_eq!(code(&stop), 0);
    assert_eq!(code(&agent.wait_with_output().unwrap()), 0);
    // the step has ended: 3
    let out = n.run("health", &h);
    assert_eq!(code(&out), 3, "{}", text(&out.stdout));
}

#[test]
fn node_step_upload_failure_exits_171() {
    let n = Node::new("node_step_upload_failure");
    let mut spec = n.step_spec("u", "0", "true");
    spec["dest"] = json!("s3://no-such-bucket-here/x");
    let out = n.run("step", &spec);
    assert_eq!(code(&out), 171, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot upload the results of step s0"));
}

#[test]
fn node_step_spot_notice_stops_the_step_with_175() {
    let mut n = Node::new("node_step_spot_notice");
    let id = n.boto(
        "ec2 = boto3.client('ec2', endpoint_url=s3.meta.endpoint_url, region_name='us-east-1', aws_access_key_id=s3._request_signer._credentials.access_key, aws_secret_access_key='testing')\n\
         img = ec2.describe_images()['Images'][0]['ImageId']\n\
         r = ec2.run_instances(ImageId=img, MinCount=1, MaxCount=1, InstanceType='t3.micro', InstanceMarketOptions={'MarketType': 'spot'})\n\
         print(json.dumps(r['Instances'][0]['InstanceId']))",
    );
    let id = id.as_str().unwrap().to_string();
    n.imds = Some(format!("{}/_imds/{id}/", emulator().url()));
    let agent = n.spawn("step", &n.step_spec("spot", "0", STUBBORN));
    wait_for(&n.run_dir("spot", "0").join("pid"));
    emulator().control(
        "POST",
        "interrupt",
        json!({"account_id": n.acct, "instance_id": id, "delay_seconds": 120, "replace": false}),
    );
    let out = agent.wait_with_output().unwrap();
    assert_eq!(code(&out), 175, "{}", text(&out.stderr));
    assert_eq!(n.left(), Vec::<i32>::new());
    let v: Value = serde_json::from_slice(
        &n.object("ph/results/spot/attempt-1/steps/0/runtime.json")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(v["status"], "interrupted");
}

#[test]
fn node_step_first_step_of_an_attempt_removes_older_attempts() {
    let n = Node::new("node_step_older_attempts");
    let out = n.run("step", &n.step_spec("r", "0", "echo a > kept"));
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    // a second step of the same attempt keeps the work folder
    let out = n.run("step", &n.step_spec("r", "1", "cat kept"));
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let mut spec = n.step_spec("r", "0", "test ! -e kept");
    spec["attempt"] = json!(2);
    let out = n.run("step", &spec);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    for top in ["work", "run", "out"] {
        assert!(
            !n.root().join(top).join("r/1").exists(),
            "{top}/r/1 is still there"
        );
        assert!(
            n.root().join(top).join("r/2").exists(),
            "{top}/r/2 is missing"
        );
    }
}
