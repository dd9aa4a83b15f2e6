//! `uvr-processor`: the processor role alone (the seed's processor service; run any number of them).

use uvr::config::Env;
use uvr::service::{self, Role};

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    uvr::telemetry::init();
    service::run(Env::from_process(), vec![Role::Processor]).await
}
