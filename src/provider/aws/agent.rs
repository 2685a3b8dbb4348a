//! Shipping the node agent: the same `infra` binary runs on the nodes as
//! `infra node …` (src/node/). A Linux build for each node group's
//! architecture is put into the bucket once per content
//! (`_infra/bin/<sha256>/<arch>/infra`), and installed on a node by the
//! AWS-managed document `AWS-RunRemoteScript` (the SSM agent downloads it:
//! the node needs no awscli or curl), which checks its SHA-256 — carried by
//! the command itself — before it puts it at `$ROOT/bin/<sha256>/infra`.
//!
//! Which build: `INFRA_NODE_BINARY_<ARCH>` (a path) when set, else the
//! running executable when it is a Linux build for that architecture.
//! `scripts/build-node-binaries.sh` cross-builds the others.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::config::Clients;
use super::error::{api, AwsError};
use super::ssm::{self, End, Poller};
use crate::tasks::shell::quote;

/// A node's CPU architecture, as the agent builds are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The variable that names a build for this architecture.
    pub fn env_var(self) -> &'static str {
        match self {
            Arch::X86_64 => "INFRA_NODE_BINARY_X86_64",
            Arch::Aarch64 => "INFRA_NODE_BINARY_AARCH64",
        }
    }

    /// The architecture of an EC2 instance type, from its family: AWS
    /// Graviton families carry a `g` right after the generation number
    /// (`c7g`, `m6gd`, `c6gn`, `g5g`, `hpc7g`), and `a1` is Graviton 1.
    /// Every other family sold today is x86_64.
    pub fn of_instance_type(t: &str) -> Arch {
        let family = t.split('.').next().unwrap_or(t);
        if family == "a1" {
            return Arch::Aarch64;
        }
        let letters = family.trim_start_matches(|c: char| c.is_ascii_alphabetic());
        let after = letters.trim_start_matches(|c: char| c.is_ascii_digit());
        if after.len() < letters.len() && after.starts_with('g') {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// ELF `e_machine` of this architecture.
    fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 0x3E,
            Arch::Aarch64 => 0xB7,
        }
    }
}

/// A build of the agent found on this machine.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeBinary {
    pub arch: Arch,
    pub path: PathBuf,
}

/// What a file is, as far as running it on a Linux node goes: Ok for a
/// 64-bit little-endian Linux (or System V) ELF executable for `arch`.
pub fn check_elf(path: &Path, arch: Arch) -> Result<(), String> {
    let mut head = [0u8; 20];
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    f.read_exact(&mut head)
        .map_err(|_| "it is not an executable (too short)".to_string())?;
    if &head[..4] != b"\x7fELF" {
        return Err("it is not an ELF executable (a Linux build is needed)".into());
    }
    if head[4] != 2 || head[5] != 1 {
        return Err("it is not a 64-bit little-endian ELF executable".into());
    }
    if head[7] != 0 && head[7] != 3 {
        return Err(format!("its ELF OS ABI is {}, not Linux", head[7]));
    }
    let machine = u16::from_le_bytes([head[18], head[19]]);
    if machine != arch.elf_machine() {
        let is = match machine {
            0x3E => "x86_64",
            0xB7 => "aarch64",
            _ => "another architecture",
        };
        return Err(format!("it is built for {is}, not {}", arch.as_str()));
    }
    Ok(())
}

/// The build of the agent for `arch`: the variable's path, else the running
/// executable if it fits. Err: why none, with the command that builds one.
pub fn find(arch: Arch, vars: &BTreeMap<String, String>) -> Result<NodeBinary, String> {
    let var = arch.env_var();
    if let Some(p) = vars.get(var).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(p);
        return match check_elf(&path, arch) {
            Ok(()) => Ok(NodeBinary { arch, path }),
            Err(why) => Err(format!(
                "{var}={p} cannot run on {} nodes: {why}",
                arch.as_str()
            )),
        };
    }
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the running executable: {e}"))?;
    match check_elf(&exe, arch) {
        Ok(()) => Ok(NodeBinary { arch, path: exe }),
        Err(why) => Err(format!(
            "no build of infra for {} nodes: the running executable cannot be used ({why}) and {var} is not set",
            arch.as_str()
        )),
    }
}

/// The command that builds an agent for `arch`.
pub fn build_hint(arch: Arch) -> String {
    format!(
        "build one with `scripts/build-node-binaries.sh {a}` and set {v}=target/node/{a}/infra",
        a = arch.as_str(),
        v = arch.env_var()
    )
}

/// SHA-256 of a file, read in blocks.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// An agent build in the bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRef {
    pub arch: Arch,
    pub sha256: String,
    pub bucket: String,
    pub key: String,
}

impl AgentRef {
    /// Where the node keeps it (shell text: `$R` is the node's root).
    pub fn node_path(&self) -> String {
        format!("\"$R/bin/{}/infra\"", self.sha256)
    }
}

/// Put the build into the bucket unless it is there already (same content,
/// same key): one HeadObject per run, one upload per new build.
pub async fn upload(c: &Clients, bucket: &str, bin: &NodeBinary) -> Result<AgentRef, AwsError> {
    let sha = hash(bin).await?;
    upload_hashed(c, bucket, bin, sha).await
}

/// The build's SHA-256, computed on a blocking thread (tens of MB).
pub async fn hash(bin: &NodeBinary) -> Result<String, AwsError> {
    let path = bin.path.clone();
    tokio::task::spawn_blocking(move || hash_file(&path))
        .await
        .map_err(|e| AwsError::Failed(format!("hashing the node agent failed: {e}")))?
        .map_err(|e| {
            AwsError::Failed(format!(
                "cannot read the node agent {}: {e}",
                bin.path.display()
            ))
        })
}

/// [`upload`] of a build whose SHA-256 is known.
pub async fn upload_hashed(
    c: &Clients,
    bucket: &str,
    bin: &NodeBinary,
    sha: String,
) -> Result<AgentRef, AwsError> {
    let key = format!("_infra/bin/{sha}/{}/infra", bin.arch.as_str());
    let there = c.s3.head_object().bucket(bucket).key(&key).send().await;
    match there {
        Ok(h)
            if h.content_length() == std::fs::metadata(&bin.path).ok().map(|m| m.len() as i64) => {}
        _ => {
            let body = aws_sdk_s3::primitives::ByteStream::from_path(&bin.path)
                .await
                .map_err(|e| {
                    AwsError::Failed(format!(
                        "cannot read the node agent {}: {e}",
                        bin.path.display()
                    ))
                })?;
            // the SHA-256 is known: S3 checks it, and the SDK computes no
            // checksum of its own over tens of MB
            let raw: Vec<u8> = (0..sha.len() / 2)
                .filter_map(|i| u8::from_str_radix(&sha[2 * i..2 * i + 2], 16).ok())
                .collect();
            c.s3.put_object()
                .bucket(bucket)
                .key(&key)
                .body(body)
                .checksum_sha256(aws_smithy_types::base64::encode(&raw))
                .send()
                .await
                .map_err(api("upload the node agent"))?;
        }
    }
    Ok(AgentRef {
        arch: bin.arch,
        sha256: sha,
        bucket: bucket.to_string(),
        key,
    })
}

/// The node's root folder, as every script sent to a node computes it.
pub const ROOT: &str = "R=\"${INFRA_NODE_ROOT:-${INFRA_SANDBOX_DIR:-/var/lib/infra}}\"\n";

/// Exit code of a script that finds no agent installed.
pub const EXIT_NO_AGENT: i32 = 173;
/// Exit code of an install whose download does not match its SHA-256.
pub const EXIT_BAD_AGENT: i32 = 172;

/// The lines that stop a script when the agent is missing.
pub fn require(agent: &AgentRef) -> String {
    format!(
        "[ -x {p} ] || {{ echo \"infra: the node agent {short} is not installed on this node\" >&2; exit {EXIT_NO_AGENT}; }}\n",
        p = agent.node_path(),
        short = &agent.sha256[..12.min(agent.sha256.len())]
    )
}

/// The command line of the install (run by AWS-RunRemoteScript in the
/// folder it downloaded `infra` into): check the SHA-256, then move it into
/// place atomically; then start the idle watcher when `watch` is given.
pub fn install_command(agent: &AgentRef, watch: Option<&serde_json::Value>) -> String {
    let sha = quote(&agent.sha256);
    let w = watch_line(agent, watch);
    format!(
        "{ROOT}set -e; S={sha}; \
         if [ -x \"$R/bin/$S/infra\" ]; then echo \"infra: node agent $S already installed\"; {w}exit 0; fi; \
         echo \"$S  infra\" | sha256sum -c --status - || {{ echo \"infra: the downloaded node agent does not match SHA-256 $S\" >&2; exit {EXIT_BAD_AGENT}; }}; \
         mkdir -p \"$R/bin/$S\"; mv -f infra \"$R/bin/$S/.infra.tmp\"; chmod 0755 \"$R/bin/$S/.infra.tmp\"; \
         mv -f \"$R/bin/$S/.infra.tmp\" \"$R/bin/$S/infra\"; echo \"infra: node agent $S installed\"; {w}"
    )
}

/// `<agent> node watch --spec '<json>' || true; ` (nothing without a spec):
/// starts the node's idle watcher, or refreshes its settings; returns at
/// once and never fails the script.
fn watch_line(agent: &AgentRef, watch: Option<&serde_json::Value>) -> String {
    match watch {
        Some(spec) => format!(
            "{} node watch --spec {} || true; ",
            agent.node_path(),
            quote(&spec.to_string())
        ),
        None => String::new(),
    }
}

/// The check sent to every node before the agent is used: exit 0 when it is
/// installed (and then the idle watcher started), 173 when not.
fn check_script(agent: &AgentRef, watch: Option<&serde_json::Value>) -> String {
    format!(
        "{ROOT}{}echo \"infra: node agent installed\"\n{}\n",
        require(agent),
        watch_line(agent, watch)
    )
}

/// Make sure the agent of each node's architecture is installed on the
/// nodes `(instance id, arch)`: one check for up to 50 nodes, then an
/// install where it is missing.
pub async fn ensure(
    c: &Clients,
    poller: &Poller,
    agents: &BTreeMap<Arch, AgentRef>,
    output: (&str, &str),
    label: &str,
    nodes: &[(String, Arch)],
    watch: Option<&serde_json::Value>,
) -> Result<(), String> {
    let mut missing: Vec<(String, &AgentRef)> = Vec::new();
    for (arch, agent) in agents {
        let ids: Vec<String> = nodes
            .iter()
            .filter(|n| n.1 == *arch)
            .map(|n| n.0.clone())
            .collect();
        for chunk in ids.chunks(50) {
            let send = ssm::SendSpec {
                instances: chunk,
                script: check_script(agent, watch),
                execution_timeout: 60,
                comment: format!("infra {label} agent check"),
                output: Some(output),
            };
            let sent = ssm::send(c, &send)
                .await
                .map_err(|e| format!("cannot check the node agent: {e}"))?;
            let waits: Vec<_> = chunk
                .iter()
                .map(|iid| (iid.clone(), poller.watch(&sent, iid)))
                .collect();
            for (iid, rx) in waits {
                match rx.await.map(|e| e.end) {
                    Ok(End::Success) => {}
                    Ok(End::Failed(EXIT_NO_AGENT)) => missing.push((iid, agent)),
                    Ok(other) => {
                        return Err(format!("cannot check the node agent on {iid}: {other:?}"))
                    }
                    Err(_) => return Err(format!("the agent check on {iid} was lost")),
                }
            }
        }
    }
    let mut errors = Vec::new();
    let mut waits = Vec::new();
    for (arch, agent) in agents {
        let ids: Vec<String> = missing
            .iter()
            .filter(|(_, a)| a.arch == *arch)
            .map(|(iid, _)| iid.clone())
            .collect();
        let source = serde_json::json!({
            "path": format!("https://s3.amazonaws.com/{}/{}", agent.bucket, agent.key)
        })
        .to_string();
        // the same install for every node of the architecture: one command
        // for up to 50 of them
        for chunk in ids.chunks(50) {
            let req = c
                .ssm
                .send_command()
                .document_name("AWS-RunRemoteScript")
                .set_instance_ids(Some(chunk.to_vec()))
                .parameters("sourceType", vec!["S3".to_string()])
                .parameters("sourceInfo", vec![source.clone()])
                .parameters("commandLine", vec![install_command(agent, watch)])
                .parameters(
                    "workingDirectory",
                    vec!["/var/lib/infra/download".to_string()],
                )
                .parameters("executionTimeout", vec!["900".to_string()])
                .timeout_seconds(600)
                .comment(
                    format!("infra {label} agent install")
                        .chars()
                        .take(100)
                        .collect::<String>(),
                )
                .output_s3_bucket_name(output.0)
                .output_s3_key_prefix(output.1);
            match req.send().await {
                Ok(out) => {
                    let sent = ssm::Sent {
                        id: out
                            .command()
                            .and_then(|c| c.command_id())
                            .unwrap_or_default()
                            .to_string(),
                        requested: out
                            .command()
                            .and_then(|c| c.requested_date_time())
                            .and_then(|t| {
                                chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())
                            }),
                    };
                    for iid in chunk {
                        waits.push((iid.clone(), poller.watch(&sent, iid)));
                    }
                }
                Err(e) => errors.push(format!(
                    "cannot install the node agent on {}: {}",
                    chunk.join(", "),
                    super::error::describe(&e)
                )),
            }
        }
    }
    for (iid, rx) in waits {
        match rx.await {
            Ok(e) if e.end == End::Success => {}
            Ok(e) => errors.push(format!(
                "installing the node agent on {iid} failed ({:?}): {}",
                e.end,
                e.output.trim()
            )),
            Err(_) => errors.push(format!("the agent install on {iid} was lost")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n  "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graviton_families_are_aarch64_and_the_rest_x86_64() {
        for t in [
            "c7g.xlarge",
            "m6gd.large",
            "c6gn.16xlarge",
            "g5g.xlarge",
            "hpc7g.16xlarge",
            "a1.medium",
            "t4g.nano",
            "r8g.large",
        ] {
            assert_eq!(Arch::of_instance_type(t), Arch::Aarch64, "{t}");
        }
        for t in [
            "c6i.xlarge",
            "g5.xlarge",
            "g6e.2xlarge",
            "p4d.24xlarge",
            "hpc7a.96xlarge",
            "trn1.32xlarge",
            "p6-b200.48xlarge",
            "m6i.large",
            "inf2.xlarge",
        ] {
            assert_eq!(Arch::of_instance_type(t), Arch::X86_64, "{t}");
        }
    }

    #[test]
    fn the_running_test_binary_is_a_linux_build_of_this_machine() {
        let exe = std::env::current_exe().unwrap();
        let native = if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        };
        let other = if native == Arch::X86_64 {
            Arch::Aarch64
        } else {
            Arch::X86_64
        };
        assert_eq!(check_elf(&exe, native), Ok(()));
        let e = check_elf(&exe, other).unwrap_err();
        assert!(e.contains(&format!("not {}", other.as_str())), "{e}");
    }

    #[test]
    fn a_script_or_a_short_file_is_not_an_agent() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("infra");
        std::fs::write(&script, "#!/bin/sh\necho this is a shell script\n").unwrap();
        assert!(check_elf(&script, Arch::X86_64)
            .unwrap_err()
            .contains("not an ELF"));
        let short = d.path().join("short");
        std::fs::write(&short, "\x7fELF").unwrap();
        assert!(check_elf(&short, Arch::X86_64)
            .unwrap_err()
            .contains("too short"));
        let mut vars = BTreeMap::new();
        vars.insert(
            "INFRA_NODE_BINARY_X86_64".to_string(),
            script.display().to_string(),
        );
        let e = find(Arch::X86_64, &vars).unwrap_err();
        assert!(e.starts_with("INFRA_NODE_BINARY_X86_64="), "{e}");
        vars.insert(
            "INFRA_NODE_BINARY_X86_64".to_string(),
            "/nonexistent/infra".into(),
        );
        assert!(find(Arch::X86_64, &vars)
            .unwrap_err()
            .contains("cannot open it"));
    }

    #[test]
    fn the_install_checks_the_hash_before_it_places_the_binary() {
        let a = AgentRef {
            arch: Arch::X86_64,
            sha256: "ab".repeat(32),
            bucket: "b".into(),
            key: "k".into(),
        };
        let cmd = install_command(&a, None);
        let check = cmd.find("sha256sum -c").unwrap();
        let place = cmd.find("mv -f").unwrap();
        assert!(check < place, "{cmd}");
        assert!(require(&a).contains("exit 173"));
    }
}
