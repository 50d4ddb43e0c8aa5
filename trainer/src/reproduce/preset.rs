//! Experiment presets (`trainer/presets/*.toml`, compiled in): each experiment at each scale is a
//! base config and a list of runs that override it. Expanding a preset gives fully resolved
//! [`TrainConfig`]s; a run's directory is named by a hash of its config, so experiments share runs
//! whose settings match and a finished run is never redone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::schedule::Schedule;

/// The experiments, with their preset files.
pub const PRESETS: [(&str, &str); 5] = [
    ("sc-vs-pc", include_str!("../../presets/sc-vs-pc.toml")),
    ("train-size", include_str!("../../presets/train-size.toml")),
    ("depth", include_str!("../../presets/depth.toml")),
    ("step-size", include_str!("../../presets/step-size.toml")),
    ("lr-range", include_str!("../../presets/lr-range.toml")),
];

/// What a run is in the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Super-convergence (one cycle).
    Sc,
    /// The piecewise-constant baseline.
    Pc,
    /// An LR range test.
    Range,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub experiment: String,
    pub claims: Vec<u32>,
    pub title: String,
    pub scale: BTreeMap<String, ScalePreset>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalePreset {
    /// The budget per run, in words (goes into the report).
    pub budget: String,
    pub base: toml::Table,
    pub runs: Vec<RunPreset>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunPreset {
    pub label: String,
    pub role: Role,
    /// Runs of the same group are compared with each other (sc vs pc).
    #[serde(default)]
    pub group: String,
    /// The paper's test accuracy for this setting, in percent.
    pub paper: f64,
    pub set: toml::Table,
}

/// One run to do: a preset row at one seed.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    pub label: String,
    pub role: Role,
    pub group: String,
    pub paper: f64,
    pub seed: u64,
    pub config: TrainConfig,
    pub dir: PathBuf,
}

pub fn load(experiment: &str) -> anyhow::Result<Preset> {
    let Some((_, text)) = PRESETS.iter().find(|(n, _)| *n == experiment) else {
        bail!(
            "unknown experiment '{experiment}': expected one of {}",
            super::experiments().join(", ")
        );
    };
    toml::from_str(text).with_context(|| format!("preset {experiment}.toml is invalid"))
}

pub(crate) fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// A preset row's config: the scale's `base`, the row's `set` over it, then `fixed` with the run's
/// seed, device and data path over both.
pub(crate) fn layered(
    base: &toml::Table,
    set: &toml::Table,
    mut fixed: toml::Table,
    seed: u64,
    device: &str,
    data: &Path,
) -> Result<TrainConfig, toml::de::Error> {
    let mut t = base.clone();
    merge(&mut t, set);
    fixed.insert("seed".into(), toml::Value::Integer(seed as i64));
    fixed.insert("device".into(), toml::Value::String(device.into()));
    let mut d = toml::Table::new();
    d.insert(
        "path".into(),
        toml::Value::String(data.display().to_string()),
    );
    fixed.insert("data".into(), toml::Value::Table(d));
    merge(&mut t, &fixed);
    toml::Value::Table(t).try_into()
}

/// An experiment's settings at `scale`, or an error listing the scales it has.
pub(crate) fn scale_of<'a, T>(
    experiment: &str,
    scales: &'a BTreeMap<String, T>,
    scale: &str,
) -> anyhow::Result<&'a T> {
    scales.get(scale).ok_or_else(|| {
        anyhow::anyhow!(
            "experiment {experiment} has no scale '{scale}': expected one of {}",
            scales.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })
}

/// Sets a one-cycle schedule's max LR; the cycle keeps its shape (min and final LR scale with
/// the max). An error for other schedules.
pub(crate) fn set_max_lr(c: &mut TrainConfig, max_lr: f64) -> anyhow::Result<()> {
    let Schedule::OneCycle(oc) = &mut c.schedule else {
        bail!("a max LR is for one-cycle schedules");
    };
    let f = max_lr / oc.max_lr;
    if f != 1.0 {
        oc.min_lr *= f;
        oc.final_lr = oc.final_lr.map(|x| x * f);
        oc.max_lr = max_lr;
    }
    Ok(())
}

/// FNV-1a, stable across platforms and Rust versions (run directory names must not change).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What run names say of their data: its identity by content (a known set's name and the
/// SHA-256 of the training split), and the tokens older runs were named by (the data folder's
/// name), so that their directories stay resumable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataKey {
    pub key: String,
    pub legacy: Vec<String>,
}

impl DataKey {
    /// Reads the training split at `data` (a path or a short name) to name it by content.
    pub fn of(data: &Path) -> anyhow::Result<DataKey> {
        let id = sc_data::named::DataIdentity::of(data)
            .with_context(|| format!("reading {} to name its runs", data.display()))?;
        Ok(DataKey {
            key: id.key(),
            legacy: id.legacy_names(),
        })
    }

    /// A key given as it is, with no older names (tests).
    pub fn fixed(key: &str) -> DataKey {
        DataKey {
            key: key.to_string(),
            legacy: Vec::new(),
        }
    }
}

/// A config's directory name with `data` standing for its data set.
fn run_name(cfg: &TrainConfig, data: &str) -> String {
    let mut recipe = cfg.clone();
    recipe.data.path = PathBuf::from(data);
    let json = serde_json::to_string(&recipe).expect("config serializes");
    let kind = serde_json::to_value(&cfg.schedule)
        .ok()
        .and_then(|v| v["kind"].as_str().map(String::from))
        .unwrap_or_default();
    let length = match (cfg.iterations, cfg.epochs) {
        (None, Some(e)) => format!("{e}ep"),
        (i, _) => format!("{}it", i.unwrap_or(0)),
    };
    format!(
        "{}-{}-{length}-s{}-{:08x}",
        cfg.model.name,
        kind,
        cfg.seed,
        fnv1a(json.as_bytes()) as u32
    )
}

/// The run directory of a config: `{model}-{schedule}-{iterations}it-s{seed}-{hash}`, or
/// `{epochs}ep` for a length in epochs. The hash covers the recipe and the data's identity
/// ([`DataKey`]), not where the data lies: the same data under any path, as an archive or
/// unpacked, names the same runs, and runs committed on one machine resume on another. A
/// directory named the older way (by the data folder's name) is used when it exists and the new
/// one does not.
pub fn run_dir(root: &Path, cfg: &TrainConfig, data: &DataKey) -> PathBuf {
    let dir = root.join(run_name(cfg, &data.key));
    if dir.exists() {
        return dir;
    }
    data.legacy
        .iter()
        .map(|l| root.join(run_name(cfg, l)))
        .find(|d| d.exists())
        .unwrap_or(dir)
}

/// Stretches a run's budget by `factor`: iterations (or epochs), the evaluation interval, and
/// every schedule position given in iterations (PC-LR milestones and warm-up, CLR half cycles)
/// scale together, so the comparison keeps its shape (one cycle's phases are fractions of the run
/// already).
pub fn stretch(cfg: &mut TrainConfig, factor: f64) -> anyhow::Result<()> {
    if !(factor.is_finite() && factor > 0.0) {
        bail!("--budget must be a positive number, got {factor}");
    }
    if factor == 1.0 {
        return Ok(());
    }
    let scale = |n: usize| ((n as f64 * factor).round() as usize).max(1);
    cfg.iterations = cfg.iterations.map(scale);
    cfg.epochs = cfg.epochs.map(|e| e * factor);
    cfg.eval_every = scale(cfg.eval_every);
    match &mut cfg.schedule {
        Schedule::Piecewise(p) => {
            for m in p.milestones.iter_mut() {
                *m = scale(*m);
            }
            if p.warmup_iterations > 0 {
                p.warmup_iterations = scale(p.warmup_iterations);
            }
        }
        Schedule::Clr(c) => c.step_size = scale(c.step_size),
        Schedule::OneCycle(_) | Schedule::Constant(_) | Schedule::Range(_) => {}
    }
    cfg.validate()
}

/// The runs of `experiment` at `scale` for `seeds` seeds (0..seeds), on the data at `data`.
pub fn expand(
    preset: &Preset,
    scale: &str,
    (data, key): (&Path, &DataKey),
    seeds: u64,
    device: &str,
    runs_root: &Path,
) -> anyhow::Result<(ScalePreset, Vec<PlannedRun>)> {
    let sp = scale_of(&preset.experiment, &preset.scale, scale)?;
    if seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let mut out = Vec::new();
    for r in &sp.runs {
        for seed in 0..seeds {
            let config = layered(&sp.base, &r.set, toml::Table::new(), seed, device, data)
                .with_context(|| {
                    format!(
                        "preset {} / {scale} / {}: invalid config",
                        preset.experiment, r.label
                    )
                })?;
            config
                .validate()
                .with_context(|| format!("preset {} / {scale} / {}", preset.experiment, r.label))?;
            out.push(PlannedRun {
                label: r.label.clone(),
                role: r.role,
                group: r.group.clone(),
                paper: r.paper,
                seed,
                dir: run_dir(runs_root, &config, key),
                config,
            });
        }
    }
    Ok((sp.clone(), out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_expands_to_the_runs_it_promises() {
        let expect = [
            ("sc-vs-pc", 2),
            ("train-size", 10),
            ("depth", 6),
            ("step-size", 6),
            ("lr-range", 1),
        ];
        for (name, n) in expect {
            let p = load(name).unwrap();
            assert_eq!(p.experiment, name);
            for scale in ["paper", "cpu"] {
                let (_, runs) =
                    expand(&p, scale, (Path::new("d"), &d()), 2, "cpu", Path::new("r")).unwrap();
                assert_eq!(runs.len(), 2 * n, "{name}/{scale}");
                // Distinct settings get distinct directories; seeds too.
                let mut dirs: Vec<_> = runs.iter().map(|r| r.dir.clone()).collect();
                dirs.sort();
                dirs.dedup();
                assert_eq!(
                    dirs.len(),
                    runs.len(),
                    "{name}/{scale}: directories collide"
                );
            }
        }
        let e = expand(
            &load("depth").unwrap(),
            "huge",
            (Path::new("d"), &d()),
            1,
            "cpu",
            Path::new("r"),
        );
        assert!(e.unwrap_err().to_string().contains("no scale 'huge'"));
        assert!(load("nope")
            .unwrap_err()
            .to_string()
            .contains("unknown experiment"));
    }

    #[test]
    fn the_paper_scale_is_the_papers_setting() {
        let (_, runs) = expand(
            &load("sc-vs-pc").unwrap(),
            "paper",
            (Path::new("d"), &d()),
            1,
            "cpu",
            Path::new("r"),
        )
        .unwrap();
        let sc = &runs[0].config;
        assert_eq!(
            (sc.batch_size, sc.iterations, sc.model.name.as_str()),
            (1000, Some(10_000), "resnet56")
        );
        assert_eq!(sc.schedule, Schedule::paper_one_cycle(0.1, 3.0));
        assert_eq!(sc.model.bn_momentum, 0.05);
        let pc = &runs[1].config;
        assert_eq!(pc.iterations, Some(80_000));
        assert_eq!(pc.optimizer.weight_decay, 1e-4);
    }

    #[test]
    fn resnet110_pc_lr_warms_up_as_he_et_al() {
        let (_, runs) = expand(
            &load("depth").unwrap(),
            "cpu",
            (Path::new("d"), &d()),
            1,
            "cpu",
            Path::new("r"),
        )
        .unwrap();
        let pc = runs.iter().find(|r| r.label == "pc-lr resnet110").unwrap();
        match &pc.config.schedule {
            Schedule::Piecewise(p) => {
                assert_eq!((p.warmup_iterations, p.warmup_lr), (400, Some(0.01)));
                assert!((pc.config.schedule.at(399, 3200).lr - 0.01).abs() < 1e-12);
                assert!((pc.config.schedule.at(400, 3200).lr - 0.1).abs() < 1e-12);
            }
            s => panic!("{s:?}"),
        }
        // The other depths keep their runs (and run directories) as they were.
        let r56 = runs.iter().find(|r| r.label == "pc-lr resnet56").unwrap();
        assert!(!serde_json::to_string(&r56.config)
            .unwrap()
            .contains("warmup"));
    }

    #[test]
    fn experiments_share_runs_with_the_same_settings() {
        let dirs = |e: &str| -> Vec<PathBuf> {
            expand(
                &load(e).unwrap(),
                "cpu",
                (Path::new("d"), &d()),
                1,
                "cpu",
                Path::new("r"),
            )
            .unwrap()
            .1
            .into_iter()
            .map(|r| r.dir)
            .collect()
        };
        // The ResNet-20 pair at the cpu budget (800 vs 6,400 iterations, all images) is in both
        // train-size and depth, and its one cycle is step-size's 800-iteration cycle.
        let depth = dirs("depth");
        let shared: Vec<_> = dirs("train-size")
            .into_iter()
            .filter(|d| depth.contains(d))
            .collect();
        assert_eq!(shared.len(), 2, "{shared:?}");
        assert!(dirs("step-size").iter().any(|d| shared.contains(d)));
        // sc-vs-pc's cpu pair is the 10-epoch one: the same as train-size stretched by 4.4
        // except for its finer evaluation interval, so it is not shared.
        assert!(dirs("sc-vs-pc").iter().all(|d| !depth.contains(d)));
    }

    #[test]
    fn f32_precision_leaves_run_names_as_they_were() {
        let (_, runs) = expand(
            &load("sc-vs-pc").unwrap(),
            "cpu",
            (Path::new("d"), &d()),
            1,
            "cpu",
            Path::new("r"),
        )
        .unwrap();
        let mut cfg = runs[0].config.clone();
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(!json.contains("precision"), "{json}");
        let f32_dir = run_dir(Path::new("r"), &cfg, &d());
        assert_eq!(f32_dir, runs[0].dir);
        cfg.precision = crate::config::Precision::Bf16;
        assert!(serde_json::to_string(&cfg)
            .unwrap()
            .contains(r#""precision":"bf16""#));
        assert_ne!(run_dir(Path::new("r"), &cfg, &d()), f32_dir);
        // Where the data set lies does not matter; which one it is does.
        let mut moved = runs[0].config.clone();
        moved.data.path = Path::new("/elsewhere").join(&runs[0].config.data.path);
        assert_eq!(run_dir(Path::new("r"), &moved, &d()), f32_dir);
        assert_ne!(
            run_dir(Path::new("r"), &moved, &DataKey::fixed("other@sha256:0")),
            f32_dir
        );
    }

    #[test]
    fn a_run_named_by_its_data_folder_before_identities_is_still_found() {
        let (_, runs) = expand(
            &load("sc-vs-pc").unwrap(),
            "cpu",
            (Path::new("d"), &d()),
            1,
            "cpu",
            Path::new("r"),
        )
        .unwrap();
        let cfg = &runs[0].config;
        let root = tempfile::tempdir().unwrap();
        let key = DataKey {
            key: "cifar10@sha256:0123456789abcdef".into(),
            legacy: vec!["cifar-10-batches-bin".into()],
        };
        let new = run_dir(root.path(), cfg, &key);
        // The older name: the data folder's name where the identity is now.
        let old = root.path().join(run_name(cfg, "cifar-10-batches-bin"));
        assert_ne!(new, old);
        std::fs::create_dir(&old).unwrap();
        assert_eq!(run_dir(root.path(), cfg, &key), old, "the old run resumes");
        // Once a directory of the new name exists, it wins.
        std::fs::create_dir(&new).unwrap();
        assert_eq!(run_dir(root.path(), cfg, &key), new);
        // Without the older name among the key's, the old directory is not taken.
        std::fs::remove_dir(&new).unwrap();
        assert_eq!(run_dir(root.path(), cfg, &DataKey::fixed(&key.key)), new);
    }

    /// The data key of the tests' made-up data path `d`.
    fn d() -> DataKey {
        DataKey::fixed("d")
    }

    #[test]
    fn a_budget_factor_stretches_iterations_milestones_and_evaluation_together() {
        let p = load("train-size").unwrap();
        let (_, runs) =
            expand(&p, "cpu", (Path::new("d"), &d()), 1, "cpu", Path::new("r")).unwrap();
        let mut pc = runs
            .iter()
            .find(|r| r.role == Role::Pc)
            .unwrap()
            .config
            .clone();
        assert_eq!(pc.iterations, Some(6400));
        let before = run_dir(Path::new("r"), &pc, &d());
        stretch(&mut pc, 1.0).unwrap();
        assert_eq!(
            run_dir(Path::new("r"), &pc, &d()),
            before,
            "factor 1 changes nothing"
        );
        stretch(&mut pc, 4.4).unwrap();
        assert_eq!((pc.iterations, pc.eval_every), (Some(28_160), 440));
        match &pc.schedule {
            Schedule::Piecewise(p) => assert_eq!(p.milestones, vec![17_600, 24_640]),
            s => panic!("{s:?}"),
        }
        assert_ne!(run_dir(Path::new("r"), &pc, &d()), before);
        // A warm-up is a position in iterations too.
        if let Schedule::Piecewise(p) = &mut pc.schedule {
            (p.warmup_iterations, p.warmup_lr) = (400, Some(0.01));
        }
        stretch(&mut pc, 2.0).unwrap();
        match &pc.schedule {
            Schedule::Piecewise(p) => assert_eq!(p.warmup_iterations, 800),
            s => panic!("{s:?}"),
        }
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = stretch(&mut pc.clone(), bad).unwrap_err().to_string();
            assert!(e.contains("--budget"), "{e}");
        }
    }
}
