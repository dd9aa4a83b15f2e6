//! `uvr-uploader`: the uploader role alone (the seed's uploader service; run any number of them).

use clap::Parser;
use uvr::service;
use uvr::settings::Role;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "The uploader role alone (run any number of them), configured by the environment."
)]
struct Cli {}

fn main() -> std::process::ExitCode {
    Cli::parse();
    service::main(Some(vec![Role::Uploader]))
}
