//! Messages shared by more than one actor.

use actix::prelude::*;

/// Stops claiming new tasks; answers once the tasks in hand are finished (Separator, Uploader).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Drain;

/// Stops the actor so that its supervisor restarts it (operators, and the supervision test).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Restart;
