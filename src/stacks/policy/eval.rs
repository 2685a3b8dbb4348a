//! A small evaluator of identity policies, for tests: Allow / Deny of one
//! request (action, resource ARN, `s3:prefix` or `aws:ResourceTag/<key>`)
//! over rendered statements.
//! Explicit deny wins over allow; no matching allow is a deny. `*` and `?`
//! are wildcards in actions, resources and `StringLike` values; `Fn::Sub` of
//! `AWS::Partition`, `AWS::AccountId` and `AWS::Region` is resolved with
//! fixed values (`aws`, `123456789012`, `us-east-1`).

use serde_json::Value;

pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "us-east-1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    ExplicitDeny,
    ImplicitDeny,
}

/// Glob match with `*` (any run, `/` included, as in IAM) and `?`.
pub fn glob(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// A string, or `Fn::Sub` of a string, resolved.
fn resolve(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Object(o) => match o.get("Fn::Sub") {
            Some(Value::String(s)) => s.clone(),
            _ => panic!("unsupported intrinsic in a policy: {v}"),
        },
        _ => panic!("not a string in a policy: {v}"),
    };
    s.replace("${AWS::Partition}", "aws")
        .replace("${AWS::AccountId}", ACCOUNT)
        .replace("${AWS::Region}", REGION)
}

fn list(v: Option<&Value>) -> Vec<String> {
    match v {
        None => Vec::new(),
        Some(Value::Array(a)) => a.iter().map(resolve).collect(),
        Some(x) => vec![resolve(x)],
    }
}

fn conditions_hold(cond: Option<&Value>, ctx: &[(&str, &str)]) -> bool {
    let Some(Value::Object(ops)) = cond else {
        return true;
    };
    ops.iter().all(|(op, kv)| {
        let like = match op.as_str() {
            "StringLike" => true,
            "StringEquals" => false,
            _ => panic!("unsupported condition operator {op}"),
        };
        kv.as_object().unwrap().iter().all(|(k, vals)| {
            assert!(
                k == "s3:prefix" || k.starts_with("aws:ResourceTag/"),
                "unsupported condition key {k}"
            );
            let have = ctx.iter().find(|(n, _)| n.eq_ignore_ascii_case(k));
            have.is_some_and(|(_, h)| {
                list(Some(vals))
                    .iter()
                    .any(|v| if like { glob(v, h) } else { v == h })
            })
        })
    })
}

/// The decision of `statements` for `action` on `resource` (an ARN), with
/// `prefix` the request's `s3:prefix` (ListBucket).
pub fn decide(statements: &Value, action: &str, resource: &str, prefix: Option<&str>) -> Decision {
    let ctx: Vec<(&str, &str)> = prefix.map(|p| ("s3:prefix", p)).into_iter().collect();
    decide_with(statements, action, resource, &ctx)
}

/// The decision with a condition context (`s3:prefix`,
/// `aws:ResourceTag/<key>`), for `StringEquals` and `StringLike`.
pub fn decide_with(
    statements: &Value,
    action: &str,
    resource: &str,
    ctx: &[(&str, &str)],
) -> Decision {
    let mut allowed = false;
    for st in statements.as_array().expect("statements are an array") {
        let actions = list(st.get("Action"));
        let resources = list(st.get("Resource"));
        if !actions.iter().any(|a| glob(a, action))
            || !resources.iter().any(|r| glob(r, resource))
            || !conditions_hold(st.get("Condition"), ctx)
        {
            continue;
        }
        match st["Effect"].as_str() {
            Some("Deny") => return Decision::ExplicitDeny,
            Some("Allow") => allowed = true,
            e => panic!("bad effect {e:?}"),
        }
    }
    if allowed {
        Decision::Allow
    } else {
        Decision::ImplicitDeny
    }
}

#[test]
fn the_glob_matches_like_iam() {
    assert!(glob("a/*", "a/b/c"));
    assert!(glob("a/*", "a/"));
    assert!(!glob("a/*", "a"));
    assert!(glob("s3:Get*", "s3:GetObject"));
    assert!(glob("a?c", "abc"));
    assert!(!glob("a/*/x", "a/b"));
    assert!(glob("*/_bundle/*", "p/_bundle/x"));
}
