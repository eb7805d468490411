//! Validation of names and labels chosen by users or agents. Cluster names end up in
//! certificate subjects and file names, so they are held to DNS-1123 label rules.

use crate::Labels;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("cluster name must be 1-63 characters, got {0}")]
    Length(usize),
    #[error("cluster name {0:?} must be lowercase letters, digits and '-', starting and ending with a letter or digit")]
    Charset(String),
    #[error("label key {0:?} is invalid: use 1-63 characters of [A-Za-z0-9._-/], starting with a letter or digit")]
    LabelKey(String),
    #[error(
        "label value {0:?} for key {1:?} is invalid: use at most 63 characters of [A-Za-z0-9._-]"
    )]
    LabelValue(String, String),
    #[error("too many labels: {0} (limit {MAX_LABELS})")]
    TooManyLabels(usize),
}

pub const MAX_LABELS: usize = 64;

/// A DNS-1123 label: what Kubernetes accepts for most object names.
pub fn validate_cluster_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > 63 {
        return Err(NameError::Length(name.len()));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = !name.starts_with('-') && !name.ends_with('-');
    if ok_chars && ok_ends {
        Ok(())
    } else {
        Err(NameError::Charset(name.to_string()))
    }
}

/// Work names: the rule the hub applies to `metadata.name` (`work::validate`), a DNS-1123
/// label. The agent applies it to every work name that arrives from the network before the
/// name reaches its store or an executor, because executors build file names and label
/// selectors from it: this rule excludes `/`, `.`, `..`, whitespace and control characters.
pub fn validate_work_name(name: &str) -> Result<(), NameError> {
    validate_cluster_name(name)
}

pub fn validate_labels(labels: &Labels) -> Result<(), NameError> {
    if labels.len() > MAX_LABELS {
        return Err(NameError::TooManyLabels(labels.len()));
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.as_bytes()[0].is_ascii_alphanumeric()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
        if !key_ok {
            return Err(NameError::LabelKey(k.clone()));
        }
        let value_ok = v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !value_ok {
            return Err(NameError::LabelValue(v.clone(), k.clone()));
        }
    }
    Ok(())
}

/// Parse `k=v` as given on a command line.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("label {s:?} must look like key=value"))?;
    let labels = Labels::from([(k.to_string(), v.to_string())]);
    validate_labels(&labels).map_err(|e| e.to_string())?;
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names() {
        for good in ["a", "store-042", "x1"] {
            assert_eq!(validate_cluster_name(good), Ok(()));
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"a".repeat(64), "ä"] {
            assert!(validate_cluster_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn labels() {
        assert!(parse_label("region=eu-west").is_ok());
        assert!(parse_label("tether.dev/zone=a").is_ok());
        assert!(parse_label("noequals").is_err());
        assert!(parse_label("=v").is_err());
        assert!(parse_label("k=has space").is_err());
    }
}
