//! The engine in a deterministic harness: several engines on the simulator's virtual
//! network (its modelled links, queue and event loop in virtual time, no sockets;
//! `harness.rs`). Each test drives a small tree and checks what a user relies on,
//! grouped by concern: moving an update down the tree (`transfer`), who is believed
//! and served (`trust`), rules (`rules`), reports (`reports`) and siblings at a site
//! (`siblings`).

#[path = "../common/mod.rs"]
mod common;
mod harness;

mod reports;
mod rules;
mod siblings;
mod transfer;
mod trust;
