//! The `cws` binary: parses the command line, runs it, and prints any error
//! chain once on stderr.

use clap::Parser;

fn main() -> std::process::ExitCode {
    cws::blas::init_cpu_threads();
    let cli = cws::commands::Cli::parse();
    match cws::commands::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // A closed pipe (e.g. `cws segment | head`) is not an error to report.
            if err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return std::process::ExitCode::SUCCESS;
            }
            if let Some(exit) = err.downcast_ref::<cws::commands::Exit>() {
                eprintln!("{exit}");
                return std::process::ExitCode::from(exit.code);
            }
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(1)
        }
    }
}
