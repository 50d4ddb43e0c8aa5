//! `reproduce` end to end at the tiny scale on generated data: runs, sharing, report.

mod common;

use sc_trainer::reproduce::{reproduce, DataKey, ReproducePlan, Role};

/// The verdict of "one cycle > PC-LR" for a mean gap and the standard error of the difference
/// (two or more seeds each): beyond two standard errors either way, else inconclusive.
fn expected_verdict(gap: f64, se: f64) -> &'static str {
    if gap > 2.0 * se {
        "holds"
    } else if gap < -2.0 * se {
        "does not hold"
    } else {
        "inconclusive"
    }
}

fn plan(exp: &str, data: &std::path::Path, root: &std::path::Path) -> ReproducePlan {
    ReproducePlan {
        experiment: exp.into(),
        scale: "tiny".into(),
        data: data.to_path_buf(),
        data_key: DataKey::of(data).unwrap(),
        seeds: 2,
        budget: 1.0,
        device: "cpu".into(),
        runs_root: root.join("runs"),
        out: root.join("reports").join(exp),
        progress: false,
        dry_run: false,
        zoo: None,
        zoo_force: false,
    }
}

/// When each run's summary was last written (a run trained again would rewrite it).
fn summary_stamps(dirs: &[std::path::PathBuf]) -> Vec<std::time::SystemTime> {
    dirs.iter()
        .map(|d| {
            std::fs::metadata(d.join("summary.json"))
                .unwrap()
                .modified()
                .unwrap()
        })
        .collect()
}

/// A scratch directory with 240 generated 12x12 images of 4 classes in `d/`.
fn tiny_data(seed: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    std::fs::create_dir(&data).unwrap();
    common::make_idx(&data, 240, 12, 4, seed);
    (tmp, data)
}

#[test]
fn tiny_sc_vs_pc_writes_the_report_and_does_not_redo_runs() {
    let (tmp, data) = tiny_data(9);
    let p = plan("sc-vs-pc", &data, tmp.path());
    let report = reproduce(&p).unwrap().unwrap();
    assert_eq!(report.rows.len(), 2);
    assert_eq!(report.rows[0].val_acc.as_ref().unwrap().n, 2);
    assert_eq!(report.verdicts.len(), 2);
    // Claim 1: one cycle's accuracy over PC-LR's, decided by two standard errors of the
    // difference (both have 2 seeds), recomputed here from the rows.
    let acc = |role: Role| {
        let r = report.rows.iter().find(|r| r.role == role).unwrap();
        r.val_acc.clone().unwrap()
    };
    let (sc, pc) = (acc(Role::Sc), acc(Role::Pc));
    let se = (sc.std.powi(2) / sc.n as f64 + pc.std.powi(2) / pc.n as f64).sqrt();
    let gap = sc.mean - pc.mean;
    let want = expected_verdict(gap, se);
    assert_eq!(report.verdicts[0].verdict, want, "{:?}", report.verdicts[0]);
    assert!(
        report.verdicts[0]
            .detail
            .contains(&format!("margin {:+.2} points", gap * 100.0)),
        "{:?}",
        report.verdicts[0]
    );
    // Claim 2: at least 5x fewer iterations to PC-LR's final accuracy holds, anything else does
    // not, as the detail's own figure says.
    let c2 = &report.verdicts[1];
    if c2.detail.contains("never reached") {
        assert_eq!(c2.verdict, "does not hold", "{c2:?}");
    } else {
        let speedup: f64 = (c2.detail.split("x fewer").next())
            .and_then(|head| head.rsplit(' ').next())
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("no speed-up in {c2:?}"));
        // The text rounds to 0.1x: 5.0 may lie on either side of the criterion.
        if speedup != 5.0 {
            let want = if speedup > 5.0 {
                "holds"
            } else {
                "does not hold"
            };
            assert_eq!(c2.verdict, want, "{c2:?}");
        }
    }
    // Claim 2 also states PC-LR's accuracy at one cycle's budget (evaluated at iteration 10).
    assert!(
        report.verdicts[1]
            .detail
            .contains("at one cycle's budget of 10 iterations PC-LR had"),
        "{:?}",
        report.verdicts[1]
    );
    let md = std::fs::read_to_string(p.out.join("report.md")).unwrap();
    assert!(
        md.contains("| one-cycle |") && md.contains("92.4") && md.contains("Claim 1"),
        "{md}"
    );
    assert!(p.out.join("report.json").exists());
    assert!(p.out.join(&report.plots[0]).exists());
    // A second call finds every run finished and retrains nothing.
    let stamp = |d: &str| {
        std::fs::metadata(std::path::Path::new(d).join("checkpoint.safetensors"))
            .unwrap()
            .modified()
            .unwrap()
    };
    let before: Vec<_> = report
        .rows
        .iter()
        .flat_map(|r| r.runs.iter().map(|d| stamp(d)))
        .collect();
    let again = reproduce(&p).unwrap().unwrap();
    let after: Vec<_> = again
        .rows
        .iter()
        .flat_map(|r| r.runs.iter().map(|d| stamp(d)))
        .collect();
    assert_eq!(before, after);
}

#[test]
fn tiny_step_size_and_lr_range() {
    let (tmp, data) = tiny_data(10);
    let mut p = plan("step-size", &data, tmp.path());
    p.seeds = 1;
    let r = reproduce(&p).unwrap().unwrap();
    assert_eq!(r.rows.len(), 2);
    assert!(r.verdicts[0].detail.contains("best"), "{:?}", r.verdicts);
    // Two cycle lengths: the shorter one best does not hold, the longer one best is
    // inconclusive (the range holds no optimum inside it).
    let mean = |i: usize| r.rows[i].val_acc.as_ref().unwrap().mean;
    let (short, long) = if r.rows[0].iterations < r.rows[1].iterations {
        (0, 1)
    } else {
        (1, 0)
    };
    if mean(short) != mean(long) {
        let want = if mean(short) > mean(long) {
            "does not hold"
        } else {
            "inconclusive"
        };
        assert_eq!(r.verdicts[0].verdict, want, "{:?}", r.verdicts);
    }
    let mut p = plan("lr-range", &data, tmp.path());
    p.seeds = 1;
    let r = reproduce(&p).unwrap().unwrap();
    // A suggested max LR is "measured"; none (accuracy never above chance) is inconclusive.
    let want = if r.verdicts[0].detail.contains("suggested max LR") {
        "measured"
    } else {
        assert!(
            r.verdicts[0].detail.contains("never rose above chance"),
            "{:?}",
            r.verdicts
        );
        "inconclusive"
    };
    assert_eq!(r.verdicts[0].verdict, want, "{:?}", r.verdicts);
}

#[test]
fn a_budget_factor_gives_longer_runs_of_their_own() {
    let (tmp, data) = tiny_data(11);
    let mut p = plan("sc-vs-pc", &data, tmp.path());
    p.seeds = 1;
    p.budget = 2.0;
    let r = reproduce(&p).unwrap().unwrap();
    assert!(r.budget.contains("stretched 2x"), "{}", r.budget);
    let dirs: Vec<&str> = r
        .rows
        .iter()
        .flat_map(|x| x.runs.iter())
        .map(|d| d.as_str())
        .collect();
    assert!(
        dirs.iter().any(|d| d.contains("-one-cycle-20it-"))
            && dirs.iter().any(|d| d.contains("-piecewise-60it-")),
        "{dirs:?}"
    );
}

#[test]
fn tiny_budget_tunes_weight_decay_then_trains_the_grid_and_reads_the_speed_up_off_the_curves() {
    let (tmp, data) = tiny_data(12);
    let mut p = plan("budget", &data, tmp.path());
    p.seeds = 1;
    p.zoo = Some(tmp.path().join("zoo"));
    // Before anything ran, the listing shows the tuning runs only (and writes no zoo).
    p.dry_run = true;
    assert!(reproduce(&p).unwrap().is_none());
    assert!(!p.zoo.as_ref().unwrap().exists());
    p.dry_run = false;
    // A zoo already there, made from these runs, with a model the new picks will not list: it
    // is never deleted (a committed file stays whatever the grid picks).
    let zoo = p.zoo.as_ref().unwrap();
    std::fs::create_dir(zoo).unwrap();
    let old_run = p.runs_root.join("an-earlier-run").display().to_string();
    std::fs::write(
        zoo.join("zoo.json"),
        serde_json::json!([{"file": "committed.onnx", "run": old_run}]).to_string(),
    )
    .unwrap();
    std::fs::write(zoo.join("committed.onnx"), b"a shipped model").unwrap();
    // The same zoo from another runs directory is refused before anything trains.
    let mut other = p.clone();
    other.runs_root = tmp.path().join("other-runs");
    let e = format!("{:#}", reproduce(&other).unwrap_err());
    assert!(e.contains("--force") && e.contains("committed.onnx"), "{e}");
    assert!(!other.runs_root.exists(), "nothing trained");
    let r = reproduce(&p).unwrap().unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.out.join("report.json")).unwrap()).unwrap();
    // 1cycle's max LR was chosen first (two candidates at the first weight decay, and x2 steps
    // past an edge while the best sat there), then every schedule got a weight decay, from the
    // candidates, by validation accuracy.
    let lr = json["lr_tuning"].as_array().unwrap();
    assert_eq!(lr.len(), 1, "{lr:?}");
    assert_eq!(lr[0]["schedule"], "1cycle");
    let tried = lr[0]["tried"].as_array().unwrap();
    let values: Vec<f64> = tried.iter().map(|t| t[0].as_f64().unwrap()).collect();
    let steps = sc_trainer::reproduce::budget::MAX_LR_STEPS;
    assert!((2..=2 + steps).contains(&values.len()), "{values:?}");
    assert_eq!(values[..2], [0.3, 0.15]);
    for v in &values[2..] {
        let r = (v / 0.15).log2();
        assert!(
            (r - r.round()).abs() < 1e-9 && r.round() != 0.0 && r.round() != 1.0,
            "{v}"
        );
    }
    let max_lr = lr[0]["chosen"].as_f64().unwrap();
    let acc = |t: &serde_json::Value| t[1].as_f64().unwrap_or(f64::NEG_INFINITY);
    let best = tried.iter().map(acc).fold(f64::NEG_INFINITY, f64::max);
    let first_best = tried.iter().find(|t| acc(t) == best).unwrap();
    assert_eq!(max_lr, first_best[0].as_f64().unwrap(), "{tried:?}");
    if values.len() < 2 + steps {
        // The search stopped early: its choice has a tried value on each side.
        assert!(values.iter().any(|&v| v < max_lr) && values.iter().any(|&v| v > max_lr));
    }
    let tuning = json["tuning"].as_array().unwrap();
    assert_eq!(tuning.len(), 2);
    for t in tuning {
        let chosen = t["chosen"].as_f64().unwrap();
        let tried = t["tried"].as_array().unwrap();
        assert_eq!(tried.len(), 2);
        let best = tried
            .iter()
            .max_by(|a, b| a[1].as_f64().unwrap().total_cmp(&b[1].as_f64().unwrap()))
            .unwrap();
        let best_acc = best[1].as_f64().unwrap();
        let first_best = tried
            .iter()
            .find(|x| x[1].as_f64().unwrap() == best_acc)
            .unwrap();
        assert_eq!(chosen, first_best[0].as_f64().unwrap(), "{t}");
    }
    // The grid: 1cycle at 1 (2 seeds: the headline) and 2 epochs, PC-LR at 1, 2 (2 seeds) and 4.
    let points = json["points"].as_array().unwrap();
    let n = |s: &str, e: f64| {
        points
            .iter()
            .find(|x| x["schedule"] == s && x["epochs"].as_f64() == Some(e))
            .map(|x| x["val_acc"]["n"].as_u64().unwrap())
    };
    assert_eq!(
        (n("1cycle", 1.0), n("1cycle", 2.0)),
        (Some(2), Some(1)),
        "{points:?}"
    );
    assert_eq!(
        (n("pc-lr", 1.0), n("pc-lr", 2.0), n("pc-lr", 4.0)),
        (Some(1), Some(2), Some(1))
    );
    // Runs in epochs: 12 iterations per epoch of the 200 training images at batch 16.
    let four = points
        .iter()
        .find(|x| x["schedule"] == "pc-lr" && x["epochs"].as_f64() == Some(4.0))
        .unwrap();
    let dir = std::path::PathBuf::from(four["runs"][0].as_str().unwrap());
    assert!(
        dir.display().to_string().contains("-piecewise-4ep-"),
        "{dir:?}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["iterations"], 48);
    let speedups = json["speedups"].as_array().unwrap();
    assert_eq!(speedups.len(), 2, "one per 1cycle budget");
    for s in speedups {
        assert!(
            ["=", "<", ">"].contains(&s["relation"].as_str().unwrap()),
            "{s}"
        );
        let f = s["factor"].as_f64().unwrap();
        assert!(
            (f - s["pc_epochs"].as_f64().unwrap() / s["epochs"].as_f64().unwrap()).abs() < 1e-9
        );
    }
    // The headline (1cycle at 1 epoch against PC-LR at 2, 2 seeds each), decided by two
    // standard errors, recomputed here from the report's points.
    let stat = |s: &str, e: f64| {
        let p = points
            .iter()
            .find(|x| x["schedule"] == s && x["epochs"].as_f64() == Some(e))
            .unwrap();
        let v = &p["val_acc"];
        (
            v["mean"].as_f64().unwrap(),
            v["std"].as_f64().unwrap(),
            v["n"].as_f64().unwrap(),
        )
    };
    let ((ma, sa, na), (mb, sb, nb)) = (stat("1cycle", 1.0), stat("pc-lr", 2.0));
    let want = expected_verdict(ma - mb, (sa * sa / na + sb * sb / nb).sqrt());
    let headline = (r.verdicts.iter())
        .find(|v| v.claim.starts_with("2 (headline)"))
        .unwrap();
    assert_eq!(headline.verdict, want, "{headline:?}");
    let claims: Vec<&str> = r.verdicts.iter().map(|v| v.claim.as_str()).collect();
    assert!(
        claims.iter().any(|c| c.starts_with("1: 1cycle")),
        "{claims:?}"
    );
    assert!(claims.iter().any(|c| c.starts_with("target")), "{claims:?}");
    assert!(
        claims.iter().any(|c| c.starts_with("2 (headline)")),
        "{claims:?}"
    );
    let md = std::fs::read_to_string(p.out.join("report.md")).unwrap();
    for part in [
        "Weight decay, chosen",
        "Accuracy against budget",
        "Speed-up",
        "Verdicts",
    ] {
        assert!(md.contains(part), "{part}: {md}");
    }
    assert!(p.out.join("accuracy-vs-epochs.png").exists());

    // The zoo: the best one-cycle run at the headline's 1 epoch or less, and PC-LR at its 2
    // epochs with the same seed, copied byte for byte with their card.
    let zoo = p.zoo.as_ref().unwrap();
    let models: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(zoo.join("zoo.json")).unwrap()).unwrap();
    let models = models.as_array().unwrap();
    assert_eq!(models.len(), 2, "{models:?}");
    let (sc, pc) = (&models[0], &models[1]);
    assert_eq!(sc["schedule"], "1cycle");
    assert_eq!(sc["epochs"].as_f64(), Some(1.0));
    assert_eq!(
        (pc["schedule"].as_str(), pc["epochs"].as_f64()),
        (Some("pc-lr"), Some(2.0))
    );
    assert_eq!(pc["seed"], sc["seed"]);
    let one_cycle_runs: Vec<f64> = points
        .iter()
        .filter(|x| x["schedule"] == "1cycle" && x["epochs"].as_f64() == Some(1.0))
        .flat_map(|x| x["runs"].as_array().unwrap().clone())
        .map(|d| {
            let s: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(
                    std::path::Path::new(d.as_str().unwrap()).join("summary.json"),
                )
                .unwrap(),
            )
            .unwrap();
            s["final_val_acc"].as_f64().unwrap()
        })
        .collect();
    let best = one_cycle_runs.iter().cloned().fold(f64::MIN, f64::max);
    assert_eq!(sc["val_acc"].as_f64(), Some(best), "{one_cycle_runs:?}");
    let mut files: Vec<String> = std::fs::read_dir(zoo)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "README.md",
            "committed.onnx",
            "resnet8-1cycle-1ep.onnx",
            "resnet8-pc-lr-2ep.onnx",
            "zoo.json"
        ]
    );
    assert_eq!(
        std::fs::read(zoo.join("committed.onnx")).unwrap(),
        b"a shipped model"
    );
    let card = std::fs::read_to_string(zoo.join("README.md")).unwrap();
    for m in models {
        let file = m["file"].as_str().unwrap();
        let run = std::path::Path::new(m["run"].as_str().unwrap());
        assert_eq!(
            std::fs::read(zoo.join(file)).unwrap(),
            std::fs::read(run.join("model.onnx")).unwrap()
        );
        assert!(card.contains(file), "{card}");
        let acc = format!("{:.2} %", 100.0 * m["val_acc"].as_f64().unwrap());
        assert!(card.contains(&acc), "{acc}: {card}");
        // The machine it trained on is recorded in the run and named on the card.
        let machines = m["machines"].as_array().unwrap();
        assert_eq!(machines.len(), 1, "{machines:?}");
        assert!(card.contains(machines[0].as_str().unwrap()), "{card}");
    }
    // How to check the first model's validation figure, and to train them again in the same
    // run directories (named by the data's content: made-up data is named by its path).
    let first_run = models[0]["run"].as_str().unwrap();
    assert!(
        card.contains(&format!("sc-trainer data holdout {first_run} ")),
        "{card}"
    );
    assert!(
        card.contains(&format!("--runs {}", p.runs_root.display())),
        "{card}"
    );
    assert!(
        card.contains(&format!("--data {} ", p.data.display())),
        "{card}"
    );
    // The data by identity, never by a path of this machine.
    assert_eq!(sc["data"].as_str(), Some(p.data_key.key.as_str()));
    assert!(sc["data"].as_str().unwrap().starts_with("data@sha256:"));
}

#[test]
fn the_zoo_is_for_the_budget_experiment() {
    let (tmp, data) = tiny_data(12);
    let mut p = plan("sc-vs-pc", &data, tmp.path());
    p.zoo = Some(tmp.path().join("zoo"));
    let e = reproduce(&p).unwrap_err().to_string();
    assert!(e.contains("--zoo is for the budget experiment"), "{e}");
}

/// The recipe experiment at the tiny scale: the pieces, then the stack (the pieces that gained),
/// its max-LR and weight-decay searches, the final runs, a report after each; a second call
/// trains nothing more.
#[test]
fn tiny_recipe_runs_every_stage_and_reports() {
    use sc_trainer::reproduce::recipe;
    let (tmp, data) = tiny_data(5);
    let p = plan("recipe", &data, tmp.path());
    assert!(reproduce(&p).unwrap().is_none());
    let scale = recipe::load().unwrap().scale["tiny"].clone();
    let runs = recipe::plan_runs(&scale, &p).unwrap();
    // Every stage was planned, and every run ended.
    for stage in [
        recipe::Stage::Piece,
        recipe::Stage::MaxLr,
        recipe::Stage::WeightDecay,
        recipe::Stage::Final,
    ] {
        assert!(runs.iter().any(|r| r.stage == stage), "{stage:?}");
    }
    assert!(
        runs.iter()
            .all(|r| recipe::accuracy(&r.run.dir).is_some()
                || r.run.dir.join("summary.json").exists())
    );
    // Finished runs measured their flip-TTA accuracy.
    assert!(runs
        .iter()
        .filter_map(|r| recipe::accuracy(&r.run.dir))
        .all(|(_, flip)| flip.is_some_and(|f| (0.0..=1.0).contains(&f))));
    // The stack is the pieces with a positive mean gain: its runs' configs say so.
    let gains = recipe::gains(&scale, &runs).unwrap();
    let stack = runs
        .iter()
        .find(|r| r.stage == recipe::Stage::Final)
        .unwrap();
    let smoothing = gains[0].1 > 0.0;
    let zero_gamma = gains[1].1 > 0.0;
    assert_eq!(
        stack.run.config.label_smoothing > 0.0,
        smoothing,
        "{gains:?}"
    );
    assert_eq!(
        stack.run.config.model.zero_init_residual, zero_gamma,
        "{gains:?}"
    );
    // The final runs: 2 seeds at 1 epoch, 2 at the short budget of 2.
    let finals: Vec<_> = runs
        .iter()
        .filter(|r| r.stage == recipe::Stage::Final)
        .collect();
    assert_eq!(finals.len(), 4);
    assert_eq!(finals.iter().filter(|r| r.epochs == 2.0).count(), 2);
    let md = std::fs::read_to_string(p.out.join("report.md")).unwrap();
    for want in [
        "label smoothing 0.1",
        "zero-init residual gamma",
        "The final stack",
        "## Target",
    ] {
        assert!(md.contains(want), "report lacks {want}:\n{md}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.out.join("report.json")).unwrap()).unwrap();
    assert!(json
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["unfinished"] == 0));
    // Again: nothing left to train, the same runs.
    let dirs: Vec<_> = runs.iter().map(|r| r.run.dir.clone()).collect();
    let before = summary_stamps(&dirs);
    assert!(reproduce(&p).unwrap().is_none());
    assert_eq!(before, summary_stamps(&dirs));
}

/// The recipe's stages depend on each other: it refuses to be sharded.
#[test]
fn the_recipe_refuses_shards() {
    use sc_trainer::reproduce::{reproduce_share, shard::Share};
    let (tmp, data) = tiny_data(6);
    let p = plan("recipe", &data, tmp.path());
    let share = Share::Shard { index: 1, count: 2 };
    let err = reproduce_share(&p, &share).unwrap_err();
    assert!(
        format!("{err:#}").contains("depend on each other"),
        "{err:#}"
    );
}

/// The claims experiment at the tiny scale: every cell searches its own LR (bracketed) and weight
/// decay on seed 0, then trains its other seeds; the depth cells take their arm's first choice;
/// the step arm warms up linearly above the LR batch; the report has every gap and finding; a
/// second call trains nothing more.
#[test]
fn tiny_claims_chooses_per_cell_then_reports_the_gaps() {
    use sc_trainer::reproduce::claims;
    use sc_trainer::schedule::{Schedule, WarmupShape};
    let (tmp, data) = tiny_data(7);
    let p = plan("claims", &data, tmp.path());
    assert!(reproduce(&p).unwrap().is_none());
    let scale = claims::load().unwrap().scale["tiny"].clone();
    let cells = claims::cells(&scale).unwrap();
    assert_eq!(cells.len(), 2 * 2 * 2 + 2);
    let runs = claims::plan_runs(&scale, &p).unwrap();
    assert!(runs.iter().all(|r| r.run.dir.join("summary.json").exists()));
    let acc = |r: &claims::ClaimsRun| claims::accuracy(&r.run.dir);
    for (k, cell) in cells.iter().enumerate() {
        let mine: Vec<_> = runs.iter().filter(|r| r.cell == k).collect();
        assert!(!mine.is_empty(), "cell {k} {cell:?}");
        let last = mine.last().unwrap();
        for r in &mine {
            let c = &r.run.config;
            assert_eq!(c.batch_size, cell.batch);
            assert_eq!(c.model.name, cell.model);
            let want_size = (cell.images != scale.all_images).then_some(cell.images);
            assert_eq!(c.data.train_size, want_size, "cell {k}");
            match &c.schedule {
                Schedule::Piecewise(s) if cell.batch > scale.lr_batch => {
                    assert_eq!(s.warmup_shape, WarmupShape::Linear);
                    let start = s.warmup_lr.unwrap();
                    assert!(
                        (start * cell.batch as f64 / scale.lr_batch as f64 - s.lr).abs() < 1e-12
                    );
                    assert!(s.warmup_iterations > 0);
                }
                Schedule::Piecewise(s) => assert_eq!(s.warmup_iterations, 0),
                Schedule::OneCycle(s) => assert_eq!(s.max_lr, r.lr),
                other => panic!("{other:?}"),
            }
        }
        if cell.depth {
            // The arm's choice at its first cell.
            let first = runs
                .iter()
                .filter(|r| r.cell == cell.arm && r.stage == claims::Stage::Seeds)
                .map(|r| (r.lr, r.weight_decay))
                .next()
                .unwrap();
            assert!(mine.iter().all(|r| (r.lr, r.weight_decay) == first));
            assert_eq!(mine.len() as u64, scale.depth.seeds);
            continue;
        }
        // The chosen LR is the best of the search, which has a worse neighbour on each side
        // unless it stepped as far as it may.
        let lr_runs: Vec<_> = mine
            .iter()
            .filter(|r| r.stage == claims::Stage::Lr)
            .collect();
        let best = lr_runs
            .iter()
            .filter(|r| acc(r).is_some())
            .fold(None::<&&&claims::ClaimsRun>, |b, r| match b {
                Some(x) if acc(x) >= acc(r) => Some(x),
                _ => Some(r),
            })
            .unwrap();
        assert_eq!(
            last.lr,
            best.lr,
            "cell {k}: {:?}",
            lr_runs.iter().map(|r| (r.lr, acc(r))).collect::<Vec<_>>()
        );
        let base = scale.arms[cell.arm].lrs.len();
        assert!(lr_runs.len() >= base && lr_runs.len() <= base + 3);
        // The other seeds train the chosen config.
        let seeds: Vec<_> = mine
            .iter()
            .filter(|r| r.stage == claims::Stage::Seeds)
            .collect();
        assert_eq!(seeds.len() as u64, scale.seeds - 1);
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.out.join("report.json")).unwrap()).unwrap();
    assert!(json["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| !g["gap"].is_null()));
    assert!(json["cells"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["runs_left"] == 0));
    let findings = json["findings"].as_array().unwrap();
    assert!(findings.len() >= 6);
    assert!(
        findings.iter().all(|f| f["verdict"] != "not measured yet"),
        "{findings:?}"
    );
    let md = std::fs::read_to_string(p.out.join("report.md")).unwrap();
    for want in [
        "claim 3 at batch 16",
        "claim 4, resnet14",
        "The paper's numbers",
        "92.4",
        "accuracy-vs-train-size.png",
    ] {
        assert!(md.contains(want), "report lacks {want}:\n{md}");
    }
    assert!(p.out.join("accuracy-vs-train-size.png").exists());
    // Again: nothing left to train.
    let dirs: Vec<_> = runs.iter().map(|r| r.run.dir.clone()).collect();
    let before = summary_stamps(&dirs);
    assert!(reproduce(&p).unwrap().is_none());
    assert_eq!(before, summary_stamps(&dirs));
}

/// Claims shards by cell: two workers, one after the other, train disjoint cells and together
/// finish the grid (with two shards, each arm's depth cell is in the shard of its first cell).
#[test]
fn claims_shards_by_cell() {
    use sc_trainer::reproduce::{claims, reproduce_share, shard::Share};
    let (tmp, data) = tiny_data(8);
    let p = plan("claims", &data, tmp.path());
    let scale = claims::load().unwrap().scale["tiny"].clone();
    let cells = claims::cells(&scale).unwrap();
    reproduce_share(&p, &Share::Shard { index: 1, count: 2 }).unwrap();
    let runs = claims::plan_runs(&scale, &p).unwrap();
    let ended = |r: &claims::ClaimsRun| r.run.dir.join("summary.json").exists();
    for r in &runs {
        assert_eq!(
            ended(r),
            r.cell % 2 == 1,
            "cell {} {:?}",
            r.cell,
            cells[r.cell]
        );
    }
    // The report so far: the step arm's cells only.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.out.join("report.json")).unwrap()).unwrap();
    assert!(json["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| g["gap"].is_null()));
    reproduce_share(&p, &Share::Shard { index: 0, count: 2 }).unwrap();
    let runs = claims::plan_runs(&scale, &p).unwrap();
    assert!(runs.iter().all(ended));
    assert!(runs.iter().any(|r| r.cell == cells.len() - 2));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.out.join("report.json")).unwrap()).unwrap();
    assert!(json["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| !g["gap"].is_null()));
}
