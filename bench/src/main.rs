//! herald-load: a load generator for herald and servers like it, on mio with its own framing so it shares none of their costs.

mod clock;
mod connect;
mod echo;
mod fanout;
mod hist;
mod idle;
mod net;
mod parts;
mod procfs;
mod stream;
mod window;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "herald-load", about = "Load generator for herald")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    /// CA certificate (PEM) that wss:// servers' certificates chain to.
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Echo round trips: closed loop with K in flight, or open loop at a rate.
    Echo(echo::EchoArgs),
    /// Subscribers of one channel, a publisher at a fixed rate through the
    /// server API: deliveries, loss, order, latency, CPU per delivery.
    Fanout(fanout::FanoutArgs),
    /// Upgrades per second with C attempts in flight, handshake latency.
    Connect(connect::ConnectArgs),
    /// Idle (optionally subscribed) connections: server RSS per connection.
    Idle(idle::IdleArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(ca) = &cli.ca
        && let Err(error) = stream::trust(ca)
    {
        eprintln!("herald-load: {error}");
        return ExitCode::FAILURE;
    }
    let result = match cli.mode {
        Mode::Echo(args) => echo::run(&args),
        Mode::Fanout(args) => fanout::run(&args),
        Mode::Connect(args) => connect::run(&args),
        Mode::Idle(args) => idle::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("herald-load: {error}");
            ExitCode::FAILURE
        }
    }
}
