//! Checks a routing file and prints every problem, as the server would
//! refuse it: `cargo run -p switchboard-routing --example check_routing -- FILE`.
//! Exit code 0 when valid, 64 when not (as for a bad server config), 66
//! when the file cannot be read.

use std::process::ExitCode;
use switchboard_routing::RoutingConfig;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: check_routing FILE");
        return ExitCode::from(64);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("cannot read {path}: {e}");
            return ExitCode::from(66);
        }
    };
    match RoutingConfig::from_toml(&path, &text) {
        Ok(config) => {
            println!(
                "{path}: ok: {} queues, {} regions",
                config.queues.len(),
                config.regions.names().count()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(64)
        }
    }
}
