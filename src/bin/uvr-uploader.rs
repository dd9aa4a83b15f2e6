//! `uvr-uploader`: the uploader role alone (the seed's uploader service; run any number of them).

use uvr::config::Env;
use uvr::service::{self, Role};

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    uvr::telemetry::init();
    service::run(Env::from_process(), vec![Role::Uploader]).await
}
