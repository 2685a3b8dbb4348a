//! After `apply`: every node of an EFA group shows the EFA devices its
//! launch template gave it (`fi_info -p efa`), and EFA traffic flows between
//! the group's nodes (`fi_pingpong -p efa`, node by node in pairs). A node
//! that fails either fails the apply, named, before any task runs over TCP
//! believing it has EFA.
//!
//! The commands go through SSM Run Command like everything else; only
//! addresses EC2 gave (checked to be IPv4) reach a command line.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::config::Clients;
use super::ssm;
use super::state::AwsNode;
use crate::catalog::Catalog;
use crate::plan::Plan;
use crate::provider::ProviderError;

/// Where the Deep Learning AMI installs libfabric's tools (SSM commands do
/// not read the login profile that puts them on the PATH).
const EFA_BIN: &str = "/opt/amazon/efa/bin";
/// Messages of the pingpong: 100 of 8 KiB each way.
const PINGPONG: &str = "fi_pingpong -p efa -e rdm -I 100 -S 8192";
/// How long the pingpong's server waits for its client.
const PINGPONG_WAIT_SECONDS: u64 = 120;

/// What was checked, for `apply`'s output.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EfaChecked {
    /// node → EFA devices seen.
    pub devices: BTreeMap<String, usize>,
    /// "a ↔ b" → the pingpong's figures.
    pub pingpong: BTreeMap<String, Pingpong>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Pingpong {
    pub usec_per_transfer: Option<f64>,
    pub mb_per_sec: Option<f64>,
}

/// Check every live node of the plan's EFA groups; Ok(None) when the plan
/// has none.
pub async fn verify(
    c: &Clients,
    log: &dyn Fn(&str),
    plan: &Plan,
    catalog: &Catalog,
    nodes: &[AwsNode],
) -> Result<Option<EfaChecked>, ProviderError> {
    let mut checked = EfaChecked {
        devices: BTreeMap::new(),
        pingpong: BTreeMap::new(),
    };
    let mut problems = Vec::new();
    for g in plan.node_groups.iter().filter(|g| g.efa) {
        let expected = crate::stacks::efa_interface_count(g, catalog) as usize;
        let mut members: Vec<&AwsNode> = nodes
            .iter()
            .filter(|n| n.group == g.name && n.alive())
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        if members.is_empty() {
            continue;
        }
        log(&format!(
            "checking EFA on {} node(s) of group {} ({} device(s) each)",
            members.len(),
            g.name,
            expected
        ));
        let looks = each(members.iter().map(|n| {
            let (c, n) = (c.clone(), (*n).clone());
            async move { devices(&c, &n).await }
        }))
        .await;
        let mut ok = Vec::new();
        for (n, seen) in members.iter().zip(looks) {
            match seen {
                Ok(list) if list.len() == expected => {
                    checked.devices.insert(n.name.clone(), list.len());
                    ok.push(*n);
                }
                Ok(list) => {
                    checked.devices.insert(n.name.clone(), list.len());
                    problems.push(format!(
                        "node {} ({}): `fi_info -p efa` shows {} of the {expected} EFA device(s) its launch template gives it{}",
                        n.name,
                        n.instance_id,
                        list.len(),
                        if list.is_empty() { String::new() } else { format!(" ({})", list.join(", ")) }
                    ));
                }
                Err(e) => problems.push(format!("node {} ({}): {e}", n.name, n.instance_id)),
            }
        }
        let pairs = pairs(&ok);
        let runs = each(pairs.iter().map(|(a, b)| {
            let (c, a, b) = (c.clone(), (*a).clone(), (*b).clone());
            async move { pingpong(&c, &a, &b).await }
        }))
        .await;
        for ((a, b), r) in pairs.iter().zip(runs) {
            let key = format!("{} ↔ {}", a.name, b.name);
            match r {
                Ok(p) => {
                    log(&format!(
                        "EFA {key}: {} µs per 8 KiB transfer, {} MB/s",
                        p.usec_per_transfer
                            .map_or("?".into(), |v| format!("{v:.1}")),
                        p.mb_per_sec.map_or("?".into(), |v| format!("{v:.0}"))
                    ));
                    checked.pingpong.insert(key, p);
                }
                Err(e) => problems.push(format!(
                    "EFA traffic between node {} ({}, {}) and node {} ({}, {}) does not flow: {e}",
                    a.name, a.instance_id, a.private_ip, b.name, b.instance_id, b.private_ip
                )),
            }
        }
    }
    if !problems.is_empty() {
        return Err(ProviderError::Failed(format!(
            "the EFA check failed; tasks that need EFA would run without it:\n  {}\n  (hint: EFA needs the Deep Learning AMI (or the EFA driver), a security group that lets all traffic in from and out to itself, and every node of the group in one placement group and zone; `infra status {}` shows the nodes, `infra destroy {}` removes them)",
            problems.join("\n  "),
            plan.name_key,
            plan.name_key
        )));
    }
    Ok((!checked.devices.is_empty()).then_some(checked))
}

/// Run the checks side by side; their results in order (one that panicked:
/// an error).
async fn each<U, F>(futs: impl Iterator<Item = F>) -> Vec<Result<U, String>>
where
    U: Send + 'static,
    F: std::future::Future<Output = Result<U, String>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut n = 0;
    for (i, f) in futs.enumerate() {
        set.spawn(async move { (i, f.await) });
        n += 1;
    }
    let mut out: Vec<Option<Result<U, String>>> = (0..n).map(|_| None).collect();
    while let Some(done) = set.join_next().await {
        if let Ok((i, r)) = done {
            out[i] = Some(r);
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err("the check stopped unexpectedly".into())))
        .collect()
}

/// Each node with the next, and the last of an odd number with the first.
fn pairs<'a>(nodes: &[&'a AwsNode]) -> Vec<(&'a AwsNode, &'a AwsNode)> {
    let mut out: Vec<_> = nodes
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0], c[1]))
        .collect();
    if nodes.len() > 2 && nodes.len() % 2 == 1 {
        out.push((nodes[nodes.len() - 1], nodes[0]));
    }
    out
}

/// The EFA devices (RDM domains) `fi_info` lists on the node.
async fn devices(c: &Clients, n: &AwsNode) -> Result<Vec<String>, String> {
    let script = format!("export PATH=\"{EFA_BIN}:$PATH\"\nfi_info -p efa -t FI_EP_RDM 2>&1\n");
    let (code, out) = run(c, n, &script, Duration::from_secs(120)).await?;
    let domains = parse_domains(&out);
    if code != 0 && domains.is_empty() {
        return Err(format!(
            "`fi_info -p efa` found no EFA device (exit {code}): {}",
            first_lines(&out, 3)
        ));
    }
    Ok(domains)
}

/// `domain: rdmap16s27-rdm` lines of `fi_info`'s output, once each.
pub fn parse_domains(out: &str) -> Vec<String> {
    let mut v: Vec<String> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("domain:"))
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// A server on `a`, its client on `b`; the client's figures.
async fn pingpong(c: &Clients, a: &AwsNode, b: &AwsNode) -> Result<Pingpong, String> {
    let addr: Ipv4Addr = a
        .private_ip
        .parse()
        .map_err(|_| format!("node {} has no IPv4 address ({:?})", a.name, a.private_ip))?;
    let server = format!(
        "export PATH=\"{EFA_BIN}:$PATH\"\ntimeout {PINGPONG_WAIT_SECONDS} {PINGPONG} 2>&1\n"
    );
    // the server may not listen yet: the client tries again while refused
    let client = format!(
        "export PATH=\"{EFA_BIN}:$PATH\"\n\
         for i in $(seq 1 60); do\n\
         \x20 out=$({PINGPONG} {addr} 2>&1) && {{ printf '%s\\n' \"$out\"; exit 0; }}\n\
         \x20 case \"$out\" in *\"Connection refused\"*) sleep 1 ;; *) printf '%s\\n' \"$out\"; exit 1 ;; esac\n\
         done\n\
         printf '%s\\n' \"$out\"; exit 1\n"
    );
    let wait = Duration::from_secs(PINGPONG_WAIT_SECONDS + 30);
    let (s, cl) = tokio::join!(run(c, a, &server, wait), run(c, b, &client, wait));
    let (ccode, cout) = cl?;
    if ccode != 0 {
        return Err(format!(
            "`fi_pingpong` on {} exited {ccode}: {}",
            b.name,
            first_lines(&cout, 3)
        ));
    }
    let (scode, sout) = s?;
    if scode != 0 {
        return Err(format!(
            "`fi_pingpong` on {} exited {scode}: {}",
            a.name,
            first_lines(&sout, 3)
        ));
    }
    Ok(parse_pingpong(&cout))
}

/// The last row of `fi_pingpong`'s table: MB/sec and usec/xfer.
pub fn parse_pingpong(out: &str) -> Pingpong {
    let header: Option<Vec<&str>> = out
        .lines()
        .find(|l| l.contains("usec/xfer"))
        .map(|l| l.split_whitespace().collect());
    let row: Option<Vec<&str>> = out
        .lines()
        .rev()
        .find(|l| {
            l.split_whitespace()
                .nth(2)
                .is_some_and(|w| w.starts_with('='))
        })
        .map(|l| l.split_whitespace().collect());
    let col = |name: &str| -> Option<f64> {
        let i = header.as_ref()?.iter().position(|h| *h == name)?;
        row.as_ref()?.get(i)?.parse().ok()
    };
    Pingpong {
        usec_per_transfer: col("usec/xfer"),
        mb_per_sec: col("MB/sec"),
    }
}

fn first_lines(s: &str, n: usize) -> String {
    let v: Vec<&str> = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(n)
        .collect();
    if v.is_empty() {
        "(no output)".into()
    } else {
        v.join(" / ")
    }
}

/// Run `script` on node `n` and wait for it: (exit code, stdout + stderr).
/// Not through `ssm::Poller`: its listing carries a plugin's output cut at
/// 2,500 characters, and `fi_info` of a p5 (32 devices) is longer; one
/// GetCommandInvocation per node and round is cheap for a few checks.
async fn run(
    c: &Clients,
    n: &AwsNode,
    script: &str,
    wait: Duration,
) -> Result<(i32, String), String> {
    let ids = [n.instance_id.clone()];
    let sent = ssm::send(
        c,
        &ssm::SendSpec {
            instances: &ids,
            script: script.to_string(),
            execution_timeout: wait.as_secs(),
            comment: format!("infra EFA check {}", n.name),
            output: None,
        },
    )
    .await
    .map_err(|e| format!("cannot run the EFA check: {e}"))?;
    let start = Instant::now();
    loop {
        tokio::time::sleep(c.settings.poll.min(Duration::from_secs(2))).await;
        let r = c
            .ssm
            .get_command_invocation()
            .command_id(&sent.id)
            .instance_id(&n.instance_id)
            .send()
            .await;
        if let Ok(inv) = r {
            use aws_sdk_ssm::types::CommandInvocationStatus as S;
            let out = format!(
                "{}{}",
                inv.standard_output_content().unwrap_or_default(),
                inv.standard_error_content().unwrap_or_default()
            );
            match inv.status() {
                Some(S::Success) => return Ok((0, out)),
                Some(S::Failed) => return Ok((inv.response_code(), out)),
                Some(S::TimedOut) | Some(S::Cancelled) | Some(S::Cancelling) => {
                    return Err(format!(
                        "the EFA check did not finish ({})",
                        inv.status_details().unwrap_or_default()
                    ))
                }
                _ => {}
            }
        }
        // not listed yet (SSM is eventually consistent), or still running
        if start.elapsed() > wait + Duration::from_secs(60) {
            ssm::cancel(c, &sent.id).await;
            return Err(format!(
                "the EFA check did not finish in {} s",
                wait.as_secs()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fi_info_domains_are_counted_once_each() {
        let out = "provider: efa\n    fabric: efa\n    domain: rdmap16s27-rdm\n    version: 122.0\n    type: FI_EP_RDM\n    protocol: FI_PROTO_EFA\nprovider: efa\n    fabric: efa\n    domain: rdmap32s27-rdm\n    version: 122.0\n    type: FI_EP_RDM\n    protocol: FI_PROTO_EFA\n";
        assert_eq!(parse_domains(out), vec!["rdmap16s27-rdm", "rdmap32s27-rdm"]);
        assert!(parse_domains("fi_getinfo: -61 (No data available)\n").is_empty());
    }

    #[test]
    fn the_pingpong_row_gives_latency_and_bandwidth() {
        let out = "bytes   #sent   #ack     total       time     MB/sec    usec/xfer   Mxfers/sec\n8k      100     =100     1.6m        0.01s    221.08    37.05       0.03\n";
        assert_eq!(
            parse_pingpong(out),
            Pingpong {
                usec_per_transfer: Some(37.05),
                mb_per_sec: Some(221.08)
            }
        );
        assert_eq!(parse_pingpong("garbage").usec_per_transfer, None);
    }

    #[test]
    fn nodes_pair_up_and_an_odd_last_one_pairs_with_the_first() {
        let node = |i: usize| AwsNode {
            name: format!("gpu-{i}"),
            instance_id: format!("i-{i}"),
            group: "gpu".into(),
            instance_type: "p4d.24xlarge".into(),
            market: "spot".into(),
            az: "a".into(),
            private_ip: format!("10.0.0.{i}"),
            launch_time: String::new(),
            state: "running".into(),
        };
        let v: Vec<AwsNode> = (0..3).map(node).collect();
        let refs: Vec<&AwsNode> = v.iter().collect();
        let names: Vec<(String, String)> = pairs(&refs)
            .iter()
            .map(|(a, b)| (a.name.clone(), b.name.clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("gpu-0".into(), "gpu-1".into()),
                ("gpu-2".into(), "gpu-0".into())
            ]
        );
        assert!(pairs(&refs[..1]).is_empty());
    }
}
