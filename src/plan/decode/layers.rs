//! `layers`: each layer's own fields, its patterns (hand-written and from
//! its grid), and the tasks they become once the plan's, the layer's and
//! the pattern's settings are merged and partitions are split out.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::plan::diag::{did_you_mean, unsafe_id_reason, Diags, MAX_ID_LEN};
use crate::plan::fields::{child, count, duration, obj, string, Obj, RawPattern};
use crate::plan::grid;
use crate::plan::json::{Node, Pos, Spanned};
use crate::plan::model::{Layer, Pattern};

use super::estimate::EstimateSection;
use super::patterns::{content_key, decode_pattern};

/// Largest number of tasks a plan may expand to.
pub const MAX_TASKS: usize = 1_000_000;

const LAYER_FIELDS: &[&str] = &[
    "id",
    "name",
    "priority",
    "description",
    "patterns",
    "grid",
    "node_group",
    "partitions",
    "settings",
    "estimate",
];

/// What the layers inherit from the rest of the plan.
pub(super) struct Scope<'a> {
    pub id_prefix: &'a str,
    pub infrastructure: &'a Map<String, Value>,
    pub common_settings: &'a Map<String, Value>,
    pub group_names: Vec<String>,
    /// The group of patterns that name none (the first group).
    pub default_group: String,
    /// The plan uses `infrastructure` (the phase system's format).
    pub legacy: bool,
    pub estimates: &'a EstimateSection,
}

/// The decoded layers, and every layer and task id seen with its position.
#[derive(Default)]
pub(super) struct Layers {
    pub layers: Vec<Layer>,
    pub seen_layers: HashMap<String, Pos>,
    pub seen_ids: HashMap<String, Pos>,
}

/// A layer's own fields: what its patterns inherit.
struct Head {
    id: String,
    name: String,
    priority: Option<String>,
    description: String,
    node_group: Option<String>,
    partitions: Option<u32>,
    settings: Map<String, Value>,
    estimate: Option<Duration>,
}

/// `None` when the plan expands to more than `MAX_TASKS` tasks: decoding
/// stops there.
pub(super) fn layers(d: &mut Diags, top: &Obj, scope: &Scope) -> Option<Layers> {
    let mut out = Layers::default();
    let Some(v) = top.required(
        d,
        "layers",
        "[{\"id\": \"L0\", \"name\": \"...\", \"patterns\": [...]}]",
    ) else {
        return Some(out);
    };
    let Node::Arr(items) = &v.node else {
        d.hint(
            "layers",
            v.pos,
            format!("expected an array of layers, found {}", v.kind()),
            "write \"layers\": [{\"id\": \"L0\", \"patterns\": [...]}]",
        );
        return Some(out);
    };
    if items.is_empty() {
        d.hint(
            "layers",
            v.pos,
            "no layers",
            "add a layer with at least one pattern",
        );
    }
    let mut total = 0usize;
    for (li, lv) in items.iter().enumerate() {
        let lpath = format!("layers[{li}]");
        let Some(layer) = layer(d, lv, &lpath, scope, &mut out, total) else {
            continue;
        };
        total += layer.patterns.len();
        if total > MAX_TASKS {
            d.hint(
                &lpath,
                lv.pos,
                format!("the plan expands to more than {MAX_TASKS} tasks"),
                "split the campaign into several phases",
            );
            return None;
        }
        out.layers.push(layer);
    }
    Some(out)
}

/// One layer; `total` tasks precede it. `None` when it has no usable id.
fn layer(
    d: &mut Diags,
    lv: &Spanned,
    lpath: &str,
    scope: &Scope,
    seen: &mut Layers,
    total: usize,
) -> Option<Layer> {
    let lo = obj(d, lv, lpath)?;
    lo.known(d, LAYER_FIELDS);
    let head = head(d, &lo, scope, &mut seen.seen_layers)?;
    let (raws, grid_cells) = raw_patterns(d, &lo, &head.id, scope, total);
    let patterns = resolve(d, raws, &head, scope, &mut seen.seen_ids);
    Some(Layer {
        id: head.id,
        name: head.name,
        priority: head.priority,
        description: head.description,
        node_group: head.node_group,
        partitions: head.partitions,
        settings: head.settings,
        grid_cells,
        patterns,
    })
}

fn head(
    d: &mut Diags,
    lo: &Obj,
    scope: &Scope,
    seen_layers: &mut HashMap<String, Pos>,
) -> Option<Head> {
    let lid = lo
        .required(d, "id", "\"L0\"")
        .and_then(|v| string(d, v, &lo.child("id")))?;
    let lid_pos = lo.get("id").map(|v| v.pos).unwrap_or(lo.pos);
    if let Some(r) = unsafe_id_reason(&lid) {
        d.hint(
            &lo.child("id"),
            lid_pos,
            format!("layer id \"{lid}\" is not safe as a file name: {r}"),
            "use letters, digits, '-', '_' and '.'",
        );
    }
    if let Some(first) = seen_layers.insert(lid.clone(), lid_pos) {
        d.hint(
            &lo.child("id"),
            lid_pos,
            format!("duplicate layer id \"{lid}\" (first at {first})"),
            "give every layer its own id",
        );
    }
    let name = lo
        .get("name")
        .and_then(|v| string(d, v, &lo.child("name")))
        .unwrap_or_else(|| lid.clone());
    let priority = lo
        .get("priority")
        .and_then(|v| string(d, v, &lo.child("priority")));
    let description = lo
        .get("description")
        .and_then(|v| string(d, v, &lo.child("description")))
        .unwrap_or_default();
    let node_group = lo.get("node_group").and_then(|v| {
        let g = string(d, v, &lo.child("node_group"))?;
        if !scope.group_names.contains(&g) {
            d.hint(
                &lo.child("node_group"),
                v.pos,
                format!("unknown node group \"{g}\""),
                did_you_mean(&g, scope.group_names.iter().map(String::as_str)),
            );
        }
        Some(g)
    });
    let partitions = lo
        .get("partitions")
        .and_then(|v| count(d, v, &lo.child("partitions"), 10_000));
    let settings = match lo.get("settings") {
        Some(v) => obj(d, v, &lo.child("settings"))
            .map(|_| v.to_value())
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default(),
        None => Map::new(),
    };
    let estimate = lo
        .get("estimate")
        .and_then(|v| duration(d, v, &lo.child("estimate")))
        .or_else(|| scope.estimates.layers.get(&lid).map(|e| e.0));
    Some(Head {
        id: lid,
        name,
        priority,
        description,
        node_group,
        partitions,
        settings,
        estimate,
    })
}

/// The layer's hand-written patterns, then its grid's cells; and how many
/// cells the grid gave.
fn raw_patterns(
    d: &mut Diags,
    lo: &Obj,
    lid: &str,
    scope: &Scope,
    total: usize,
) -> (Vec<RawPattern>, usize) {
    let mut raws: Vec<RawPattern> = Vec::new();
    if let Some(pv) = lo.get("patterns") {
        match &pv.node {
            Node::Arr(ps) => {
                for (pi, p) in ps.iter().enumerate() {
                    let ppath = format!("{}.patterns[{pi}]", lo.path);
                    if let Some(r) = decode_pattern(d, p, &ppath, scope.legacy, &scope.group_names)
                    {
                        raws.push(r);
                    }
                }
            }
            _ => d.hint(
                &lo.child("patterns"),
                pv.pos,
                format!("expected an array of patterns, found {}", pv.kind()),
                "write \"patterns\": [{\"id\": ..., \"backend\": ...}]",
            ),
        }
    }
    let mut grid_cells = 0;
    if let Some(gv) = lo.get("grid") {
        let budget_left = MAX_TASKS.saturating_sub(total + raws.len());
        let cells = grid::expand(d, gv, &lo.child("grid"), budget_left);
        grid_cells = cells.len();
        raws.extend(cells);
    }
    if lo.get("patterns").is_none() && lo.get("grid").is_none() {
        d.hint(
            &lo.path,
            lo.pos,
            format!("layer \"{lid}\" has neither \"patterns\" nor \"grid\""),
            "add \"patterns\": [...] or a \"grid\"",
        );
    }
    (raws, grid_cells)
}

/// The tasks of the layer's raw patterns: ids checked, settings merged,
/// partitions split out, each id unique across the plan.
fn resolve(
    d: &mut Diags,
    raws: Vec<RawPattern>,
    head: &Head,
    scope: &Scope,
    seen_ids: &mut HashMap<String, Pos>,
) -> Vec<Pattern> {
    let mut patterns = Vec::with_capacity(raws.len() * head.partitions.unwrap_or(1) as usize);
    for raw in raws {
        if raw.id_path_is_template {
            // grid ids were checked by the grid expander
        } else if let Some(r) = unsafe_id_reason(&raw.id) {
            d.hint(
                &raw.path,
                raw.pos,
                format!(
                    "pattern id {:?} is not safe as a file name and S3 key: {r}",
                    raw.id
                ),
                "use letters, digits, '-', '_' and '.'",
            );
            continue;
        }
        let prefix = scope.id_prefix;
        if !raw.id.starts_with(prefix) {
            d.hint(
                &raw.path,
                raw.pos,
                format!(
                    "pattern id \"{}\" does not start with the phase prefix \"{prefix}\"",
                    raw.id
                ),
                format!("rename it to \"{prefix}{}\"", raw.id),
            );
        }
        let vars = merged_vars(scope, head, &raw.overrides);
        let node_group = raw
            .node_group
            .clone()
            .or_else(|| head.node_group.clone())
            .unwrap_or_else(|| scope.default_group.clone());
        let estimate = raw
            .estimate
            .or_else(|| scope.estimates.patterns.get(&raw.id).map(|e| e.0))
            .or(head.estimate)
            .or(scope.estimates.plan.default);
        for (id, partition) in task_ids(&raw.id, head.partitions) {
            if partition.is_some() && id.len() > MAX_ID_LEN {
                // the suffix is added after the pattern's own id was checked
                d.hint(
                    &child(&raw.path, "id"),
                    raw.pos,
                    format!(
                        "partitioned id \"{id}\" is {} characters long (at most {MAX_ID_LEN})",
                        id.len()
                    ),
                    format!(
                        "shorten the pattern id to at most {} characters (\"-partNofM\" is added to it)",
                        MAX_ID_LEN.saturating_sub(id.len() - raw.id.len())
                    ),
                );
                break;
            }
            if let Some(first) = seen_ids.insert(id.clone(), raw.pos) {
                d.hint(
                    &child(&raw.path, "id"),
                    raw.pos,
                    format!("duplicate pattern id \"{id}\" (first at {first})"),
                    "pattern ids must be unique across the plan",
                );
                continue;
            }
            let key = content_key(&id, &raw.backend, &vars, partition);
            patterns.push(Pattern {
                id,
                layer: head.id.clone(),
                backend: raw.backend.clone(),
                vars: vars.clone(),
                factors: raw.factors.clone(),
                estimate,
                node_group: node_group.clone(),
                partition,
                key,
                pos: raw.pos,
            });
        }
    }
    patterns
}

/// Template variables, last wins: infrastructure, common settings, the
/// layer's settings, the pattern's own.
fn merged_vars(scope: &Scope, head: &Head, overrides: &Map<String, Value>) -> Map<String, Value> {
    let mut vars = scope.infrastructure.clone();
    for (k, v) in scope
        .common_settings
        .iter()
        .chain(&head.settings)
        .chain(overrides)
    {
        vars.insert(k.clone(), v.clone());
    }
    vars
}

/// The ids of a pattern's tasks: its own, or one per partition
/// (`<id>-part1of4`, ...) with the partition's index and count.
fn task_ids(id: &str, partitions: Option<u32>) -> Vec<(String, Option<(u32, u32)>)> {
    match partitions {
        None => vec![(id.to_string(), None)],
        Some(parts) => (0..parts)
            .map(|part| {
                (
                    format!("{id}-part{}of{parts}", part + 1),
                    Some((part, parts)),
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::decode::testing::{decode_err, decode_text, lines};
    use serde_json::json;

    #[test]
    fn settings_merge_plan_then_layer_then_pattern() {
        let plan = decode_text(
            r#"{"phase": 1, "name": "n",
  "infrastructure": {"instance_type": "c6i.xlarge", "node_count": 1, "model": "i"},
  "common_settings": {"model": "c", "a": 1, "b": 1},
  "layers": [{"id": "L0", "settings": {"b": 2, "c": 2}, "patterns": [
    {"id": "p1-x", "backend": "t", "prompt_tokens": 1, "concurrency": 1, "c": 3}]}]}"#,
        )
        .unwrap_or_else(|d| panic!("{:?}", lines(&d)));
        let p = &plan.layers[0].patterns[0];
        assert_eq!(p.vars["model"], "c");
        assert_eq!(
            (&p.vars["a"], &p.vars["b"], &p.vars["c"]),
            (&json!(1), &json!(2), &json!(3))
        );
        assert_eq!(p.vars["instance_type"], "c6i.xlarge");
        // a hand-written pattern's factors are its own settings
        assert_eq!(
            p.factors.keys().collect::<Vec<_>>(),
            ["prompt_tokens", "concurrency", "c"]
        );
        assert_eq!((p.layer.as_str(), p.node_group.as_str()), ("L0", "default"));
        assert_eq!(plan.layers[0].name, "L0");
    }

    #[test]
    fn node_groups_and_estimates_fall_back_from_pattern_to_layer_to_plan() {
        let plan = decode_text(
            r#"{"phase": 1, "name": "n", "estimate": {"default": 9},
  "node_groups": {"a": {"instance_type": "c6i.xlarge", "count": 1},
                  "b": {"instance_type": "c6i.xlarge", "count": 1}},
  "layers": [
    {"id": "L0", "node_group": "b", "estimate": 5, "patterns": [
      {"id": "p1-x", "backend": "t"}, {"id": "p1-y", "backend": "t", "node_group": "a", "estimate": 3}]},
    {"id": "L1", "name": "second", "priority": "high", "description": "d", "patterns": [
      {"id": "p1-z", "backend": "t"}]}]}"#,
        )
        .unwrap_or_else(|d| panic!("{:?}", lines(&d)));
        let got: Vec<(&str, &str, u64)> = plan
            .patterns()
            .map(|p| {
                (
                    p.id.as_str(),
                    p.node_group.as_str(),
                    p.estimate.unwrap().as_secs(),
                )
            })
            .collect();
        assert_eq!(got, [("p1-x", "b", 5), ("p1-y", "a", 3), ("p1-z", "a", 9)]);
        let l1 = &plan.layers[1];
        assert_eq!(
            (
                l1.name.as_str(),
                l1.priority.as_deref(),
                l1.description.as_str()
            ),
            ("second", Some("high"), "d")
        );
    }

    #[test]
    fn partitions_split_a_pattern_into_tasks() {
        let plan = decode_text(
            r#"{"phase": 1, "name": "n", "layers": [{"id": "L0", "partitions": 3, "patterns": [{"id": "p1-x", "backend": "t"}]}]}"#,
        )
        .unwrap_or_else(|d| panic!("{:?}", lines(&d)));
        let got: Vec<_> = plan
            .patterns()
            .map(|p| (p.id.as_str(), p.partition))
            .collect();
        assert_eq!(
            got,
            [
                ("p1-x-part1of3", Some((0, 3))),
                ("p1-x-part2of3", Some((1, 3))),
                ("p1-x-part3of3", Some((2, 3))),
            ]
        );
        let keys: std::collections::BTreeSet<_> = plan.patterns().map(|p| &p.key).collect();
        assert_eq!(keys.len(), 3, "every part has its own content key");
        assert_eq!(plan.layers[0].partitions, Some(3));
    }

    #[test]
    fn a_grid_adds_its_cells_after_the_hand_written_patterns() {
        let plan = decode_text(
            r#"{"phase": "s", "name": "n", "layers": [{"id": "L0",
  "patterns": [{"id": "s-x", "backend": "t"}],
  "grid": {"backend": "t", "id": "s-{a}", "factors": {"a": [1, 2]}}}]}"#,
        )
        .unwrap_or_else(|d| panic!("{:?}", lines(&d)));
        let ids: Vec<_> = plan.patterns().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["s-x", "s-1", "s-2"]);
        assert_eq!(plan.layers[0].grid_cells, 2);
    }

    #[test]
    fn layer_problems_name_the_layer() {
        let d = decode_err(
            r#"{"phase": 1, "name": "n", "layers": [
  {"id": "L0", "patterns": [{"id": "p1-a", "backend": "t"}]},
  {"id": "L0", "node_group": "gpu", "partitions": 0, "settings": 1, "estimate": "x", "patterns": {}},
  {"name": "no id"},
  {"id": "../L2", "oops": 1},
  5]}"#,
        );
        assert_eq!(
            lines(&d),
            [
                "3:10 layers[1].id: duplicate layer id \"L0\" (first at 2:10)",
                "3:30 layers[1].node_group: unknown node group \"gpu\"",
                "3:51 layers[1].partitions: must be at least 1, found 0",
                "3:66 layers[1].settings: expected an object, found a number",
                "3:81 layers[1].estimate: invalid duration \"x\"",
                "3:98 layers[1].patterns: expected an array of patterns, found an object",
                "4:3 layers[2].id: missing required field \"id\" in layers[2]",
                "5:27 layers[3].oops: unknown field \"oops\"",
                "5:10 layers[3].id: layer id \"../L2\" is not safe as a file name: it contains \"..\"",
                "5:3 layers[3]: layer \"../L2\" has neither \"patterns\" nor \"grid\"",
                "6:3 layers[4]: expected an object, found a number",
            ]
        );
    }

    #[test]
    fn the_layers_list_is_required_and_not_empty() {
        let d = decode_err(r#"{"phase": 1, "name": "n"}"#);
        assert_eq!(
            lines(&d),
            ["1:1 layers: missing required field \"layers\" in the plan"]
        );
        let d = decode_err(r#"{"phase": 1, "name": "n", "layers": []}"#);
        assert_eq!(lines(&d), ["1:37 layers: no layers"]);
        let d = decode_err(r#"{"phase": 1, "name": "n", "layers": {}}"#);
        assert_eq!(
            lines(&d),
            ["1:37 layers: expected an array of layers, found an object"]
        );
    }

    #[test]
    fn task_ids_are_checked_once_merged() {
        let d = decode_err(
            r#"{"phase": 1, "name": "n", "layers": [{"id": "L0", "patterns": [
  {"id": "p1-a", "backend": "t"},
  {"id": "x-b", "backend": "t"},
  {"id": "p1-a", "backend": "t"},
  {"id": "p1 c", "backend": "t"}]}]}"#,
        );
        assert_eq!(
            lines(&d),
            [
                "3:10 layers[0].patterns[1]: pattern id \"x-b\" does not start with the phase prefix \"p1-\"",
                "4:10 layers[0].patterns[2].id: duplicate pattern id \"p1-a\" (first at 2:10)",
                "5:10 layers[0].patterns[3]: pattern id \"p1 c\" is not safe as a file name and S3 key: it contains ' '",
            ]
        );
    }
}
