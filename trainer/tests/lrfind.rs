//! The LR range test end to end on small generated data.

mod common;

use sc_trainer::cli::{LrFindArgs, RangeMode};
use sc_trainer::lrfind;

fn args(data: &std::path::Path, runs: &std::path::Path, mode: RangeMode) -> LrFindArgs {
    LrFindArgs {
        config: None,
        common: sc_trainer::cli::CommonArgs {
            model: Some("resnet8".into()),
            data: Some(data.to_path_buf()),
            val_size: Some(40),
            batch_size: Some(16),
            ..Default::default()
        },
        iterations: 40,
        start_lr: None,
        end_lr: Some(if mode == RangeMode::Linear { 2.0 } else { 1e4 }),
        mode,
        val_subset: 40,
        eval_every: Some(4),
        stop_factor: None,
        momentum: None,
        weight_decay: None,
        pad: Some(1),
        name: None,
        runs: Some(runs.to_path_buf()),
        quiet: true,
    }
}

#[test]
fn linear_range_test_writes_curve_plot_and_suggestions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    std::fs::create_dir(&data).unwrap();
    common::make_idx(&data, 300, 12, 4, 5);
    let plan = args(&data, &tmp.path().join("runs"), RangeMode::Linear)
        .to_plan()
        .unwrap();
    let r = lrfind::run(&plan).unwrap();
    for f in [
        "lr_find.csv",
        "lr_find.json",
        "lr_find.png",
        "metrics.jsonl",
    ] {
        assert!(plan.out_dir.join(f).exists(), "{f}");
    }
    assert_eq!(r.accuracy.len(), 10);
    let max = r
        .paper_max_lr
        .clone()
        .expect("accuracy rises above chance on separable data");
    assert!(max.lr > 0.0 && max.lr <= 2.0);
    assert!(!max.why.is_empty());
    assert!(r.steepest.is_some() && r.valley.is_some());
    let csv = std::fs::read_to_string(plan.out_dir.join("lr_find.csv")).unwrap();
    assert!(csv.starts_with("iter,lr,loss,smoothed_loss,val_acc"));
    assert!(lrfind::describe(&r).contains("because"));
}

#[test]
fn exponential_range_ends_at_divergence_without_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    std::fs::create_dir(&data).unwrap();
    common::make_idx(&data, 300, 12, 4, 6);
    let plan = args(&data, &tmp.path().join("runs"), RangeMode::Exponential)
        .to_plan()
        .unwrap();
    let r = lrfind::run(&plan).unwrap();
    assert!(r.ended.contains("ended early"), "{}", r.ended);
    assert!(r.curve.len() < 40);
}
