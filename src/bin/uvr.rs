//! `uvr`: the whole service in one process (the local default; `UVR_ROLES` picks a subset),
//! or `uvr separate <file-or-url> -o <dir>` for a one-off local separation without Redis.

use uvr::config::Env;
use uvr::service::{self, Role};

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    uvr::telemetry::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("separate") {
        return service::separate_command(&args[1..]).await;
    }
    let env = Env::from_process();
    let roles = Role::parse_list(&env)?;
    service::run(env, roles).await
}
