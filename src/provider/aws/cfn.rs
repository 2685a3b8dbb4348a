//! CloudFormation: create, preview (change sets), update, delete, and wait
//! for a stack while reporting its events.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use aws_sdk_cloudformation::types::{
    Capability, ChangeAction, ChangeSetStatus, ChangeSetType, Parameter, Replacement, Tag,
};

use super::config::Clients;
use super::error::{api, code, AwsError};
use aws_sdk_cloudformation::error::ProvideErrorMetadata;

/// A stack as DescribeStacks shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StackInfo {
    pub name: String,
    pub id: String,
    pub status: String,
    pub reason: Option<String>,
    pub outputs: BTreeMap<String, String>,
    pub parameters: Vec<String>,
}

impl StackInfo {
    pub fn in_progress(&self) -> bool {
        self.status.ends_with("_IN_PROGRESS")
    }
    /// A stack that failed its creation: it can only be deleted.
    pub fn dead(&self) -> bool {
        matches!(
            self.status.as_str(),
            "ROLLBACK_COMPLETE" | "ROLLBACK_FAILED" | "CREATE_FAILED" | "DELETE_FAILED"
        )
    }
}

/// Where the template comes from.
#[derive(Debug, Clone)]
pub enum Source {
    Body(String),
    /// An S3 URL (bodies over 51,200 bytes).
    Url(String),
}

fn stack_from(s: &aws_sdk_cloudformation::types::Stack) -> StackInfo {
    StackInfo {
        name: s.stack_name().unwrap_or_default().to_string(),
        id: s.stack_id().unwrap_or_default().to_string(),
        status: s
            .stack_status()
            .map(|x| x.as_str().to_string())
            .unwrap_or_default(),
        reason: s.stack_status_reason().map(str::to_string),
        outputs: s
            .outputs()
            .iter()
            .filter_map(|o| {
                Some((
                    o.output_key()?.to_string(),
                    o.output_value().unwrap_or_default().to_string(),
                ))
            })
            .collect(),
        parameters: s
            .parameters()
            .iter()
            .filter_map(|p| p.parameter_key().map(str::to_string))
            .collect(),
    }
}

/// The stack by name or id; `None` when there is none (or it is deleted).
pub async fn describe(c: &Clients, name_or_id: &str) -> Result<Option<StackInfo>, AwsError> {
    match c.cfn.describe_stacks().stack_name(name_or_id).send().await {
        Ok(out) => Ok(out
            .stacks()
            .first()
            .map(stack_from)
            .filter(|s| s.status != "DELETE_COMPLETE")),
        // DescribeStacks answers ValidationError for a stack that does not exist
        Err(e) if code(&e) == Some("ValidationError") => Ok(None),
        Err(e) => Err(api(format!("describe stack {name_or_id}"))(e)),
    }
}

/// One resource change of a change set, for the confirmation prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// add, modify, replace, remove (or what CloudFormation said).
    pub action: String,
    pub logical_id: String,
    pub resource_type: String,
}

pub fn format_changes(stack: &str, changes: &[Change]) -> String {
    let mut s = format!("changes to stack {stack}:\n");
    for c in changes {
        s.push_str(&format!(
            "  {:<8} {:<34} {}\n",
            c.action, c.logical_id, c.resource_type
        ));
    }
    s
}

fn parameters(params: &[(String, String)], keep: &[String]) -> Vec<Parameter> {
    let mut out: Vec<Parameter> = Vec::new();
    for (k, v) in params {
        if keep.contains(k) {
            out.push(
                Parameter::builder()
                    .parameter_key(k)
                    .use_previous_value(true)
                    .build(),
            );
        } else {
            out.push(
                Parameter::builder()
                    .parameter_key(k)
                    .parameter_value(v)
                    .build(),
            );
        }
    }
    out
}

fn tags(t: &[(String, String)]) -> Vec<Tag> {
    t.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

/// A change set for updating `name`: its name and changes, or `None` when
/// the template and parameters change nothing. `keep` are the parameters
/// whose previous values stay.
pub async fn preview_update(
    c: &Clients,
    name: &str,
    source: &Source,
    params: &[(String, String)],
    keep: &[String],
    stack_tags: &[(String, String)],
) -> Result<Option<(String, Vec<Change>)>, AwsError> {
    let cs_name = format!("infra-{}", chrono::Utc::now().format("%Y%m%d%H%M%S%3f"));
    let mut req = c
        .cfn
        .create_change_set()
        .stack_name(name)
        .change_set_name(&cs_name)
        .change_set_type(ChangeSetType::Update)
        .capabilities(Capability::CapabilityIam)
        .capabilities(Capability::CapabilityNamedIam)
        .set_parameters(Some(parameters(params, keep)))
        .set_tags(Some(tags(stack_tags)));
    req = match source {
        Source::Body(b) => req.template_body(b),
        Source::Url(u) => req.template_url(u),
    };
    if let Err(e) = req.send().await {
        // some implementations refuse an empty change right away, with this documented text
        let nothing = code(&e) == Some("ValidationError")
            && e.as_service_error()
                .and_then(|x| x.message())
                .is_some_and(|m| m.contains("No updates are to be performed"));
        if nothing {
            return Ok(None);
        }
        return Err(api(format!("create a change set for stack {name}"))(e));
    }
    let started = Instant::now();
    loop {
        let d = c
            .cfn
            .describe_change_set()
            .stack_name(name)
            .change_set_name(&cs_name)
            .send()
            .await
            .map_err(api(format!(
                "describe change set {cs_name} of stack {name}"
            )))?;
        let status = d.status().cloned();
        let changes: Vec<Change> = d
            .changes()
            .iter()
            .filter_map(|ch| ch.resource_change())
            .map(|rc| {
                let action = match (rc.action(), rc.replacement()) {
                    (Some(ChangeAction::Modify), Some(Replacement::True)) => "replace".to_string(),
                    (Some(ChangeAction::Modify), Some(Replacement::Conditional)) => {
                        "modify (may replace)".to_string()
                    }
                    (Some(a), _) => a.as_str().to_lowercase(),
                    (None, _) => "change".into(),
                };
                Change {
                    action,
                    logical_id: rc.logical_resource_id().unwrap_or_default().into(),
                    resource_type: rc.resource_type().unwrap_or_default().into(),
                }
            })
            .collect();
        match status {
            Some(ChangeSetStatus::CreateComplete) if !changes.is_empty() => {
                return Ok(Some((cs_name, changes)))
            }
            Some(ChangeSetStatus::CreateComplete) => {
                discard_change_set(c, name, &cs_name).await;
                return Ok(None);
            }
            Some(ChangeSetStatus::Failed) => {
                discard_change_set(c, name, &cs_name).await;
                let reason = d.status_reason().unwrap_or_default();
                // CloudFormation has no error code for "nothing to change", only this documented text
                if changes.is_empty()
                    && (reason.contains("didn't contain changes")
                        || reason.contains("No updates are to be performed"))
                {
                    return Ok(None);
                }
                return Err(AwsError::Failed(format!(
                    "CloudFormation rejected the change to stack {name}: {reason}"
                )));
            }
            _ => {}
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(AwsError::Failed(format!(
                "change set {cs_name} of stack {name} was not ready after 10 minutes"
            )));
        }
        tokio::time::sleep(c.settings.poll).await;
    }
}

pub async fn discard_change_set(c: &Clients, name: &str, cs: &str) {
    let _ = c
        .cfn
        .delete_change_set()
        .stack_name(name)
        .change_set_name(cs)
        .send()
        .await;
}

/// Event ids already there, so that waiting shows only new ones.
pub async fn seen_events(c: &Clients, name_or_id: &str) -> HashSet<String> {
    match c
        .cfn
        .describe_stack_events()
        .stack_name(name_or_id)
        .send()
        .await
    {
        Ok(out) => out
            .stack_events()
            .iter()
            .filter_map(|e| e.event_id().map(str::to_string))
            .collect(),
        Err(_) => HashSet::new(),
    }
}

pub async fn execute_change_set(c: &Clients, name: &str, cs: &str) -> Result<(), AwsError> {
    c.cfn
        .execute_change_set()
        .stack_name(name)
        .change_set_name(cs)
        .send()
        .await
        .map_err(api(format!("update stack {name}")))?;
    Ok(())
}

/// Create a stack; returns its id. The SDK makes one attempt (see
/// `Clients::cfn_once`); throttled calls, which CloudFormation did not
/// process, are retried here with backoff.
pub async fn create(
    c: &Clients,
    name: &str,
    source: &Source,
    params: &[(String, String)],
    stack_tags: &[(String, String)],
) -> Result<String, AwsError> {
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        let mut req = c
            .cfn_once
            .create_stack()
            .stack_name(name)
            .capabilities(Capability::CapabilityIam)
            .capabilities(Capability::CapabilityNamedIam)
            .set_parameters(Some(parameters(params, &[])))
            .set_tags(Some(tags(stack_tags)));
        req = match source {
            Source::Body(b) => req.template_body(b),
            Source::Url(u) => req.template_url(u),
        };
        match req.send().await {
            Ok(out) => return Ok(out.stack_id().unwrap_or(name).to_string()),
            Err(e)
                if super::config::is_throttling(code(&e)) && attempt < c.settings.max_attempts =>
            {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                attempt += 1;
            }
            // an earlier try went through after all
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_already_exists_exception()) =>
            {
                return match describe(c, name).await? {
                    Some(s) => Ok(s.id),
                    None => Err(api(format!("create stack {name}"))(e)),
                }
            }
            Err(e) => return Err(api(format!("create stack {name}"))(e)),
        }
    }
}

/// Start deleting a stack.
pub async fn delete(c: &Clients, name_or_id: &str) -> Result<(), AwsError> {
    c.cfn
        .delete_stack()
        .stack_name(name_or_id)
        .send()
        .await
        .map_err(api(format!("delete stack {name_or_id}")))?;
    Ok(())
}

/// Resources whose last operation failed, with CloudFormation's reasons.
pub async fn failed_resources(c: &Clients, name_or_id: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(r) = c
        .cfn
        .list_stack_resources()
        .stack_name(name_or_id)
        .send()
        .await
    {
        for s in r.stack_resource_summaries() {
            let st = s.resource_status().map(|x| x.as_str()).unwrap_or_default();
            if st.ends_with("_FAILED") {
                out.push(format!(
                    "{} ({}): {}{}",
                    s.logical_resource_id().unwrap_or_default(),
                    s.resource_type().unwrap_or_default(),
                    st,
                    s.resource_status_reason()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    out
}

/// How a wait ended.
#[derive(Debug, Clone)]
pub struct Waited {
    pub stack: StackInfo,
    pub ok: bool,
    /// Failed resources and their reasons, from the events.
    pub failures: Vec<String>,
}

fn success(op: &str, status: &str) -> bool {
    match op {
        "delete" => status == "DELETE_COMPLETE",
        _ => matches!(
            status,
            "CREATE_COMPLETE" | "UPDATE_COMPLETE" | "IMPORT_COMPLETE"
        ),
    }
}

/// Wait until the stack leaves its IN_PROGRESS states, reporting each new
/// event (`progress` gets one line per event).
pub async fn wait(
    c: &Clients,
    id: &str,
    op: &str,
    mut seen: HashSet<String>,
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<Waited, AwsError> {
    let started = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    loop {
        // events first, so that the final ones are shown before returning
        if let Ok(out) = c.cfn.describe_stack_events().stack_name(id).send().await {
            let mut fresh: Vec<_> = out
                .stack_events()
                .iter()
                .filter(|e| e.event_id().is_some_and(|i| !seen.contains(i)))
                .collect();
            fresh.reverse(); // oldest first
            for e in fresh {
                seen.insert(e.event_id().unwrap_or_default().to_string());
                let status = e.resource_status().map(|s| s.as_str()).unwrap_or_default();
                let reason = e.resource_status_reason().unwrap_or_default();
                let line = format!(
                    "  {:<28} {:<34} {:<22} {}",
                    e.logical_resource_id().unwrap_or_default(),
                    e.resource_type().unwrap_or_default(),
                    status,
                    reason
                );
                progress(line.trim_end());
                if status.ends_with("_FAILED")
                    && !reason.is_empty()
                    && e.resource_type() != Some("AWS::CloudFormation::Stack")
                {
                    failures.push(format!(
                        "{} ({}): {reason}",
                        e.logical_resource_id().unwrap_or_default(),
                        e.resource_type().unwrap_or_default()
                    ));
                }
            }
        }
        let stack = match c.cfn.describe_stacks().stack_name(id).send().await {
            Ok(out) => out.stacks().first().map(stack_from),
            Err(e) if code(&e) == Some("ValidationError") && op == "delete" => None,
            Err(e) => return Err(api(format!("describe stack {id}"))(e)),
        };
        let Some(stack) = stack else {
            // gone entirely: deleted
            let st = StackInfo {
                name: id.to_string(),
                id: id.to_string(),
                status: "DELETE_COMPLETE".into(),
                reason: None,
                outputs: BTreeMap::new(),
                parameters: Vec::new(),
            };
            return Ok(Waited {
                stack: st,
                ok: true,
                failures,
            });
        };
        if !stack.in_progress() {
            let ok = success(op, &stack.status);
            if !ok && failures.is_empty() {
                failures = failed_resources(c, id).await;
            }
            return Ok(Waited {
                stack,
                ok,
                failures,
            });
        }
        if started.elapsed() > timeout {
            return Err(AwsError::Failed(format!(
                "stack {} is still {} after {} minutes\n  (hint: follow it in the CloudFormation console; `infra status` shows it)",
                stack.name,
                stack.status,
                timeout.as_secs() / 60
            )));
        }
        tokio::time::sleep(c.settings.poll).await;
    }
}

/// The message for a failed create or update: the failing resources with
/// their reasons, and where the rollback ended.
pub fn failure_message(op: &str, w: &Waited) -> String {
    let mut s = format!(
        "failed to {op} stack {}: it ended {}",
        w.stack.name, w.stack.status
    );
    if let Some(r) = &w.stack.reason {
        s.push_str(&format!(" ({r})"));
    }
    for f in &w.failures {
        s.push_str(&format!("\n  {f}"));
    }
    match w.stack.status.as_str() {
        "ROLLBACK_COMPLETE" => s.push_str("\n  CloudFormation rolled the stack back and removed what it had created\n  (hint: fix the cause above, then `infra apply` again: it deletes the failed stack first)"),
        "UPDATE_ROLLBACK_COMPLETE" => s.push_str("\n  CloudFormation rolled the update back; the stack is as it was before\n  (hint: fix the cause above, then `infra apply` again)"),
        "ROLLBACK_FAILED" | "UPDATE_ROLLBACK_FAILED" => s.push_str("\n  the rollback failed too\n  (hint: see the stack's events in the CloudFormation console; `infra destroy` deletes it)"),
        _ => {}
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_creation_names_the_resource_its_reason_and_the_rollback() {
        let w = Waited {
            stack: StackInfo {
                name: "p-base".into(),
                id: "id".into(),
                status: "ROLLBACK_COMPLETE".into(),
                reason: Some("The following resource(s) failed to create: [Vpc].".into()),
                outputs: BTreeMap::new(),
                parameters: vec![],
            },
            ok: false,
            failures: vec![
                "Vpc (AWS::EC2::VPC): The maximum number of VPCs has been reached.".into(),
            ],
        };
        let m = failure_message("create", &w);
        assert!(
            m.starts_with("failed to create stack p-base: it ended ROLLBACK_COMPLETE"),
            "{m}"
        );
        assert!(
            m.contains("\n  Vpc (AWS::EC2::VPC): The maximum number of VPCs has been reached."),
            "{m}"
        );
        assert!(
            m.contains("rolled the stack back") && m.contains("(hint: "),
            "{m}"
        );
        let c = format_changes(
            "p-x",
            &[Change {
                action: "replace".into(),
                logical_id: "FleetCpu".into(),
                resource_type: "AWS::EC2::EC2Fleet".into(),
            }],
        );
        assert!(c.contains("replace") && c.contains("FleetCpu"), "{c}");
    }
}
