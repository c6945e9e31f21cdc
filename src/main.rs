//! The `cairn` binary: parse the command line, set up logging and signals, dispatch into the
//! library ([`cairn::cli`]), and print an error chain on failure.

use std::process::ExitCode;

use clap::Parser;

use cairn::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    cairn::base::logging::init(cli.verbose);
    if let Err(e) = cairn::base::interrupt::install() {
        eprintln!("error: cannot catch signals: {e:#}");
        return ExitCode::FAILURE;
    }
    match cli::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        // `cairn … | head`: the reader has what it wanted.
        Err(e) if cli::is_closed_stdout(&e) => ExitCode::SUCCESS,
        Err(e) => {
            if cli.verbose > 0 {
                // The whole chain, with a backtrace when RUST_BACKTRACE=1.
                eprintln!("{e:?}");
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
