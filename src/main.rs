//! The `pipeline` command: one subcommand per stage, each a thin call into the library
//! (`cli`).

use clap::Parser;

mod cli;

fn main() {
    let cli = cli::Cli::parse();
    if let Err(e) = cli.command.run() {
        eprintln!("error: {}", cli::one_line(&e));
        std::process::exit(1);
    }
}
