//! `uvr`: the whole service in one process (the local default). `UVR_ROLES` picks a subset.

use uvr::config::Env;
use uvr::service::{self, Role};

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    uvr::telemetry::init();
    let env = Env::from_process();
    let roles = Role::parse_list(&env)?;
    service::run(env, roles).await
}
