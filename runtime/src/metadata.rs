//! Our `sc.*` ONNX metadata: what the trainer writes into `metadata_props` and the runtime reads back.
//!
//! Keys (all string values, JSON where structured):
//! - `sc.classes`: JSON array of class names, in logit order.
//! - `sc.input`: `{"layout":"NCHW","channels":C,"height":H,"width":W,"pixel_range":[0.0,1.0],"name":"image"}`.
//! - `sc.normalization`: `{"mean":[..],"std":[..]}`, already applied inside the graph (informational).
//! - `sc.architecture`: `{"name":..,"config":{..}}`; `sc.parameters`: integer; `sc.recipe`: JSON;
//!   `sc.val_accuracy`: number; `sc.producer`: free text.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};

/// Prefix shared by all our metadata keys.
pub const PREFIX: &str = "sc.";

/// The input description stored in `sc.input`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Memory layout of the input tensor; only `"NCHW"` is supported.
    pub layout: String,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// The value a 0 byte maps to and the value a 255 byte maps to (ours: `[0.0, 1.0]`).
    pub pixel_range: [f32; 2],
    /// Name of the graph input.
    pub name: String,
}

/// Per-channel mean and std, as stored in `sc.normalization`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// All `sc.*` metadata of a model, parsed; the unparsed entries of any key are in `raw`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelMetadata {
    pub classes: Vec<String>,
    pub input: InputSpec,
    /// Already inside the graph: the runtime never applies it again.
    pub normalization: Option<Normalization>,
    pub architecture: Option<serde_json::Value>,
    pub parameters: Option<u64>,
    pub recipe: Option<serde_json::Value>,
    pub val_accuracy: Option<f64>,
    pub producer: Option<String>,
}

impl ModelMetadata {
    /// Reads our metadata from the model's `metadata_props`. `Ok(None)` when the model carries no
    /// `sc.*` key at all (a foreign model); an error when some keys are there but malformed or missing.
    pub fn from_props(path: &Path, props: &BTreeMap<String, String>) -> Result<Option<Self>> {
        if !props.keys().any(|k| k.starts_with(PREFIX)) {
            return Ok(None);
        }
        let required = |key: &str| {
            props.get(key).ok_or_else(|| RuntimeError::Metadata {
                path: path.to_path_buf(),
                key: key.into(),
                problem: "missing (the model has other sc.* keys, so it must have this one)".into(),
            })
        };
        let classes: Vec<String> = json(path, "sc.classes", required("sc.classes")?)?;
        let input: InputSpec = json(path, "sc.input", required("sc.input")?)?;
        let normalization = props
            .get("sc.normalization")
            .map(|v| json::<Normalization>(path, "sc.normalization", v))
            .transpose()?;
        let architecture = props
            .get("sc.architecture")
            .map(|v| json(path, "sc.architecture", v))
            .transpose()?;
        let recipe = props
            .get("sc.recipe")
            .map(|v| json(path, "sc.recipe", v))
            .transpose()?;
        let parameters = props
            .get("sc.parameters")
            .map(|v| number::<u64>(path, "sc.parameters", v))
            .transpose()?;
        let val_accuracy = props
            .get("sc.val_accuracy")
            .map(|v| number::<f64>(path, "sc.val_accuracy", v))
            .transpose()?;
        let meta = ModelMetadata {
            classes,
            input,
            normalization,
            architecture,
            parameters,
            recipe,
            val_accuracy,
            producer: props.get("sc.producer").cloned(),
        };
        meta.check_self(path)?;
        Ok(Some(meta))
    }

    /// Checks the metadata against itself (the graph checks are in `model_file`).
    fn check_self(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, problem: String| RuntimeError::Metadata {
            path: path.to_path_buf(),
            key: key.into(),
            problem,
        };
        if self.classes.is_empty() {
            return Err(bad("sc.classes", "no class names".into()));
        }
        let i = &self.input;
        if i.layout != "NCHW" {
            return Err(bad(
                "sc.input",
                format!("layout {:?} is not supported (only \"NCHW\")", i.layout),
            ));
        }
        if !matches!(i.channels, 1 | 3) {
            return Err(bad(
                "sc.input",
                format!(
                    "{} channels: only 1 (gray) or 3 (RGB) are supported",
                    i.channels
                ),
            ));
        }
        if i.height == 0 || i.width == 0 {
            return Err(bad(
                "sc.input",
                format!("empty input size {}x{}", i.height, i.width),
            ));
        }
        let [lo, hi] = i.pixel_range;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(bad(
                "sc.input",
                format!("pixel_range [{lo}, {hi}] must be two finite numbers, low < high"),
            ));
        }
        if let Some(n) = &self.normalization {
            if n.mean.len() != i.channels || n.std.len() != i.channels {
                return Err(bad(
                    "sc.normalization",
                    format!(
                        "{} means and {} stds for {} input channels (sc.input)",
                        n.mean.len(),
                        n.std.len(),
                        i.channels
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn json<T: serde::de::DeserializeOwned>(path: &Path, key: &str, value: &str) -> Result<T> {
    serde_json::from_str(value).map_err(|e| RuntimeError::Metadata {
        path: path.to_path_buf(),
        key: key.into(),
        problem: format!("invalid JSON for this key: {e}"),
    })
}

fn number<T: std::str::FromStr>(path: &Path, key: &str, value: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    value.trim().parse().map_err(|e| RuntimeError::Metadata {
        path: path.to_path_buf(),
        key: key.into(),
        problem: format!("{value:?} is not a number: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const INPUT: &str = r#"{"layout":"NCHW","channels":3,"height":32,"width":32,"pixel_range":[0.0,1.0],"name":"image"}"#;

    #[test]
    fn foreign_model_has_none_and_ours_parses() {
        let p = Path::new("m.onnx");
        assert!(ModelMetadata::from_props(p, &props(&[("other", "x")]))
            .unwrap()
            .is_none());
        let m = ModelMetadata::from_props(
            p,
            &props(&[
                ("sc.classes", r#"["a","b"]"#),
                ("sc.input", INPUT),
                ("sc.parameters", "272474"),
                ("sc.val_accuracy", "0.94"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(m.classes, ["a", "b"]);
        assert_eq!(m.input.channels, 3);
        assert_eq!(m.parameters, Some(272474));
    }

    #[test]
    fn malformed_metadata_names_file_and_key() {
        let p = Path::new("m.onnx");
        let nhwc = INPUT.replace("NCHW", "NHWC");
        let cases = [
            (vec![("sc.input", INPUT)], "sc.classes"),
            (
                vec![("sc.classes", "[1,"), ("sc.input", INPUT)],
                "invalid JSON",
            ),
            (
                vec![("sc.classes", r#"["a"]"#), ("sc.input", nhwc.as_str())],
                "layout",
            ),
            (
                vec![
                    ("sc.classes", r#"["a"]"#),
                    ("sc.input", INPUT),
                    ("sc.normalization", r#"{"mean":[0.5],"std":[0.5]}"#),
                ],
                "1 means",
            ),
            (
                vec![
                    ("sc.classes", r#"["a"]"#),
                    ("sc.input", INPUT),
                    ("sc.parameters", "x"),
                ],
                "not a number",
            ),
        ];
        for (pairs, needle) in cases {
            let e = ModelMetadata::from_props(p, &props(&pairs))
                .unwrap_err()
                .to_string();
            assert!(e.contains("m.onnx") && e.contains(needle), "{e}");
        }
    }
}
