//! The inference team's plans as shipped (plans/phase14.json,
//! plans/phase15.json) on the local provider, where the stand-in server
//! (scripts/standin_server.py) takes vLLM's place; the stand-in, the
//! disaggregated proxy and the vLLM launcher on their own.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

/// The inference templates use vLLM's fixed ports (8000, 8100, 8200, 8192)
/// on the local nodes' loopback addresses, which are the same in every
/// project: one of these campaigns at a time.
static PORTS: Mutex<()> = Mutex::new(());

fn ports() -> std::sync::MutexGuard<'static, ()> {
    PORTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// `results/<campaign>/table.csv` as rows of column -> cell.
fn table(p: &Project, campaign: &str) -> Vec<HashMap<String, String>> {
    let mut t = csv::Reader::from_path(p.path().join(format!("results/{campaign}/table.csv")))
        .unwrap_or_else(|e| panic!("results/{campaign}/table.csv: {e}"));
    let head: Vec<String> = t.headers().unwrap().iter().map(String::from).collect();
    t.records()
        .map(|r| {
            let r = r.unwrap();
            head.iter()
                .cloned()
                .zip(r.iter().map(String::from))
                .collect()
        })
        .collect()
}

fn num(row: &HashMap<String, String>, col: &str) -> f64 {
    let cell = row
        .get(col)
        .unwrap_or_else(|| panic!("no column {col} in {row:?}"));
    cell.parse()
        .unwrap_or_else(|_| panic!("{col} = {cell:?} is not a number ({row:?})"))
}

fn row<'a>(rows: &'a [HashMap<String, String>], task: &str) -> &'a HashMap<String, String> {
    rows.iter()
        .find(|r| r["task"] == task)
        .unwrap_or_else(|| panic!("no row for {task}"))
}

/// Every row: a complete, plausible benchmark by the stand-in.
fn check_rows(rows: &[HashMap<String, String>], measured: f64) {
    for r in rows {
        assert_eq!(r["server"], "standin", "{r:?}");
        assert_eq!(num(r, "successful_requests"), measured, "{r:?}");
        assert_eq!(num(r, "failed_requests"), 0.0, "{r:?}");
        assert_eq!(
            num(r, "total_input_tokens"),
            measured * num(r, "prompt_tokens"),
            "every prompt token reached the server: {r:?}"
        );
        assert_eq!(
            num(r, "total_output_tokens"),
            measured * num(r, "max_tokens"),
            "{r:?}"
        );
        for stat in ["ttft_ms", "tpot_ms", "itl_ms", "e2e_latency_ms"] {
            let (mean, p50, p90, p99) = (
                num(r, &format!("{stat}_mean")),
                num(r, &format!("{stat}_p50")),
                num(r, &format!("{stat}_p90")),
                num(r, &format!("{stat}_p99")),
            );
            assert!(mean > 0.0 && p50 > 0.0, "{stat}: {r:?}");
            assert!(
                p50 <= p90 && p90 <= p99,
                "{stat} percentiles in order: {r:?}"
            );
        }
        assert!(
            num(r, "e2e_latency_ms_p50") > num(r, "ttft_ms_p50"),
            "{r:?}"
        );
        assert!(num(r, "request_throughput_rps") > 0.0, "{r:?}");
        assert!(num(r, "output_token_throughput_tps") > 0.0, "{r:?}");
        assert_eq!(num(r, "attempts"), 1.0, "{r:?}");
    }
}

/// `infra up <phase> --provider local` of the shipped plan in a copy of the
/// examples: every one of its `n` tasks succeeds, and its table's rows
/// carry the benchmark's figures.
fn up_locally(phase: &str, n: usize) -> (Project, Vec<HashMap<String, String>>) {
    let p = Project::with_examples();
    let t0 = Instant::now();
    let r = p.infra(&["up", phase, "--provider", "local", "--yes"]);
    let took = t0.elapsed();
    r.ok();
    println!("infra up {phase} --provider local: {took:?}");
    assert!(r.stdout.contains(&format!("{n} succeeded")), "{}", r.stdout);
    p.infra(&["results", phase, "--provider", "local"]).ok();
    let rows = table(&p, &format!("{phase}@local"));
    assert_eq!(rows.len(), n);
    check_rows(&rows, 30.0);
    (p, rows)
}

#[test]
fn phase14_runs_as_shipped_on_the_local_provider_with_the_stand_in_server() {
    let _one = ports();
    let (p, rows) = up_locally("phase14", 6);
    // the time to the first token grows with the prompt (no more than that:
    // at the stand-in's time scale, 0.01, the HTTP and JSON work of a
    // loaded machine is of the same order as the simulated prefill)
    let ttft = |t: &str| num(row(&rows, t), "ttft_ms_p50");
    assert!(
        ttft("p14-L1-unified-tp2-8k-c1") > ttft("p14-L0-unified-tp2-2k-c1"),
        "{rows:?}"
    );
    // eight requests at once queue for the prefill
    assert!(
        ttft("p14-L1-unified-tp2-8k-c8") > ttft("p14-L1-unified-tp2-8k-c1"),
        "{rows:?}"
    );
    // the template computed max_model_len from the prompt and the output
    let task: Value =
        serde_json::from_str(&p.read(".infra/phase14@local/tasks/p14-L1-unified-tp2-8k-c1.json"))
            .unwrap();
    assert!(task.to_string().contains("--max-model-len 8080"), "{task}");
}

#[test]
fn phase15_runs_as_shipped_on_the_local_provider_unified_and_disaggregated_through_the_proxy() {
    let _one = ports();
    let (p, rows) = up_locally("phase15", 8);
    let ttft = |t: &str| num(row(&rows, t), "ttft_ms_p50");
    for backend in ["efa", "tcp"] {
        assert!(
            ttft(&format!("p15-L1-{backend}-16k-c1")) > ttft(&format!("p15-L0-{backend}-4k-c1")),
            "{rows:?}"
        );
    }
    // the disaggregated tasks went through the proxy: the producer prefilled,
    // the consumer pulled the KV cache and decoded
    for t in ["p15-L0-efa-4k-c1", "p15-L1-tcp-16k-c1"] {
        let task: Value =
            serde_json::from_str(&p.read(&format!(".infra/phase15@local/tasks/{t}.json"))).unwrap();
        let names: Vec<&str> = task["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["producer", "consumer", "proxy", "benchmark"]);
        let out = p.read(&format!("results/phase15@local/{t}/stdout.log"));
        assert!(out.contains("disagg_proxy: http://127."), "{out}");
        assert!(out.contains("as consumer"), "{out}");
    }
    // (the plan's setup ran on both nodes: locally a no-op, else `up` fails)
}

// ---------------------------------------------------------------------------
// the stand-in server and the proxy on their own

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a script of scripts/ on 127.0.0.1 with port 0 and read the port it
/// printed (`... http://127.0.0.1:<port>...`).
fn start(script: &str, args: &[&str]) -> Server {
    let mut child = Command::new("python3")
        .arg(repo().join("scripts").join(script))
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    Server { child, port }
}

/// One HTTP/1.0 exchange: (status, body).
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let b = body.map(|v| v.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
        b.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

const MODEL: &str = "Qwen/Qwen2.5-7B-Instruct";

#[test]
fn the_stand_in_speaks_the_openai_completions_api_as_vllm_does() {
    let s = start(
        "standin_server.py",
        &["--model", MODEL, "--time-scale", "0.1"],
    );
    let (code, body) = http(s.port, "GET", "/health", None);
    assert_eq!((code, body.as_str()), (200, ""));
    let (code, body) = http(s.port, "GET", "/v1/models", None);
    assert_eq!(code, 200);
    let m = json_of(&body);
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], MODEL);
    assert_eq!(m["data"][0]["object"], "model");
    assert_eq!(m["data"][0]["owned_by"], "standin");
    assert_eq!(m["data"][0]["max_model_len"], 32768);

    // not streamed: one answer with its usage
    let ids: Vec<u32> = (0..100).map(|i| 1000 + i).collect();
    let (code, body) = http(
        s.port,
        "POST",
        "/v1/completions",
        Some(&json!({"model": MODEL, "prompt": ids, "max_tokens": 5})),
    );
    assert_eq!(code, 200, "{body}");
    let c = json_of(&body);
    assert_eq!(c["object"], "text_completion");
    assert!(c["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(c["model"], MODEL);
    assert_eq!(c["choices"][0]["index"], 0);
    assert_eq!(c["choices"][0]["finish_reason"], "length");
    assert_eq!(
        c["choices"][0]["text"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .count(),
        5
    );
    assert_eq!(
        c["usage"],
        json!({"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105,
               "prompt_tokens_details": {"cached_tokens": 0}})
    );
    // a text prompt is counted too (about four characters a token)
    let (_, body) = http(
        s.port,
        "POST",
        "/v1/completions",
        Some(&json!({"prompt": "x".repeat(400), "max_tokens": 1})),
    );
    assert_eq!(json_of(&body)["usage"]["prompt_tokens"], 100);

    // streamed: server-sent events, one token each, the usage, then [DONE]
    let (code, body) = http(
        s.port,
        "POST",
        "/v1/completions",
        Some(
            &json!({"model": MODEL, "prompt": ids, "max_tokens": 4, "stream": true,
                     "stream_options": {"include_usage": true}}),
        ),
    );
    assert_eq!(code, 200);
    let events: Vec<&str> = body
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap_or_else(|| panic!("{e:?}")))
        .collect();
    assert_eq!(events.len(), 6, "{body}");
    assert_eq!(events[5], "[DONE]");
    let chunks: Vec<Value> = events[..5].iter().map(|e| json_of(e)).collect();
    for (k, ch) in chunks[..4].iter().enumerate() {
        assert_eq!(ch["object"], "text_completion");
        assert!(ch["choices"][0]["text"].as_str().unwrap().starts_with(' '));
        let fin = if k == 3 { json!("length") } else { Value::Null };
        assert_eq!(ch["choices"][0]["finish_reason"], fin);
    }
    assert_eq!(chunks[4]["choices"], json!([]));
    assert_eq!(chunks[4]["usage"]["completion_tokens"], 4);
    assert_eq!(chunks[4]["usage"]["prompt_tokens"], 100);

    // errors as vLLM answers them
    let (code, body) = http(
        s.port,
        "POST",
        "/v1/completions",
        Some(&json!({"model": "other", "prompt": "hi"})),
    );
    assert_eq!(code, 404);
    assert!(json_of(&body)["error"]["message"]
        .as_str()
        .unwrap()
        .contains("does not exist"));
    let (code, body) = http(
        s.port,
        "POST",
        "/v1/completions",
        Some(&json!({"prompt": ids, "max_tokens": 32700})),
    );
    assert_eq!(code, 400);
    assert!(
        body.contains("maximum context length is 32768 tokens"),
        "{body}"
    );
    assert_eq!(http(s.port, "GET", "/nope", None).0, 404);

    // the prefill takes longer for a longer prompt (deterministic model: at
    // a time scale of 0.1, 8000 tokens take about 230 ms, 100 about 2 ms)
    let timed = |n: u32| {
        let ids: Vec<u32> = (0..n).map(|i| 1000 + i % 20000).collect();
        let t = Instant::now();
        let (code, _) = http(
            s.port,
            "POST",
            "/v1/completions",
            Some(&json!({"prompt": ids, "max_tokens": 1})),
        );
        assert_eq!(code, 200);
        t.elapsed()
    };
    let (short, long) = (timed(100), timed(8000));
    assert!(
        long > short + Duration::from_millis(100),
        "{short:?} vs {long:?}"
    );
}

#[test]
fn the_proxy_prefills_on_the_producer_and_decodes_on_the_consumer_with_its_kv_cache() {
    let producer = start(
        "standin_server.py",
        &["--model", MODEL, "--role", "producer", "--time-scale", "0"],
    );
    let peer = format!("127.0.0.1:{}", producer.port);
    let consumer = start(
        "standin_server.py",
        &[
            "--model",
            MODEL,
            "--role",
            "consumer",
            "--peer",
            &peer,
            "--time-scale",
            "0",
        ],
    );
    let proxy = start(
        "disagg_proxy.py",
        &[
            "--prefill",
            &format!("http://127.0.0.1:{}", producer.port),
            "--decode",
            &format!("http://127.0.0.1:{}", consumer.port),
        ],
    );
    assert_eq!(http(proxy.port, "GET", "/health", None).0, 200);
    assert_eq!(
        json_of(&http(proxy.port, "GET", "/v1/models", None).1)["data"][0]["standin"]["role"],
        "consumer"
    );

    // the producer, asked to leave the decode to another server, answers one
    // token and the handle of the KV cache it holds
    let ids: Vec<u32> = (0..64).map(|i| 1000 + i).collect();
    let (code, body) = http(
        producer.port,
        "POST",
        "/v1/completions",
        Some(&json!({"prompt": ids, "max_tokens": 9,
                     "kv_transfer_params": {"do_remote_decode": true, "do_remote_prefill": false}})),
    );
    assert_eq!(code, 200, "{body}");
    let c = json_of(&body);
    assert_eq!(c["usage"]["completion_tokens"], 1);
    let kv = &c["kv_transfer_params"];
    assert_eq!(kv["do_remote_prefill"], true);
    assert_eq!(kv["remote_host"], "127.0.0.1");
    assert_eq!(kv["remote_block_ids"].as_array().unwrap().len(), 4);
    // the consumer pulls it once; a second pull of the same handle fails
    let decode = json!({"prompt": ids, "max_tokens": 9, "kv_transfer_params": kv});
    let (code, body) = http(consumer.port, "POST", "/v1/completions", Some(&decode));
    assert_eq!(code, 200, "{body}");
    assert_eq!(json_of(&body)["usage"]["completion_tokens"], 9);
    let (code, body) = http(consumer.port, "POST", "/v1/completions", Some(&decode));
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("KV cache transfer"), "{body}");

    // through the proxy, streamed
    let (code, body) = http(
        proxy.port,
        "POST",
        "/v1/completions",
        Some(
            &json!({"model": MODEL, "prompt": ids, "max_tokens": 3, "stream": true,
                     "stream_options": {"include_usage": true}}),
        ),
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert_eq!(body.matches("\"finish_reason\": \"length\"").count(), 1);
    assert!(body.contains("\"completion_tokens\": 3"), "{body}");
    // not streamed, with an error of the producer passed on as it is
    let (code, body) = http(
        proxy.port,
        "POST",
        "/v1/completions",
        Some(&json!({"model": "other", "prompt": ids})),
    );
    assert_eq!(code, 404, "{body}");

    // a proxy whose producer is gone is not healthy
    drop(producer);
    assert_eq!(http(proxy.port, "GET", "/health", None).0, 503);
}

/// The same KV cache pulled over EFA and over TCP: the stand-in charges the
/// transport's bandwidth (16,000 tokens of a 7B model, 0.9 GB: about 0.22 s
/// over EFA, 0.87 s over TCP; here at a time scale of 0.2).
#[test]
fn the_stand_in_charges_the_kv_transfer_at_the_transports_bandwidth() {
    let producer = start(
        "standin_server.py",
        &["--model", MODEL, "--role", "producer", "--time-scale", "0"],
    );
    let ids: Vec<u32> = (0..16000).map(|i| 1000 + i % 20000).collect();
    let pull = |transport: &str| {
        let consumer = start(
            "standin_server.py",
            &[
                "--model",
                MODEL,
                "--role",
                "consumer",
                "--kv-transport",
                transport,
                "--time-scale",
                "0.2",
            ],
        );
        let (code, body) = http(
            producer.port,
            "POST",
            "/v1/completions",
            Some(
                &json!({"prompt": ids, "max_tokens": 1, "kv_transfer_params": {"do_remote_decode": true}}),
            ),
        );
        assert_eq!(code, 200, "{body}");
        let kv = json_of(&body)["kv_transfer_params"].clone();
        let t = Instant::now();
        let (code, body) = http(
            consumer.port,
            "POST",
            "/v1/completions",
            Some(&json!({"prompt": ids, "max_tokens": 1, "kv_transfer_params": kv})),
        );
        assert_eq!(code, 200, "{body}");
        t.elapsed()
    };
    let (efa, tcp) = (pull("efa"), pull("tcp"));
    assert!(efa > Duration::from_millis(40), "{efa:?}");
    assert!(
        tcp > efa + Duration::from_millis(100),
        "efa {efa:?}, tcp {tcp:?}"
    );
}

/// A fake venv whose `bin/vllm` prints its arguments and environment.
fn fake_venv(dir: &std::path::Path) -> std::path::PathBuf {
    let venv = dir.join("venv");
    std::fs::create_dir_all(venv.join("bin")).unwrap();
    let vllm = venv.join("bin/vllm");
    std::fs::write(
        &vllm,
        "#!/bin/sh\nprintf '%s\\n' \"$@\"\necho \"FI_PROVIDER=$FI_PROVIDER UCX_TLS=$UCX_TLS SIDE=$VLLM_NIXL_SIDE_CHANNEL_HOST\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&vllm, std::fs::Permissions::from_mode(0o755)).unwrap();
    venv
}

fn serve(venv: &std::path::Path, env: &[(&str, &str)], role: &str) -> std::process::Output {
    Command::new("bash")
        .arg(repo().join("scripts/vllm_serve.sh"))
        .args([
            "--venv",
            venv.to_str().unwrap(),
            "--model",
            MODEL,
            "--role",
            role,
        ])
        .args(["--port", "8100", "--tp", "2", "--max-model-len", "4074"])
        .env_remove("KV_TRANSPORT")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn vllm_serve_runs_vllm_with_the_kv_transfer_config_and_never_a_stand_in_on_a_cloud_node() {
    let dir = tempfile::tempdir().unwrap();
    let venv = fake_venv(dir.path());
    let env = [("INFRA_PROVIDER", "aws"), ("INFRA_NODE_ADDR", "10.0.1.5")];

    let out = serve(&venv, &env, "unified");
    assert!(out.status.success());
    let args = String::from_utf8_lossy(&out.stdout);
    assert!(
        args.starts_with(&format!(
            "serve\n{MODEL}\n--host\n0.0.0.0\n--port\n8100\n--tensor-parallel-size\n2\n"
        )),
        "{args}"
    );
    assert!(args.contains("--max-model-len\n4074\n"), "{args}");
    assert!(!args.contains("kv-transfer-config"), "{args}");

    let efa: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .chain([("KV_TRANSPORT", "efa")])
        .collect();
    let out = serve(&venv, &efa, "producer");
    let args = String::from_utf8_lossy(&out.stdout);
    let cfg = args
        .lines()
        .skip_while(|l| *l != "--kv-transfer-config")
        .nth(1)
        .unwrap_or_else(|| panic!("{args}"));
    assert_eq!(
        json_of(cfg),
        json!({"kv_connector": "NixlConnector", "kv_role": "kv_producer",
               "kv_load_failure_policy": "fail",
               "kv_connector_extra_config": {"backends": ["LIBFABRIC"]}})
    );
    assert!(args.contains("FI_PROVIDER=efa"), "{args}");
    assert!(args.contains("SIDE=10.0.1.5"), "{args}");

    let tcp: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .chain([("KV_TRANSPORT", "tcp")])
        .collect();
    let out = serve(&venv, &tcp, "consumer");
    let args = String::from_utf8_lossy(&out.stdout);
    assert!(args.contains("\"kv_role\":\"kv_consumer\""), "{args}");
    assert!(args.contains("\"backends\":[\"UCX\"]"), "{args}");
    assert!(args.contains("UCX_TLS=tcp"), "{args}");

    // no vLLM on a cloud node: a clear failure, no stand-in
    let none = dir.path().join("no-venv");
    let out = serve(&none, &env, "unified");
    assert_eq!(out.status.code(), Some(127));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no vLLM at"), "{err}");
    assert!(err.contains("Not starting the stand-in"), "{err}");
    assert!(out.stdout.is_empty());
    // nor without a provider at all
    let out = serve(&none, &[], "unified");
    assert_eq!(out.status.code(), Some(127));
}

#[test]
fn vllm_setup_is_a_no_op_locally_keeps_a_good_venv_and_never_builds_off_a_dlami() {
    let dir = tempfile::tempdir().unwrap();
    let setup = |venv: &std::path::Path, provider: &str| {
        Command::new("bash")
            .arg(repo().join("scripts/vllm_setup.sh"))
            .args([
                "--venv",
                venv.to_str().unwrap(),
                "--vllm-version",
                "v0.15.1",
            ])
            .env("INFRA_PROVIDER", provider)
            .output()
            .unwrap()
    };
    let missing = dir.path().join("none");
    // not run by infra (no INFRA_PROVIDER): refused, nothing downloaded
    let out = Command::new("bash")
        .arg(repo().join("scripts/vllm_setup.sh"))
        .args([
            "--venv",
            missing.to_str().unwrap(),
            "--vllm-version",
            "v0.15.1",
        ])
        .env_remove("INFRA_PROVIDER")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!missing.exists());
    let out = setup(&missing, "local");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("local provider"));
    assert!(!missing.exists(), "nothing built locally");

    // a venv whose python says vllm is 0.15.1 (the check's exit status) is kept
    let venv = dir.path().join("venv");
    std::fs::create_dir_all(venv.join("bin")).unwrap();
    let py = venv.join("bin/python");
    std::fs::write(&py, "#!/bin/sh\n[ \"$3\" = 0.15.1 ] && exit 0\nexit 1\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&py, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = setup(&venv, "aws");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("vllm 0.15.1 already in"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(py.exists(), "kept as it was");

    // an emulated node builds nothing (nothing downloaded onto this machine)
    let out = Command::new("bash")
        .arg(repo().join("scripts/vllm_setup.sh"))
        .args([
            "--venv",
            missing.to_str().unwrap(),
            "--vllm-version",
            "v0.15.1",
        ])
        .env("INFRA_PROVIDER", "aws")
        .env("INFRA_SANDBOX_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("emulated node"));
    assert!(!missing.exists());
    // nor a node without the Deep Learning AMI the venv_path is meant for
    if !std::path::Path::new("/opt/dlami").exists() {
        let out = setup(
            std::path::Path::new("/opt/dlami/nvme/venv/vllm-0.16"),
            "aws",
        );
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no /opt/dlami"));
    }
}
