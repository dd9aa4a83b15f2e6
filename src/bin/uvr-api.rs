//! `uvr-api`: the HTTP API alone (the seed's API service).

use clap::Parser;
use uvr::service;
use uvr::settings::Role;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "The HTTP API alone (the seed's API service), configured by the environment."
)]
struct Cli {}

fn main() -> std::process::ExitCode {
    Cli::parse();
    service::main(Some(vec![Role::Api]))
}
