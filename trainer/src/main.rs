use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use sc_trainer::cli::{Cli, Command, DataCommand};
use sc_trainer::collective::Collective;
use sc_trainer::config::default_runs_dir;
use sc_trainer::run_dir::{read_config, run_dir_for};
use sc_trainer::train::{fit, FitOptions};

fn main() -> ExitCode {
    // candle asks the OS for the core count on every matmul unless this is set. The processes
    // of an MPI job on one machine share its cores.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let local = sc_trainer::collective::launcher_local_size()
            .unwrap_or(1)
            .max(1);
        std::env::set_var("RAYON_NUM_THREADS", (n / local).max(1).to_string());
    }
    // Training frees and re-allocates every activation each step: keep freed memory in the heap.
    sc_models::custom_ops::keep_freed_memory();
    let cli = Cli::parse();
    // A mistyped SC_KERNELS_ISA is refused before any work (the kernels would ignore it).
    if let Err(e) = sc_kernels::micro::env_cap() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    // One of `mpirun -np N`'s processes (feature `mpi`), or the single process.
    let coll = match sc_trainer::collective::from_launcher() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match run(cli, coll.clone()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if coll.size() > 1 && sc_trainer::parallel::is_all_ranks(&e) => {
            // Every rank ends with this error: rank 0 says it, and the job ends normally.
            if coll.rank() == 0 {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
        Err(e) if coll.size() > 1 => {
            // The other ranks may be waiting in a collective: end the whole job now.
            eprintln!("error: rank {} of {}: {e:#}", coll.rank(), coll.size());
            coll.abort(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, coll: Arc<dyn Collective>) -> anyhow::Result<()> {
    if coll.size() > 1 && !matches!(cli.command, Command::Fit(_)) {
        anyhow::bail!(
            "only `fit` trains across MPI ranks; run other commands as one process (grids of \
             runs spread over a cluster with `reproduce --shard I/N`, see docs/CLUSTER.md)"
        );
    }
    match cli.command {
        Command::Fit(args) => {
            let opts = FitOptions {
                resume: args.resume.is_some(),
                progress: !args.quiet,
                stop_after: args.stop_after,
                collective: coll.clone(),
                ..FitOptions::default()
            };
            let (cfg, dir) = match &args.resume {
                Some(dir) => (read_config(dir)?, dir.clone()),
                None => {
                    let cfg = args.to_config()?;
                    let runs = args.runs.clone().unwrap_or_else(default_runs_dir);
                    let dir = run_dir_for(&runs, args.name.as_deref(), &cfg);
                    (cfg, dir)
                }
            };
            let s = fit(cfg, &dir, &opts)?;
            if coll.rank() != 0 {
                return Ok(()); // rank 0 reports for the job
            }
            let pct = |v: Option<f64>| v.map_or("-".to_string(), |a| format!("{:.2}%", a * 100.0));
            println!("run:              {}", dir.display());
            println!("iterations:       {}", s.iterations);
            println!(
                "val accuracy:     {} (best {})",
                pct(s.final_val_acc),
                pct(s.best_val_acc)
            );
            if s.test_acc.is_some() {
                println!("test accuracy:    {}", pct(s.test_acc));
            }
            println!(
                "train time:       {:.1} s ({:.0} images/s)",
                s.train_seconds, s.images_per_second
            );
            println!("model:            {}", dir.join("model.onnx").display());
            Ok(())
        }
        Command::LrFind(args) => {
            let plan = args.to_plan()?;
            let report = sc_trainer::lrfind::run(&plan)?;
            print!("{}", sc_trainer::lrfind::describe(&report));
            println!("curve:  {}", plan.out_dir.join("lr_find.csv").display());
            println!("plot:   {}", plan.out_dir.join("lr_find.png").display());
            Ok(())
        }
        Command::Reproduce(args) => {
            let share = args.cluster.share()?;
            let plans = args.plans()?;
            if let Some(p) = plans.first() {
                eprintln!(
                    "data: {} ({}; runs are named by it, not by the path)",
                    p.data.display(),
                    p.data_key.key
                );
            }
            for plan in plans {
                if let Some(report) = sc_trainer::reproduce::reproduce_share(&plan, &share)? {
                    println!(
                        "{} ({} scale): {}",
                        report.title,
                        report.scale,
                        plan.out.join("report.md").display()
                    );
                    for v in &report.verdicts {
                        println!("  claim {}: {} — {}", v.claim, v.verdict, v.detail);
                    }
                }
            }
            Ok(())
        }
        Command::DeviceCheck {
            device,
            model,
            batch_size,
            tolerance,
        } => {
            let r = sc_trainer::devcheck::check(&model, &device, batch_size, 0, tolerance)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            if !r.ok {
                anyhow::bail!(
                    "{device} disagrees with the CPU beyond {tolerance}: logits {:.2e}, gradients {:.2e} ({})",
                    r.logits_rel_diff,
                    r.grad_rel_diff,
                    r.worst_grad
                );
            }
            Ok(())
        }
        Command::Data(DataCommand::Holdout { run_dir, data, out }) => {
            let h = sc_trainer::data::write_holdout(&run_dir, data.as_deref(), &out)?;
            println!(
                "wrote {} validation images of {} ({} classes) to {}",
                h.images,
                run_dir.display(),
                h.classes,
                h.files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" and ")
            );
            println!("check:  sc-runtime eval MODEL {}", out.display());
            Ok(())
        }
        Command::Data(DataCommand::Dir) => {
            let root = sc_data::named::data_root()?;
            println!("data home: {}", root.display());
            if std::env::var_os(sc_data::named::DATA_DIR_ENV).is_none() {
                println!("           (the platform's data directory; SC_DATA_DIR moves it)");
            }
            for k in &sc_data::named::KNOWN {
                let dir = root.join(k.name);
                let state = if dir.exists() {
                    format!("{}", dir.display())
                } else {
                    format!("not fetched (sc-trainer data fetch {})", k.name)
                };
                println!("  {:<14} {state}", k.name);
            }
            Ok(())
        }
        Command::Data(cmd) => {
            let plan = cmd.to_plan()?;
            for p in sc_trainer::fetch::fetch(&plan)? {
                println!("verified: {}", p.display());
            }
            let home = sc_data::named::data_root().ok();
            let by_name = match &cmd {
                DataCommand::Fetch { set, .. }
                    if home.map(|h| h.join(set.name())) == Some(plan.dir.clone()) =>
                {
                    Some(set.name())
                }
                _ => None,
            };
            match by_name {
                Some(n) => println!(
                    "ready:    sc-trainer fit --data {n}   /   sc-runtime eval MODEL {n}-test"
                ),
                None => println!(
                    "ready:    sc-trainer fit --data {0}   /   sc-runtime eval MODEL {0}",
                    plan.dir.display()
                ),
            }
            Ok(())
        }
        Command::Export { run_dir, out } => {
            let p = sc_trainer::export::export_run(&run_dir, out)?;
            println!("{}", p.display());
            Ok(())
        }
    }
}
