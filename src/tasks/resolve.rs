//! Resolving the value markers of a parsed template output (see `marks`):
//! commands are linted then get shell-quoted values, `env` gets the raw
//! values, every other string the quoted form values always had.

use std::collections::BTreeMap;

use super::lint::{self, Place};
use super::marks::{resolve as fill, As, Slot};
use super::model::TemplateOutput;
use super::shell;

/// Variables the tool provides, whose values are checked ids and numbers:
/// inside the template's quotes they are harmless while they stay made of
/// safe characters (`"$INFRA_ROOT/{{pattern_id}}"`).
const PROVIDED: &[&str] = &[
    "phase",
    "phase_name",
    "pattern_id",
    "layer_id",
    "backend",
    "node_group",
    "instance_type",
    "slots",
    "node_count",
    "partition",
    "n_partitions",
];

pub(crate) fn resolve(
    mut out: TemplateOutput,
    slots: &[Slot],
) -> Result<TemplateOutput, (String, String)> {
    let q = |s: &str| fill(s, slots, As::Quoted);
    let env = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        m.iter()
            .map(|(k, v)| (q(k), fill(v, slots, As::Raw)))
            .collect()
    };
    out.env = env(&out.env);
    out.roles = out.roles.iter().map(|r| q(r)).collect();
    out.outputs = out.outputs.iter().map(|r| q(r)).collect();
    out.table = out.table.iter().map(|r| q(r)).collect();
    for s in &mut out.steps {
        s.name = q(&s.name);
        check_command(&s.name, &s.command, slots)?;
        s.command = q(&s.command);
        if let Some(serde_json::Value::String(role)) = &s.node {
            s.node = Some(serde_json::Value::String(q(role)));
        }
        s.env = env(&s.env);
        if let Some(h) = &mut s.health {
            if let Some(c) = &h.command {
                check_command(&s.name, c, slots)?;
                h.command = Some(q(c));
            }
            h.http = h.http.as_deref().map(q);
        }
    }
    Ok(out)
}

/// The first value the command puts where its quoting does not hold.
fn check_command(step: &str, command: &str, slots: &[Slot]) -> Result<(), (String, String)> {
    for piece in super::marks::pieces(command) {
        if let super::marks::Piece::Slot(i) = piece {
            if let Some(slot) = slots.get(i).filter(|s| s.triple) {
                return Err((
                    format!(
                        "step \"{step}\": {{{{{{{}}}}}}} puts \"{}\" into the command without shell quoting",
                        slot.name, slot.name
                    ),
                    format!(
                        "write {{{{{}}}}} (values are shell-quoted for you), or pass the value in \"env\" and use \"${{NAME}}\"",
                        slot.name
                    ),
                ));
            }
        }
    }
    for (i, place) in lint::scan(command) {
        let Some(slot) = slots.get(i) else { continue };
        let safe = shell::quote(&slot.raw) == slot.raw;
        if safe && place.harmless_for_safe_words() && PROVIDED.contains(&slot.name.as_str()) {
            continue;
        }
        return Err((
            format!(
                "step \"{step}\": the value of \"{}\" lands {}, where its shell quoting does not protect it",
                slot.name,
                place.describe()
            ),
            hint(place, &slot.name),
        ));
    }
    Ok(())
}

fn hint(place: Place, name: &str) -> String {
    let v = format!("{{{{{name}}}}}");
    match place {
        Place::DoubleQuotes | Place::SingleQuotes | Place::AnsiQuotes => format!(
            "remove the quotes around {v}: values are shell-quoted already (write --x {v}, not --x \"{v}\"); to build a longer string, pass the value in \"env\" and use \"$NAME\""
        ),
        Place::AfterBackslash | Place::AfterDollar => {
            format!("separate {v} from the character before it (a space or a quoted literal)")
        }
        Place::Comment => format!("move {v} out of the comment"),
        Place::HereDoc | Place::Arithmetic => format!(
            "pass the value in \"env\" (\"env\": {{\"NAME\": \"{v}\"}}, raw there) and use $NAME"
        ),
    }
}
