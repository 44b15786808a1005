//! herald-load: a load generator for herald, on mio with its own framing so it shares none of the server's costs.

mod fanout;
mod idle;
mod net;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "herald-load", about = "Load generator for herald")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Hold idle WebSocket connections and report the server's resident
    /// memory per connection (the slope of RSS over connection count).
    Idle(idle::IdleArgs),
    /// Subscribers of one channel and a publisher at a fixed rate through
    /// the server API: deliveries, order, and the server's CPU per delivery.
    Fanout(fanout::FanoutArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.mode {
        Mode::Idle(args) => idle::run(&args),
        Mode::Fanout(args) => fanout::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("herald-load: {error}");
            ExitCode::FAILURE
        }
    }
}
