//! Deciding what the model's input is and how pixels become it, from our metadata (checked against
//! the graph) or, for a foreign model, from the caller's [`Preprocessing`] (checked the same way).

use std::path::Path;

use crate::error::{Result, RuntimeError};
use crate::metadata::ModelMetadata;
use crate::model_file::{Dim, ModelInfo};
use crate::preprocess::{InputDescription, Preprocessing};

/// The resolved input and class names, plus the batch size the graph forces (if any).
pub(crate) struct Resolved {
    pub input: InputDescription,
    pub classes: Vec<String>,
    pub fixed_batch: Option<usize>,
}

fn fixed(d: &Dim) -> Option<usize> {
    match d {
        Dim::Fixed(n) => Some(*n),
        _ => None,
    }
}

/// Where the input description comes from.
pub(crate) enum Describe {
    /// Our `sc.*` metadata (an error when absent).
    Ours,
    /// The caller's, for a foreign model.
    Given(Preprocessing),
    /// Ours when present; else the graph's fixed shape, raw pixels in [0, 1], numbered classes.
    Raw,
}

/// Largest input height or width the runtime accepts from a model's metadata, its graph or the
/// caller: far above any image classifier's, and it bounds the buffers allocated per image.
pub const MAX_INPUT_SIDE: usize = 4096;
/// Largest number of input values in one run (the graph's fixed batch x C x H x W): 2^28 floats,
/// 1 GiB.
pub const MAX_RUN_VALUES: usize = 1 << 28;

/// Resolves the input and checks that its buffers can be allocated: a model that declares a huge
/// input must be refused at load, not abort the process when the first image is prepared.
pub(crate) fn resolve(
    info: &ModelInfo,
    metadata: Option<&ModelMetadata>,
    describe: &Describe,
) -> Result<Resolved> {
    let r = resolve_unchecked(info, metadata, describe)?;
    let path = info.path.as_path();
    let (c, h, w) = (r.input.channels, r.input.height, r.input.width);
    let from_source = |problem: String| match (describe, metadata) {
        (Describe::Given(_), _) => preprocessing(path, problem),
        (_, Some(_)) => RuntimeError::Metadata {
            path: path.to_path_buf(),
            key: crate::metadata::keys::INPUT.into(),
            problem,
        },
        _ => RuntimeError::Contract {
            path: path.to_path_buf(),
            problem,
        },
    };
    if h > MAX_INPUT_SIDE || w > MAX_INPUT_SIDE {
        return Err(from_source(format!(
            "input size {h}x{w} is larger than the {MAX_INPUT_SIDE} pixels per side the runtime accepts"
        )));
    }
    let per_image = c.saturating_mul(h).saturating_mul(w);
    if per_image > MAX_RUN_VALUES {
        return Err(from_source(format!(
            "an input of [{c}, {h}, {w}] is more than the {MAX_RUN_VALUES} values the runtime accepts"
        )));
    }
    if let Some(b) = r.fixed_batch {
        if b.saturating_mul(per_image) > MAX_RUN_VALUES {
            return Err(RuntimeError::Contract {
                path: path.to_path_buf(),
                problem: format!(
                    "the graph fixes the batch at {b}: {b} x [{c}, {h}, {w}] input values are more \
                     than the {MAX_RUN_VALUES} the runtime allocates for one run"
                ),
            });
        }
    }
    Ok(r)
}

fn resolve_unchecked(
    info: &ModelInfo,
    metadata: Option<&ModelMetadata>,
    describe: &Describe,
) -> Result<Resolved> {
    let path = info.path.as_path();
    let (graph_input, [n, c, h, w]) = info.image_input()?;
    let fixed_batch = fixed(&n).filter(|&b| b > 0);
    let pre = match describe {
        Describe::Given(p) => Some(p),
        Describe::Raw if metadata.is_none() => {
            return Ok(Resolved {
                input: raw(path, &graph_input.name, [&c, &h, &w])?,
                classes: vec![],
                fixed_batch,
            })
        }
        _ => None,
    };
    let (input, classes) =
        match (metadata, pre) {
            (Some(_), Some(_)) => return Err(preprocessing(
                path,
                "this model carries its own preprocessing (sc.* metadata, normalization inside \
                 the graph); do not also give mean/std/classes"
                    .into(),
            )),
            (None, None) => {
                return Err(preprocessing(
                    path,
                    "the model has no sc.* metadata (a foreign model): give the preprocessing \
                 (mean, std, class names, and the input size if the graph does not fix it)"
                        .into(),
                ))
            }
            (Some(m), None) => {
                let i = &m.input;
                let meta_err = |problem: String| RuntimeError::Metadata {
                    path: path.to_path_buf(),
                    key: crate::metadata::keys::INPUT.into(),
                    problem,
                };
                if i.name != graph_input.name {
                    return Err(meta_err(format!(
                        "names the input `{}` but the graph's input is `{}`",
                        i.name, graph_input.name
                    )));
                }
                for (what, meta, dim) in [("channels", i.channels, &c), ("height", i.height, &h)]
                    .into_iter()
                    .chain([("width", i.width, &w)])
                {
                    if fixed(dim).is_some_and(|g| g != meta) {
                        return Err(meta_err(format!(
                            "says {what} = {meta} but the graph input `{}` has {dim}",
                            graph_input.name
                        )));
                    }
                }
                let desc = InputDescription {
                    name: i.name.clone(),
                    channels: i.channels,
                    height: i.height,
                    width: i.width,
                    pixel_range: i.pixel_range,
                    mean: vec![0.0; i.channels],
                    std: vec![1.0; i.channels],
                    resize: m.preprocess.as_ref().map(|p| p.resize).unwrap_or_default(),
                };
                (desc, m.classes.clone())
            }
            (None, Some(p)) => (
                foreign(path, &graph_input.name, [&c, &h, &w], p)?,
                p.classes.clone(),
            ),
        };
    Ok(Resolved {
        input,
        classes,
        fixed_batch,
    })
}

fn preprocessing(path: &Path, problem: String) -> RuntimeError {
    RuntimeError::Preprocessing {
        path: path.to_path_buf(),
        problem,
    }
}

fn raw(path: &Path, name: &str, chw: [&Dim; 3]) -> Result<InputDescription> {
    match chw.map(fixed) {
        [Some(channels), Some(height), Some(width)] if channels > 0 && height > 0 && width > 0 => {
            Ok(InputDescription {
                name: name.to_string(),
                channels,
                height,
                width,
                pixel_range: [0.0, 1.0],
                mean: vec![0.0; channels],
                std: vec![1.0; channels],
                resize: sc_data::Resize::Stretch,
            })
        }
        _ => Err(preprocessing(
            path,
            format!(
                "the graph input `{name}` is [N, {}, {}, {}]: C, H and W must be fixed numbers \
                 to run it without a preprocessing description",
                chw[0], chw[1], chw[2]
            ),
        )),
    }
}

fn foreign(path: &Path, name: &str, chw: [&Dim; 3], p: &Preprocessing) -> Result<InputDescription> {
    let bad = |problem: String| preprocessing(path, problem);
    let channels = p.mean.len();
    if !matches!(channels, 1 | 3) || p.std.len() != channels {
        return Err(bad(format!(
            "{} means and {} stds: give 1 (gray) or 3 (RGB) of each",
            p.mean.len(),
            p.std.len()
        )));
    }
    if let Some(s) = p.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(bad(format!("std {s} must be a positive number")));
    }
    if let Some(m) = p.mean.iter().find(|m| !m.is_finite()) {
        return Err(bad(format!("mean {m} is not a finite number")));
    }
    let [lo, hi] = p.pixel_range;
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        return Err(bad(format!(
            "pixel range [{lo}, {hi}] must have low < high"
        )));
    }
    if p.classes.is_empty() {
        return Err(bad("no class names given".into()));
    }
    if fixed(chw[0]).is_some_and(|g| g != channels) {
        return Err(bad(format!(
            "{channels} channel(s) given (mean/std) but the graph input `{name}` has {}",
            chw[0]
        )));
    }
    let graph_hw = (fixed(chw[1]), fixed(chw[2]));
    let (height, width) = match (p.input_size, graph_hw) {
        (Some((h, w)), (gh, gw)) => {
            if gh.is_some_and(|g| g != h) || gw.is_some_and(|g| g != w) {
                return Err(bad(format!(
                    "input size {h}x{w} given but the graph input `{name}` is {}x{}",
                    chw[1], chw[2]
                )));
            }
            (h, w)
        }
        (None, (Some(h), Some(w))) => (h, w),
        (None, _) => {
            return Err(bad(format!(
                "the graph input `{name}` has a symbolic size {}x{}: give the input size",
                chw[1], chw[2]
            )))
        }
    };
    if height == 0 || width == 0 {
        return Err(bad(format!("empty input size {height}x{width}")));
    }
    Ok(InputDescription {
        name: name.to_string(),
        channels,
        height,
        width,
        pixel_range: p.pixel_range,
        mean: p.mean.clone(),
        std: p.std.clone(),
        resize: sc_data::Resize::Stretch,
    })
}
