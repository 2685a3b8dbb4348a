//! CSV in and out of result tables: task outputs read with the `csv` crate
//! (a UTF-8 BOM dropped), tables written with formula-looking cells
//! neutralised for spreadsheets (OWASP's CSV injection rule).

use std::borrow::{Borrow, Cow};
use std::io::Write;
use std::path::Path;

use serde_json::Value;

/// `text` without a leading UTF-8 byte order mark.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// A CSV text (RFC 4180) as its header and rows; a BOM is dropped, rows
/// may be shorter or longer than the header.
pub fn parse(text: &str) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(strip_bom(text).as_bytes());
    let mut records = r.records();
    let header = match records.next() {
        None => return Ok((Vec::new(), Vec::new())),
        Some(h) => h.map_err(|e| e.to_string())?,
    };
    let header = header.iter().map(str::to_string).collect();
    let mut rows = Vec::new();
    for rec in records {
        let rec = rec.map_err(|e| e.to_string())?;
        if rec.len() == 1 && rec[0].is_empty() {
            continue;
        }
        rows.push(rec.iter().map(str::to_string).collect());
    }
    Ok((header, rows))
}

/// Whether a spreadsheet would read `text` as a formula: it starts with
/// `=`, `+`, `-`, `@`, a tab or a carriage return and is not a plain number
/// (`-3`, `+1.5e3` stay numbers).
pub fn looks_like_formula(text: &str) -> bool {
    text.starts_with(['=', '+', '-', '@', '\t', '\r'])
        && !text.parse::<f64>().is_ok_and(f64::is_finite)
}

/// `text` made inert for spreadsheets: a formula-looking cell gets a single
/// quote in front (OWASP); anything else is unchanged.
pub fn neutralise(text: &str) -> Cow<'_, str> {
    if looks_like_formula(text) {
        Cow::Owned(format!("'{text}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// The text of a cell as written: numbers as numbers, text neutralised
/// unless `raw`.
fn cell<V: Borrow<Value>>(v: Option<V>, raw: bool) -> String {
    match v.as_ref().map(Borrow::borrow) {
        None => String::new(),
        Some(v @ Value::String(s)) if !raw && looks_like_formula(s) => {
            neutralise(&cell_text(v)).into_owned()
        }
        Some(v) => cell_text(v),
    }
}

/// Write a table to `path` (through a temporary file renamed into place):
/// the header `cols`, then each row's cells in the same order.
pub fn write<R, C, V>(path: &Path, cols: &[String], rows: R, raw: bool) -> std::io::Result<()>
where
    R: IntoIterator<Item = C>,
    C: IntoIterator<Item = Option<V>>,
    V: Borrow<Value>,
{
    let tmp = path.with_extension("csv.tmp");
    {
        let file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let mut w = csv::WriterBuilder::new().flexible(true).from_writer(file);
        let header = cols.iter().map(|c| {
            if raw {
                Cow::Borrowed(c.as_str())
            } else {
                neutralise(c)
            }
        });
        w.write_record(header.map(|c| c.into_owned()))
            .map_err(std::io::Error::other)?;
        for r in rows {
            w.write_record(r.into_iter().map(|v| cell(v, raw)))
                .map_err(std::io::Error::other)?;
        }
        w.into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .flush()?;
    }
    std::fs::rename(tmp, path)
}

/// A cell as CSV text; floats never in scientific notation.
pub fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => format_float(f),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

pub fn format_float(f: f64) -> String {
    if !f.is_finite() {
        return String::new();
    }
    // Rust's Display for f64 is the shortest exact form and never uses an exponent.
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_looking_cells_are_neutralised_but_numbers_are_not() {
        for bad in [
            "=HYPERLINK(\"http://x\",\"y\")",
            "=cmd|' /C calc'!A0",
            "+1+A1",
            "-2+3",
            "@SUM(A1)",
            "\tx",
            "\rx",
            "-",
            "-nan",
        ] {
            assert_eq!(neutralise(bad), format!("'{bad}"), "{bad:?}");
        }
        for ok in ["-3", "+1.5e3", "plain", "a=b", "", "0.25"] {
            assert_eq!(neutralise(ok), ok);
        }
    }

    #[test]
    fn a_bom_does_not_become_part_of_the_first_column_name() {
        let (h, rows) = parse("\u{feff}a,b\r\n1,\"x,y\"\n\n2\n").unwrap();
        assert_eq!(h, ["a", "b"]);
        assert_eq!(rows, [vec!["1", "x,y"], vec!["2"]]);
    }
}
