//! `reproduce` end to end at the tiny scale on generated data: runs, sharing, report.

mod common;

use sc_trainer::reproduce::{reproduce, ReproducePlan};

fn plan(exp: &str, data: &std::path::Path, root: &std::path::Path) -> ReproducePlan {
    ReproducePlan {
        experiment: exp.into(),
        scale: "tiny".into(),
        data: data.to_path_buf(),
        seeds: 2,
        budget: 1.0,
        device: "cpu".into(),
        runs_root: root.join("runs"),
        out: root.join("reports").join(exp),
        progress: false,
        dry_run: false,
    }
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
    for v in &report.verdicts {
        assert!(
            ["holds", "does not hold", "inconclusive"].contains(&v.verdict.as_str()),
            "{v:?}"
        );
        assert!(
            v.detail.contains("points") || v.detail.contains("iterations"),
            "{v:?}"
        );
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
    let mut p = plan("lr-range", &data, tmp.path());
    p.seeds = 1;
    let r = reproduce(&p).unwrap().unwrap();
    assert!(
        r.verdicts[0].detail.contains("max LR") || r.verdicts[0].verdict == "inconclusive",
        "{:?}",
        r.verdicts
    );
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
