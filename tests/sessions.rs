//! Device sessions as a broker keeps them (issue 14, device side): persistent sessions
//! across reconnects, shared subscriptions, and sessions that must not hang.

#[path = "sessions/hangs.rs"]
mod hangs;
#[path = "sessions/limits.rs"]
mod limits;
#[path = "sessions/persistent.rs"]
mod persistent;
#[path = "sessions/secrets.rs"]
mod secrets;
#[path = "sessions/shared.rs"]
mod shared;
