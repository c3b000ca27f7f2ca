//! The `hongbao` binary: one command with subcommands.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "hongbao", version, about = "Red-packet server for a million connections, and its load tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive load at a server: connect users, log in, shake at a fixed rate.
    Flood(hongbao::flood::FloodArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Flood(args) => hongbao::flood::run(&args),
    }
}
