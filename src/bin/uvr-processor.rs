//! `uvr-processor`: the processor role alone (the seed's processor service; run any number of them).

use clap::Parser;
use uvr::service;
use uvr::settings::Role;

/// Separation allocates and frees large tensor buffers all the time: mimalloc reuses their
/// pages instead of faulting them in anew for every operation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "The processor role alone (run any number of them), configured by the environment."
)]
struct Cli {}

fn main() -> std::process::ExitCode {
    Cli::parse();
    service::main(Some(vec![Role::Processor]))
}
