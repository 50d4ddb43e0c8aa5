//! `sc-runtime`: evaluate, predict with, benchmark and inspect ONNX image classifiers.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    // A mistyped SC_RUNTIME_ENGINE or SC_KERNELS_ISA is refused before any work.
    if let Err(e) = sc_runtime::check_environment() {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain, skipping a cause whose text its parent already shows.
            let mut msg = format!("error: {e}");
            let mut last = e.to_string();
            for cause in e.chain().skip(1) {
                let text = cause.to_string();
                if !last.contains(&text) {
                    msg.push_str(&format!("\n  caused by: {text}"));
                }
                last = text;
            }
            eprintln!("{msg}");
            std::process::ExitCode::FAILURE
        }
    }
}
