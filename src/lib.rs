//! arbor: a peer-to-peer update distribution overlay.
//!
//! Nodes form a signed parent/child tree. The root publishes updates as signed
//! manifests over content-addressed blake3 chunks; every other node fetches, verifies,
//! stores and serves them on. This crate is the whole of arbor: the `arbor` binary is a
//! thin shell over it (`src/main.rs`, `src/cli.rs`).
//!
//! Two drivers run one engine. The [`engine`] is sans-IO and makes every decision a
//! node makes; [`net`] (the daemon, over libp2p and the disk) and [`sim`] (the
//! simulator, in virtual time over modelled links) only carry out its outputs and
//! feed it what happened. ARCHITECTURE.md (at the repository's root) follows one
//! update from `publish` to an installed file and says where each decision lives.
//!
//! The modules, from the top. An arrow is an import (`use crate::...`); there is no
//! cycle apart from `publish` ↔ `package` (a package is published; publish checks a
//! module as package does), and no module imports one above it, except where said.
//!
//! | module | owns | imports |
//! |---|---|---|
//! | [`cli`] | the command line: parse, call, print; `arbor run`, the commands that talk to a running node (`cli::remote`), the demo | everything below |
//! | [`admin`] | the admin API's HTTP face: routes, bearer token, connection limits, the HTTP client, the web UI | net, publish |
//! | [`net`] | the daemon: libp2p transport, stream protocols, the store writer, the installer's hands, what an operator can ask (`net::command`) | engine, export, install, publish, store, node, bandwidth, report, rules, trust, content, wire |
//! | [`sim`] | the simulator: a fleet's engines in lanes on the virtual network (`sim::vnet`: one event loop, the connections and the link model, which the engine's tests drive too) over modelled links and sites; a module's new versions as the shipped chunk deltas move them | engine, bandwidth, rules, trust, content, wire; net's frame sizes (`net::proto`) and bandwidth options, so that it charges what the daemon sends |
//! | [`publish`], [`package`], [`verify`], [`export`] | a node directory offline: the root's ingest, XML packages, store checks, reassembly | node, store, trust, content |
//! | [`install`] | a client's install directory: atomic version switch, previous kept, rollback, check and repair | trust, content |
//! | [`engine`] | one node's logic, sans-IO: tree relations, chunk state, fetch scheduling, sources and conduct, the client's installer, its own rules' signer, reports, the boot from a snapshot | report, rules, trust, content |
//! | [`bandwidth`] | rates, WAN windows and token buckets, sans-IO | none |
//! | [`report`] | reports, sans-IO: each node's state per update, roll-ups per state, update and group | rules, trust, content, wire |
//! | [`node`] | a node directory: layout, keys, opening | store, trust, wire |
//! | [`store`] | pack files and the redb index | rules (the `all` group's name), trust, content, wire |
//! | [`rules`] | rule sets, sans-IO: groups, approvals, waves, halts; availability and its subset proof | trust, content, wire |
//! | [`trust`] | keys, the signed envelope, signed manifests, certificates | content, wire |
//! | [`content`] | hashes, chunking, manifests, modules, chunk deltas, safe names | wire |
//! | [`wire`] | canonical CBOR and size limits | none |
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
