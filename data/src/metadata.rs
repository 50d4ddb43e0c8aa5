//! The model contract's `sc.*` ONNX metadata: what the exporter writes into `metadata_props`
//! and the runtime reads back, in one place ([`keys`] for the names, typed values, one parser).
//!
//! Keys (all string values, JSON where structured):
//! - `sc.classes`: JSON array of class names, in logit order.
//! - `sc.input`: `{"layout":"NCHW","channels":C,"height":H,"width":W,"pixel_range":[0.0,1.0],"name":"image"}`.
//! - `sc.normalization`: `{"mean":[..],"std":[..]}`, already applied inside the graph (informational).
//! - `sc.preprocess`: `{"resize":"shorter-side-center-crop"}` for models trained on image folders:
//!   how a photo of another size is fitted to the input ([`Resize`]); absent: `stretch`.
//! - `sc.architecture`: `{"name":..,"config":{..}}`; `sc.parameters`: integer; `sc.recipe`: JSON;
//!   `sc.val_accuracy`: number; `sc.producer`: free text.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The metadata keys, each written by the exporter (`sc-models`, `sc-trainer export`) and read here.
pub mod keys {
    /// Prefix shared by all our metadata keys.
    pub const PREFIX: &str = "sc.";
    /// JSON array of class names, in logit order (required).
    pub const CLASSES: &str = "sc.classes";
    /// [`super::InputSpec`] as JSON (required).
    pub const INPUT: &str = "sc.input";
    /// [`super::Normalization`] as JSON, already inside the graph.
    pub const NORMALIZATION: &str = "sc.normalization";
    /// `{"name":..,"config":{..}}`.
    pub const ARCHITECTURE: &str = "sc.architecture";
    /// Number of trainable parameters, an integer.
    pub const PARAMETERS: &str = "sc.parameters";
    /// How the weights were trained (schedule, iterations, batch size, seed...), JSON.
    pub const RECIPE: &str = "sc.recipe";
    /// Validation accuracy in [0, 1], a number.
    pub const VAL_ACCURACY: &str = "sc.val_accuracy";
    /// Who wrote the file, free text.
    pub const PRODUCER: &str = "sc.producer";
    /// [`super::Preprocess`] as JSON: how images of another size are fitted to the input.
    pub const PREPROCESS: &str = "sc.preprocess";
}

/// Prefix shared by all our metadata keys.
pub use keys::PREFIX;

/// Name of the graph input of the models we export.
pub const INPUT_NAME: &str = "image";
/// Name of the graph output of the models we export.
pub const OUTPUT_NAME: &str = "logits";

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

impl InputSpec {
    /// Our exported models' input: `image`, NCHW, pixels scaled to [0, 1] (raw byte / 255).
    pub fn ours(channels: usize, height: usize, width: usize) -> Self {
        InputSpec {
            layout: "NCHW".into(),
            channels,
            height,
            width,
            pixel_range: [0.0, 1.0],
            name: INPUT_NAME.into(),
        }
    }
}

/// Per-channel input normalization `(x - mean) / std`, with `x` the pixel scaled to [0, 1];
/// stored in `sc.normalization`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// How an image of another size is fitted to the model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// Resized to the input size, aspect ratio not kept (triangle filter): what CIFAR-style
    /// models, trained on images of the input size already, get.
    #[default]
    Stretch,
    /// The shorter side resized to the input size (aspect ratio kept), then the centre square:
    /// what the trainer does to the images of a folder ([`crate::images::fit_square`]).
    ShorterSideCenterCrop,
}

/// The `sc.preprocess` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    pub resize: Resize,
}

/// An `sc.*` entry that is missing, malformed or inconsistent: names the file and the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: metadata `{key}`: {problem}")]
pub struct MetadataError {
    pub path: PathBuf,
    pub key: String,
    pub problem: String,
}

pub type Result<T, E = MetadataError> = std::result::Result<T, E>;

/// How `sc.val_accuracy` is written (six decimals).
pub fn format_val_accuracy(accuracy: f64) -> String {
    format!("{accuracy:.6}")
}

/// All `sc.*` metadata of a model, parsed.
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
    /// How images are fitted to the input (absent: [`Resize::Stretch`]).
    pub preprocess: Option<Preprocess>,
}

impl ModelMetadata {
    /// The metadata every model we export carries; the provenance (`recipe`, `val_accuracy`,
    /// `producer`) starts empty.
    pub fn new(classes: Vec<String>, input: InputSpec) -> Self {
        ModelMetadata {
            classes,
            input,
            normalization: None,
            architecture: None,
            parameters: None,
            recipe: None,
            val_accuracy: None,
            producer: None,
            preprocess: None,
        }
    }

    /// The `metadata_props` entries, key and value, of the fields that are set (the inverse of
    /// [`ModelMetadata::from_props`]).
    pub fn to_props(&self) -> Vec<(String, String)> {
        let mut props = vec![
            (keys::CLASSES.to_string(), render(&self.classes)),
            (keys::INPUT.to_string(), render(&self.input)),
        ];
        let mut push = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                props.push((key.to_string(), v));
            }
        };
        push(keys::NORMALIZATION, self.normalization.as_ref().map(render));
        push(
            keys::ARCHITECTURE,
            self.architecture.as_ref().map(|a| a.to_string()),
        );
        push(keys::PARAMETERS, self.parameters.map(|p| p.to_string()));
        push(keys::RECIPE, self.recipe.as_ref().map(|r| r.to_string()));
        push(
            keys::VAL_ACCURACY,
            self.val_accuracy.map(format_val_accuracy),
        );
        push(keys::PRODUCER, self.producer.clone());
        push(keys::PREPROCESS, self.preprocess.as_ref().map(render));
        props
    }

    /// Reads our metadata from the model's `metadata_props`. `Ok(None)` when the model carries no
    /// `sc.*` key at all (a foreign model); an error when some keys are there but malformed or missing.
    pub fn from_props(path: &Path, props: &BTreeMap<String, String>) -> Result<Option<Self>> {
        if !props.keys().any(|k| k.starts_with(PREFIX)) {
            return Ok(None);
        }
        let required = |key: &str| {
            props.get(key).ok_or_else(|| MetadataError {
                path: path.to_path_buf(),
                key: key.into(),
                problem: "missing (the model has other sc.* keys, so it must have this one)".into(),
            })
        };
        let optional_json = |key: &str| props.get(key).map(|v| json(path, key, v)).transpose();
        let classes: Vec<String> = json(path, keys::CLASSES, required(keys::CLASSES)?)?;
        let input: InputSpec = json(path, keys::INPUT, required(keys::INPUT)?)?;
        let normalization = props
            .get(keys::NORMALIZATION)
            .map(|v| json::<Normalization>(path, keys::NORMALIZATION, v))
            .transpose()?;
        let architecture = optional_json(keys::ARCHITECTURE)?;
        let recipe = optional_json(keys::RECIPE)?;
        let parameters = props
            .get(keys::PARAMETERS)
            .map(|v| number::<u64>(path, keys::PARAMETERS, v))
            .transpose()?;
        let val_accuracy = props
            .get(keys::VAL_ACCURACY)
            .map(|v| number::<f64>(path, keys::VAL_ACCURACY, v))
            .transpose()?;
        let preprocess = props
            .get(keys::PREPROCESS)
            .map(|v| json::<Preprocess>(path, keys::PREPROCESS, v))
            .transpose()?;
        let meta = ModelMetadata {
            classes,
            input,
            normalization,
            architecture,
            parameters,
            recipe,
            val_accuracy,
            producer: props.get(keys::PRODUCER).cloned(),
            preprocess,
        };
        meta.check_self(path)?;
        Ok(Some(meta))
    }
    /// Checks the metadata against itself (the graph checks are in `model_file`).
    fn check_self(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, problem: String| MetadataError {
            path: path.to_path_buf(),
            key: key.into(),
            problem,
        };
        if self.classes.is_empty() {
            return Err(bad(keys::CLASSES, "no class names".into()));
        }
        let i = &self.input;
        if i.layout != "NCHW" {
            return Err(bad(
                keys::INPUT,
                format!("layout {:?} is not supported (only \"NCHW\")", i.layout),
            ));
        }
        if !matches!(i.channels, 1 | 3) {
            return Err(bad(
                keys::INPUT,
                format!(
                    "{} channels: only 1 (gray) or 3 (RGB) are supported",
                    i.channels
                ),
            ));
        }
        if i.height == 0 || i.width == 0 {
            return Err(bad(
                keys::INPUT,
                format!("empty input size {}x{}", i.height, i.width),
            ));
        }
        let [lo, hi] = i.pixel_range;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(bad(
                keys::INPUT,
                format!("pixel_range [{lo}, {hi}] must be two finite numbers, low < high"),
            ));
        }
        if let Some(n) = &self.normalization {
            if n.mean.len() != i.channels || n.std.len() != i.channels {
                return Err(bad(
                    keys::NORMALIZATION,
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

/// JSON text of a metadata value: strings, numbers and arrays of them, which always serialize.
fn render<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("metadata values are plain JSON")
}

fn json<T: serde::de::DeserializeOwned>(path: &Path, key: &str, value: &str) -> Result<T> {
    serde_json::from_str(value).map_err(|e| MetadataError {
        path: path.to_path_buf(),
        key: key.into(),
        problem: format!("invalid JSON for this key: {e}"),
    })
}

fn number<T: std::str::FromStr>(path: &Path, key: &str, value: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    value.trim().parse().map_err(|e| MetadataError {
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
            (
                vec![
                    ("sc.classes", r#"["a"]"#),
                    ("sc.input", INPUT),
                    ("sc.preprocess", r#"{"resize":"squash"}"#),
                ],
                "sc.preprocess",
            ),
        ];
        for (pairs, needle) in cases {
            let e = ModelMetadata::from_props(p, &props(&pairs))
                .unwrap_err()
                .to_string();
            assert!(e.contains("m.onnx") && e.contains(needle), "{e}");
        }
    }

    #[test]
    fn written_metadata_reads_back_the_same() {
        let mut m =
            ModelMetadata::new(vec!["cat".into(), "dog".into()], InputSpec::ours(3, 32, 32));
        m.normalization = Some(Normalization {
            mean: vec![0.5, 0.25, 0.125],
            std: vec![0.2, 0.3, 0.4],
        });
        m.architecture = Some(serde_json::json!({"name": "resnet20", "config": {"depth": 20}}));
        m.parameters = Some(269_722);
        m.recipe = Some(serde_json::json!({"iterations": 10}));
        m.val_accuracy = Some(0.9375);
        m.producer = Some("test".into());
        m.preprocess = Some(Preprocess {
            resize: Resize::ShorterSideCenterCrop,
        });
        let props: BTreeMap<String, String> = m.to_props().into_iter().collect();
        assert_eq!(
            props["sc.preprocess"],
            r#"{"resize":"shorter-side-center-crop"}"#
        );
        assert_eq!(props.len(), 9);
        assert_eq!(props[keys::INPUT], INPUT);
        let back = ModelMetadata::from_props(Path::new("m.onnx"), &props)
            .unwrap()
            .unwrap();
        assert_eq!(back, m);
    }
}
