//! YAML that every Kubernetes YAML reader decodes to exactly the JSON it was made from.
//!
//! kubectl, k3s's auto-deploy folder and other YAML 1.1 readers take unquoted `no`, `on`, `y`
//! or `1_000` as booleans and numbers; a general YAML writer leaves them unquoted because YAML
//! 1.2 reads them as strings. Here every string value is double-quoted (a JSON string literal is
//! a valid YAML double-quoted scalar), keys are quoted unless plainly safe, and floats always
//! carry a decimal point, so both readings agree.

use serde_json::Value;
use std::fmt::Write;

/// Keys left unquoted: a letter, then letters, digits and `_.-/`, and not a word any YAML
/// version reads as something other than a string.
fn plain_key(k: &str) -> bool {
    const WORDS: &[&str] = &[
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf",
    ];
    let mut chars = k.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))
        && !WORDS.contains(&k.to_ascii_lowercase().as_str())
}

fn quoted(s: &str) -> String {
    // serde_json's escaping (\" \\ \n \t \uXXXX) is valid inside YAML double quotes.
    serde_json::Value::String(s.to_string()).to_string()
}

fn scalar(v: &Value) -> Option<String> {
    Some(match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => {
            let t = n.to_string();
            // YAML 1.1 reads `1e300` as a string: a float needs a point before its exponent.
            if n.is_f64() && !t.contains('.') {
                match t.split_once(['e', 'E']) {
                    Some((m, e)) => {
                        let e = if e.starts_with(['-', '+']) {
                            e.to_string()
                        } else {
                            format!("+{e}")
                        };
                        format!("{m}.0e{e}")
                    }
                    None => format!("{t}.0"),
                }
            } else {
                t
            }
        }
        Value::String(s) => quoted(s),
        Value::Array(a) if a.is_empty() => "[]".into(),
        Value::Object(o) if o.is_empty() => "{}".into(),
        _ => return None,
    })
}

fn key(k: &str) -> String {
    if plain_key(k) {
        k.to_string()
    } else {
        quoted(k)
    }
}

fn emit(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, val) in o {
                match scalar(val) {
                    Some(s) => {
                        let _ = writeln!(out, "{pad}{}: {s}", key(k));
                    }
                    None => {
                        let _ = writeln!(out, "{pad}{}:", key(k));
                        emit(val, indent + 2, out);
                    }
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                match scalar(item) {
                    Some(s) => {
                        let _ = writeln!(out, "{pad}- {s}");
                    }
                    None => {
                        let _ = writeln!(out, "{pad}-");
                        emit(item, indent + 2, out);
                    }
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other).unwrap_or_default());
        }
    }
}

/// One YAML document (without the `---` separator) for `v`.
pub fn document(v: &Value) -> String {
    let mut out = String::new();
    emit(v, 0, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ambiguous_scalars_are_quoted_and_numbers_keep_their_type() {
        let v = serde_json::json!({
            "no": "no", "on": ["yes", "y", "off", "1_000", "0x1F", "~", "", "12:30"],
            "replicas": 3, "ratio": 1.5, "big": 1e300, "neg": -2.0e-7, "t": true, "z": null,
            "multi": "a\nb\t\"c\"", "empty": {}, "none": [],
            "nested": [{"a": 1}, [1, 2]],
        });
        let doc = document(&v);
        assert!(doc.contains("\"no\": \"no\""), "{doc}");
        assert!(doc.contains("- \"1_000\""), "{doc}");
        assert!(doc.contains("replicas: 3"), "{doc}");
        assert!(doc.contains("big: 1.0e+300"), "{doc}");
        assert!(doc.contains("empty: {}"), "{doc}");
    }
}
