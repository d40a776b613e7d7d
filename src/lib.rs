//! arbor: a peer-to-peer update distribution overlay.
//!
//! Nodes form a signed parent/child tree. The root publishes updates as signed
//! manifests over content-addressed blake3 chunks; every other node fetches, verifies,
//! stores and serves them on. This crate is the whole of arbor: the `arbor` binary is a
//! thin shell over it (`src/main.rs`, `src/cli.rs`).
//!
//! Layers, each depending only on those below it:
//!
//! | module | owns |
//! |---|---|
//! | [`cli`] | the command line: parse, call, print |
//! | [`publish`], [`verify`], [`export`], [`package`] | the root's ingest, store checks, reassembly, XML packages |
//! | [`install`] | a leaf's install directory: atomic version switch, previous kept, rollback, check and repair |
//! | [`net`] | the daemon: libp2p transport, stream protocols, admin API |
//! | [`engine`] | one node's logic, sans-IO: tree relations, chunk state, fetch scheduling |
//! | [`bandwidth`] | rates, WAN windows and token buckets, sans-IO |
//! | [`rules`] | rule sets, sans-IO: groups, approvals, waves, halts; availability and its subset proof |
//! | [`report`] | reports, sans-IO: each node's state per update, roll-ups per state, update and group |
//! | [`node`] | a node directory: layout, keys, opening |
//! | [`store`] | pack files and the redb index |
//! | [`trust`] | keys, the signed envelope, signed manifests |
//! | [`wire`] | canonical CBOR and size limits |
//! | [`content`] | hashes, chunking, manifests, chunk deltas, safe names |
//!
//! The wire format is specified in `protocol/PROTOCOL.md`, with test vectors in
//! `protocol/vectors/`.

pub mod admin;
pub mod bandwidth;
pub mod cli;
pub mod content;
pub mod engine;
pub mod export;
pub mod install;
pub mod net;
pub mod node;
pub mod package;
pub mod publish;
pub mod report;
pub mod rules;
pub mod sim;
pub mod store;
pub mod trust;
pub mod verify;
pub mod wire;
