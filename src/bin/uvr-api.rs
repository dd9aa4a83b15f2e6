//! `uvr-api`: the HTTP API alone (the seed's API service).

use uvr::config::Env;
use uvr::service::{self, Role};

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    uvr::telemetry::init();
    service::run(Env::from_process(), vec![Role::Api]).await
}
