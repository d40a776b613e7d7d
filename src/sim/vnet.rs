//! The virtual network: real engines joined by modelled links, in virtual time, and the
//! one event loop that runs them. The simulator's lanes (`sim::lane`) and the engine's
//! tests (`tests/engine/`) both drive their engines through it, so that what a test
//! shows of a few nodes holds on the links the simulator gives a fleet.
//!
//! Owns what crosses a link and waits to happen ([`Ev`]), the queue it waits in, the
//! link model (each node's [`Link`]: its queues, site link, rate limits and latency;
//! the [`Network`] those queues and limits live in; the wire's framing,
//! [`chunk_wire_bytes`]), the connection each end of a link holds, and the step every
//! input takes: run it on a node's engine, then carry out everything the engine asks
//! for ([`Driver::drive`]): control messages sent at their encoded size, chunk requests
//! answered through [`Engine::serve`] with the chunks carried back over the links (as
//! deltas against the base the requester names, where the shape has versions:
//! [`Shape::version`]), dials and closes.
//!
//! A driver ([`Driver`]) brings the rest: the shape of its tree ([`Shape`]: keys,
//! parents, sites and each node's links), events of its own (the simulator's script; a
//! test has none), and what a node's store and installer do with the outputs that stay
//! at the node ([`Driver::keep`]: manifests, rule sets, reports, install jobs, events).
//! Its hooks see bytes cross and chunks land, and can make a server send bad bytes or a
//! pair of nodes unreachable, which is how a test injects faults. It must not reach
//! into a connection or the queue but through the methods here.
//!
//! Connections: each end keeps its own view of a connection (an epoch, 0 for none), as
//! a real peer does. A message is taken only if it arrives on the connection its
//! receiver holds now, so whatever was in flight when the receiver closed it, or when it
//! went down, is lost; a close reaches the other end after the latency. No event reads
//! or changes another node's state at once, which is what lets the simulator's lanes run
//! apart.
//!
//! Time: virtual milliseconds from 0; the engines see `clock + now` (the simulator's
//! clock is Unix time, as the rules its engines check carry; a test's is 0).
//!
//! Lanes: the simulator runs a fleet in lanes on threads of their own (`sim::world`).
//! Each lane has a virtual network of its own over the whole fleet and runs only its
//! nodes; an event for a node another lane runs goes to that lane's outbox, and the
//! lanes swap what they sent at the end of every window of virtual time. A test runs
//! one lane.

mod transfer;

pub use super::network::{Link, NONE, Network};
/// Bytes on the wire for a chunk of `len` bytes: its own and every layer's framing.
pub use super::overhead::chunk as chunk_wire_bytes;

use super::overhead;
use super::queue::Calendar;
use crate::content::Hash;
use crate::engine::{ChunkVerdict, Control, Engine, FetchId, Millis, Output, PeerId};
use std::convert::Infallible;
use transfer::Transfer;

/// How long a dial to a node that is not running (or cannot be reached) takes to fail,
/// beyond the time its handshake would have taken.
const DIAL_FAILS_AFTER: Millis = 1_000;
/// Epochs carry the lane that made them in their low bits, so that lanes never make
/// the same one.
const EPOCH_LANE_BITS: u32 = 4;

/// A chunk on its way: its index, its length, and whether its bytes are the ones the
/// manifest names (a test's faulty server sends bad ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    pub index: u32,
    pub len: u32,
    pub good: bool,
}

/// What waits to happen on the network, and events of the driver's own (`X`).
#[derive(Debug)]
pub enum Ev<X> {
    /// A control message, `wire` bytes on the links.
    Deliver {
        to: u32,
        from: u32,
        epoch: u64,
        msg: Control,
        wire: u32,
    },
    /// A chunk request reaches its server.
    Serve {
        server: u32,
        client: u32,
        epoch: u64,
        fetch: FetchId,
        update: Hash,
        first: u32,
        count: u32,
        direct: bool,
        /// The version the client holds whole and names for deltas, if any, by the
        /// shape's number ([`Shape::version`]).
        base: Option<u32>,
    },
    /// The server's answer for one chunk: a sibling at the requester's site holds it.
    Elsewhere {
        to: u32,
        from: u32,
        epoch: u64,
        fetch: FetchId,
        index: u32,
        holder: PeerId,
    },
    /// Chunks of a fetch, and whether the fetch ends with them.
    Chunks {
        to: u32,
        from: u32,
        epoch: u64,
        fetch: FetchId,
        update: Hash,
        chunks: Vec<Sent>,
        end: bool,
    },
    /// `from` dialled `to`: the handshake reaches the listener.
    Accept { to: u32, from: u32 },
    /// The listener took the connection: the dialer has it too.
    Accepted { to: u32, from: u32, epoch: u64 },
    /// The dial came to nothing.
    DialFailed { to: u32, from: u32 },
    /// `from` closed the connection, or went away.
    Disconnected { to: u32, from: u32, epoch: u64 },
    /// A node's engine asked to be called now.
    Timeout { node: u32 },
    /// An event of the driver's own.
    Own(X),
}

impl<X> From<X> for Ev<X> {
    fn from(own: X) -> Ev<X> {
        Ev::Own(own)
    }
}

/// An event of a driver's own.
pub trait Own {
    /// The node it happens at, if it is one node's: the lane that runs that node runs it.
    fn node(&self) -> Option<u32>;
}

/// No events of its own: a test's.
impl Own for Infallible {
    fn node(&self) -> Option<u32> {
        match *self {}
    }
}

impl<X: Own> Ev<X> {
    /// The node the event happens at, if it is one node's.
    fn node(&self) -> Option<u32> {
        match self {
            Ev::Deliver { to, .. }
            | Ev::Elsewhere { to, .. }
            | Ev::Chunks { to, .. }
            | Ev::Accept { to, .. }
            | Ev::Accepted { to, .. }
            | Ev::DialFailed { to, .. }
            | Ev::Disconnected { to, .. } => Some(*to),
            Ev::Serve { server, .. } => Some(*server),
            Ev::Timeout { node } => Some(*node),
            Ev::Own(own) => own.node(),
        }
    }
}

/// The shape of a driver's tree: who its nodes are, how they are related, and the links
/// each one has. Nodes are numbered from 0. The link model (which queues a pair's bytes
/// cross, their latency, the rate limits on the way) follows from it, the same for the
/// simulator's fleet and a test's tree.
pub trait Shape {
    /// Node `i`'s key.
    fn key(&self, i: u32) -> PeerId;
    /// The node of a key, if it is one of the tree's.
    fn node_of(&self, key: &PeerId) -> Option<u32>;
    /// Node `i`'s parent (none for the root).
    fn parent(&self, i: u32) -> Option<u32>;
    /// Where `child`'s connection is kept among `parent`'s, if the shape numbers its
    /// children (a large fleet's nodes find it by arithmetic); none keeps it with the
    /// node's other connections.
    fn child_slot(&self, _parent: u32, _child: u32) -> Option<usize> {
        None
    }
    /// Node `i`'s links.
    fn link(&self, i: u32) -> &Link;
    /// Whether `a` and `b` are at one site.
    fn same_site(&self, a: u32, b: u32) -> bool;
    /// Whether node `i` is told of each chunk of an answer as it lands, or only of the
    /// whole answer once it has landed (fewer events, for a node that passes nothing
    /// on).
    fn hears_each_chunk(&self, i: u32) -> bool;

    /// Whether `a` and `b` are siblings of one site (the others are parent and child).
    fn are_siblings(&self, a: u32, b: u32) -> bool {
        self.same_site(a, b) && self.parent(a) == self.parent(b)
    }

    /// One-way latency between two connected nodes: between siblings, each one's to
    /// its site; else the child's to its parent, and its site's.
    fn latency(&self, a: u32, b: u32) -> Millis {
        let (la, lb) = (self.link(a), self.link(b));
        if self.same_site(a, b) {
            return u64::from(la.latency + lb.latency);
        }
        let child = if self.parent(a) == Some(b) { la } else { lb };
        u64::from(child.latency + child.site_latency)
    }

    /// The queues bytes from `from` to `to` go through.
    fn path(&self, from: u32, to: u32) -> Vec<usize> {
        let (a, b) = (self.link(from), self.link(to));
        let mut path = vec![a.up as usize];
        if a.site_link != b.site_link {
            if a.site_link != NONE {
                path.push(a.site_link as usize + 1);
            }
            if b.site_link != NONE {
                path.push(b.site_link as usize);
            }
        }
        path.push(b.down as usize);
        path
    }

    /// The rate limits a chunk from `from` to `to` passes, in order: the sender's
    /// upload limit, the receiver's site's download limit, the receiver's download
    /// limit (or, between siblings, their local limits).
    fn limits(&self, from: u32, to: u32) -> Vec<usize> {
        let (a, b) = (self.link(from), self.link(to));
        let limits = if self.are_siblings(from, to) {
            [a.limits[3], NONE, b.limits[2]]
        } else {
            [a.limits[1], b.site_limit, b.limits[0]]
        };
        limits
            .into_iter()
            .filter(|l| *l != NONE)
            .map(|l| l as usize)
            .collect()
    }

    /// The number the shape gives `update` if it is a version of a module that has
    /// others, so that chunks may go as deltas between them (PROTOCOL.md §13.2); none
    /// by default: every chunk goes whole. A chunk request names its base by it.
    fn version(&self, _update: &Hash) -> Option<u32> {
        None
    }

    /// The update the shape numbers `n` ([`Shape::version`]).
    fn version_id(&self, _n: u32) -> Option<Hash> {
        None
    }

    /// The bytes chunk `index` (`len` bytes) of version `update` takes on the links as
    /// a delta against version `base`: its length by default.
    fn delta_len(&self, _update: u32, _base: u32, _index: u32, len: u32) -> u32 {
        len
    }

    /// The lane that runs node `i`.
    fn lane_of(&self, i: u32) -> usize {
        usize::from(self.link(i).lane)
    }
}

/// One node as the network sees it: its engine while it runs, and its connections.
#[derive(Default)]
struct Station {
    /// Boxed: an engine is moved out and back for every input it handles.
    engine: Option<Box<Engine>>,
    online: bool,
    /// Its connection to its parent, to each of its children the shape numbers (by
    /// slot), and to each other peer: their epochs as it sees them, 0 for none.
    up: u64,
    children: Vec<u64>,
    others: Vec<(u32, u64)>,
    /// The earliest timeout event scheduled for it.
    timer: Option<Millis>,
}

/// The network's state: the nodes' engines and connections, the queues of the links,
/// the events waiting, and virtual time. A [`Driver`] runs it.
pub struct Vnet<X> {
    now: Millis,
    /// What the engines' clocks read at virtual time 0.
    clock: Millis,
    stations: Vec<Station>,
    net: Network,
    queue: Calendar<Ev<X>>,
    /// This lane, and the events it sent each other lane in the window being run.
    lane: usize,
    outbox: Vec<Vec<(Millis, Ev<X>)>>,
    /// The end of the window being run: events for other lanes are at or after it.
    window_end: Millis,
    next_epoch: u64,
}

impl<X> Vnet<X> {
    /// A network of `nodes` nodes, none running yet, over the queues and limits of `net`;
    /// the engines' clocks read `clock` at virtual time 0.
    pub fn new(net: Network, nodes: usize, clock: Millis) -> Vnet<X> {
        Vnet {
            now: 0,
            clock,
            stations: (0..nodes).map(|_| Station::default()).collect(),
            net,
            queue: Calendar::default(),
            lane: 0,
            outbox: vec![Vec::new()],
            window_end: 0,
            next_epoch: 1,
        }
    }

    /// The same, as lane `lane` of `lanes`.
    pub(crate) fn in_lane(mut self, lane: usize, lanes: usize) -> Vnet<X> {
        self.lane = lane;
        self.outbox = (0..lanes).map(|_| Vec::new()).collect();
        self
    }

    /// Adds a node, not running yet; returns its number.
    pub fn add_node(&mut self) -> u32 {
        self.stations.push(Station::default());
        self.stations.len() as u32 - 1
    }

    /// The queues and rate limits of the links.
    pub fn network(&self) -> &Network {
        &self.net
    }

    pub fn network_mut(&mut self) -> &mut Network {
        &mut self.net
    }

    /// Virtual time now.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// Moves virtual time on to `t`, if it is later, with nothing happening: for a
    /// driver that has run every event before `t` ([`Driver::run_until`]).
    pub fn idle_until(&mut self, t: Millis) {
        self.now = self.now.max(t);
    }

    /// What the engines' clocks read now.
    pub fn engine_now(&self) -> Millis {
        self.clock + self.now
    }

    /// The lane this network runs.
    pub(crate) fn lane(&self) -> usize {
        self.lane
    }

    /// The end of the window of virtual time being run (or last run).
    pub(crate) fn window_end(&self) -> Millis {
        self.window_end
    }

    /// Node `i`'s engine, if it runs (and is not handling an input).
    pub fn engine(&self, i: u32) -> Option<&Engine> {
        self.stations.get(i as usize)?.engine.as_deref()
    }

    pub fn engine_mut(&mut self, i: u32) -> Option<&mut Engine> {
        self.stations.get_mut(i as usize)?.engine.as_deref_mut()
    }

    /// Whether node `i` runs.
    pub fn online(&self, i: u32) -> bool {
        self.stations.get(i as usize).is_some_and(|s| s.online)
    }

    /// Node `i` runs `engine` from now on (a new one, if it ran one already: its
    /// connections stay as they are).
    pub fn start(&mut self, i: u32, engine: Engine) {
        if let Some(s) = self.stations.get_mut(i as usize) {
            s.online = true;
            s.timer = None;
            s.engine = Some(Box::new(engine));
        }
    }

    /// Node `i` stops: its engine is handed back. Its connections are its driver's to
    /// close ([`Driver::close`]).
    pub fn stop(&mut self, i: u32) -> Option<Box<Engine>> {
        let s = self.stations.get_mut(i as usize)?;
        s.online = false;
        s.timer = None;
        s.engine.take()
    }

    /// Node `i`'s connections with its children the shape numbers, by slot (epoch 0:
    /// none), and with its other peers.
    pub(crate) fn connections(&self, i: u32) -> (u64, &[u64], &[(u32, u64)]) {
        let s = &self.stations[i as usize];
        (s.up, &s.children, &s.others)
    }

    /// A new connection's epoch.
    fn new_epoch(&mut self) -> u64 {
        let epoch = self.next_epoch << EPOCH_LANE_BITS | self.lane as u64;
        self.next_epoch += 1;
        epoch
    }

    /// Queues `ev` at `at` for the lane that runs it.
    fn push(&mut self, at: Millis, lane: Option<usize>, ev: Ev<X>) {
        match lane {
            Some(l) if l != self.lane => {
                debug_assert!(at >= self.window_end, "an event for another lane too soon");
                self.outbox[l].push((at, ev));
            }
            _ => self.queue.push(at, ev),
        }
    }

    /// The time of the earliest event waiting in this lane.
    pub(crate) fn next_at(&self) -> Option<Millis> {
        self.queue.next_at()
    }

    /// Hands the events sent to each other lane in this window to `post(lane, events)`;
    /// returns the earliest of them (or of those sent to this one).
    pub(crate) fn post(
        &mut self,
        mut post: impl FnMut(usize, &mut Vec<(Millis, Ev<X>)>),
    ) -> Option<Millis> {
        let mut sent = None;
        for (l, events) in self.outbox.iter_mut().enumerate() {
            if let Some(first) = events.iter().map(|(at, _)| *at).min() {
                sent = Some(sent.map_or(first, |s: Millis| s.min(first)));
            }
            if l != self.lane {
                post(l, events);
            }
        }
        sent
    }

    /// Takes events another lane sent this one.
    pub(crate) fn receive(&mut self, events: &mut Vec<(Millis, Ev<X>)>) {
        for (at, ev) in events.drain(..) {
            // An event due inside a window already run would be run late, silently:
            // the lookahead the lanes keep was not enough.
            assert!(
                at >= self.window_end,
                "an event from another lane is due at {at} ms, before the window end {} ms",
                self.window_end
            );
            self.queue.push(at, ev);
        }
    }
}

/// A driver of engines on the virtual network: the simulator's lane, or a test's
/// harness. It says what its network looks like and what a node keeps, and implements
/// the hooks it needs; the provided methods are the network (they run the events, the
/// engines' inputs and their outputs), which no driver overrides.
pub trait Driver: Sized {
    type Shape: Shape;
    /// Events of its own, queued with the network's.
    type Own: Own;

    fn vnet(&mut self) -> &mut Vnet<Self::Own>;
    fn vnet_ref(&self) -> &Vnet<Self::Own>;
    fn shape(&self) -> &Self::Shape;

    /// Runs an event of its own.
    fn own(&mut self, ev: Self::Own);

    /// Carries out an output of node `i`'s engine that stays at the node: storing a
    /// manifest (and answering with what the store holds of it), a rule set or a
    /// report; an install job; an event.
    fn keep(&mut self, i: u32, engine: &mut Engine, out: Output);

    /// Told of every output of node `i`'s engine before it is carried out.
    fn saw(&mut self, _i: u32, _out: &Output) {}

    /// `wire` bytes from `from` reached `to` (whether `to` takes them or not).
    fn crossed(&mut self, _from: u32, _to: u32, _wire: u64) {}

    /// `to` takes a control message from `from`, before its engine hears it.
    fn delivered(&mut self, _to: u32, _from: u32, _msg: &Control) {}

    /// `to` takes chunks of `update` from `from`, before its engine hears of them: the
    /// good ones are its store's now.
    fn landed(&mut self, _to: u32, _from: u32, _update: &Hash, _chunks: &[Sent]) {}

    /// `server` puts a chunk on its links for `client`: whether its bytes are good.
    fn sends_good(&mut self, _server: u32, _client: u32) -> bool {
        true
    }

    /// Whether a dial from `from` can reach `to` (a node that is down never answers).
    fn reachable(&self, _from: u32, _to: u32) -> bool {
        true
    }

    /// Virtual time now.
    fn now(&self) -> Millis {
        self.vnet_ref().now
    }

    /// Schedules `ev` at `at`, in the lane that runs it.
    fn at(&mut self, at: Millis, ev: impl Into<Ev<Self::Own>>) {
        let ev = ev.into();
        let lane = ev.node().map(|n| self.shape().lane_of(n));
        self.vnet().push(at, lane, ev);
    }

    /// Runs every event before `end`, in time order.
    fn run_until(&mut self, end: Millis) {
        self.vnet().window_end = end;
        while let Some((at, ev)) = self.vnet().queue.pop_before(end) {
            self.vnet().now = at;
            self.step(ev);
        }
    }

    /// Node `i`'s view of its connection with `j`: the epoch, 0 if none.
    fn conn(&self, i: u32, j: u32) -> u64 {
        let shape = self.shape();
        let node = &self.vnet_ref().stations[i as usize];
        if shape.parent(i) == Some(j) {
            return node.up;
        }
        if let Some(slot) = shape.child_slot(i, j) {
            return node.children.get(slot).copied().unwrap_or(0);
        }
        node.others
            .iter()
            .find(|(s, _)| *s == j)
            .map_or(0, |(_, e)| *e)
    }

    /// Sets node `i`'s view of its connection with `j` (0: it has none).
    fn set_conn(&mut self, i: u32, j: u32, epoch: u64) {
        let shape = self.shape();
        let up = shape.parent(i) == Some(j);
        let slot = if up { None } else { shape.child_slot(i, j) };
        let node = &mut self.vnet().stations[i as usize];
        if up {
            node.up = epoch;
        } else if let Some(slot) = slot {
            if node.children.len() <= slot {
                node.children.resize(slot + 1, 0);
            }
            node.children[slot] = epoch;
        } else {
            node.others.retain(|(s, _)| *s != j);
            if epoch != 0 {
                node.others.push((j, epoch));
            }
        }
    }

    /// Runs an event.
    fn step(&mut self, ev: Ev<Self::Own>) {
        let now = self.now();
        match ev {
            Ev::Deliver {
                to,
                from,
                epoch,
                msg,
                wire,
            } => {
                self.crossed(from, to, u64::from(wire));
                if self.conn(to, from) == epoch {
                    self.delivered(to, from, &msg);
                    let peer = self.shape().key(from);
                    self.drive(to, |e, now| e.handle_message(peer, msg, now));
                }
            }
            Ev::Serve {
                server,
                client,
                epoch,
                fetch,
                update,
                first,
                count,
                direct,
                base,
            } => {
                if self.conn(server, client) == epoch {
                    self.serve(
                        server,
                        client,
                        epoch,
                        fetch,
                        (update, base),
                        first..first + count,
                        direct,
                    );
                }
            }
            Ev::Elsewhere {
                to,
                from,
                epoch,
                fetch,
                index,
                holder,
            } => {
                if self.conn(to, from) == epoch {
                    self.drive(to, |e, now| e.handle_elsewhere(fetch, index, holder, now));
                }
            }
            Ev::Chunks {
                to,
                from,
                epoch,
                fetch,
                update,
                chunks,
                end,
            } => {
                let wire = chunks.iter().map(|c| overhead::chunk(c.len)).sum();
                self.crossed(from, to, wire);
                if self.conn(to, from) != epoch {
                    return;
                }
                self.landed(to, from, &update, &chunks);
                self.drive(to, |e, now| {
                    let verdicts = chunks.into_iter().map(|c| {
                        let verdict = if c.good {
                            ChunkVerdict::Stored { wire: c.len }
                        } else {
                            ChunkVerdict::Bad
                        };
                        (c.index, verdict)
                    });
                    e.handle_chunks(fetch, verdicts, now);
                    if end {
                        e.handle_fetch_end(fetch, now);
                    }
                });
            }
            Ev::Accept { to, from } => self.accept(to, from),
            Ev::Accepted { to, from, epoch } => {
                if !self.vnet_ref().online(to) {
                    // The dialer went away meanwhile: the listener sees it gone.
                    self.disconnected_at(from, to, epoch, 0);
                    return;
                }
                // A connection it still holds with the listener is stale: it dialled
                // again, or both dialled.
                self.drop_stale(to, from);
                self.connected(to, from, epoch);
            }
            Ev::DialFailed { to, from } => {
                // A dial that failed while another connection came up changes nothing.
                if self.conn(to, from) == 0 {
                    let key = self.shape().key(from);
                    self.drive(to, |e, now| e.handle_disconnected(key, now));
                }
            }
            Ev::Disconnected { to, from, epoch } => {
                if self.conn(to, from) == epoch {
                    self.set_conn(to, from, 0);
                    let key = self.shape().key(from);
                    self.drive(to, |e, now| e.handle_disconnected(key, now));
                }
            }
            Ev::Timeout { node } => {
                let clock = self.vnet_ref().clock;
                let n = &mut self.vnet().stations[node as usize];
                if n.timer == Some(now) {
                    n.timer = None;
                }
                if n.engine
                    .as_ref()
                    .and_then(|e| e.poll_timeout())
                    .is_some_and(|t| t <= clock + now)
                {
                    self.drive(node, |e, now| e.handle_timeout(now));
                } else {
                    self.drive(node, |_, _| {});
                }
            }
            Ev::Own(own) => self.own(own),
        }
    }

    /// The handshake of a dial from `from` reaches `to`: a node that is up (and can be
    /// reached) takes it and answers; otherwise the dial fails. A new connection
    /// replaces one the listener still held with the dialer (it came back before its
    /// crash was noticed, or both dialled), and the dialer hears that the old one
    /// closed. The dialer does the same when the answer reaches it.
    fn accept(&mut self, to: u32, from: u32) {
        let now = self.now();
        let lat = self.shape().latency(to, from);
        if !self.vnet_ref().online(to) || !self.reachable(from, to) {
            self.at(
                now + lat + DIAL_FAILS_AFTER,
                Ev::DialFailed { to: from, from: to },
            );
            return;
        }
        self.drop_stale(to, from);
        let epoch = self.vnet().new_epoch();
        // The answer goes before anything the engine sends on the new connection.
        self.at(
            now + lat,
            Ev::Accepted {
                to: from,
                from: to,
                epoch,
            },
        );
        self.connected(to, from, epoch);
    }

    /// Closes the connection `i` holds with `peer`, if any, before a new one replaces
    /// it: `peer` hears of it, and `i`'s engine sees the old one go.
    fn drop_stale(&mut self, i: u32, peer: u32) {
        if self.conn(i, peer) != 0 {
            self.close(i, peer, 0);
            let key = self.shape().key(peer);
            self.drive(i, |e, now| e.handle_disconnected(key, now));
        }
    }

    /// Node `i` holds connection `epoch` with `peer` now, and tells its engine; a
    /// sibling its engine has banned is closed again at once.
    fn connected(&mut self, i: u32, peer: u32, epoch: u64) {
        self.set_conn(i, peer, epoch);
        let key = self.shape().key(peer);
        if self.shape().are_siblings(i, peer) {
            let mut banned = false;
            self.drive(i, |e, now| banned = !e.handle_sibling_connected(key, now));
            if banned {
                self.close(i, peer, 0);
            }
        } else {
            self.drive(i, |e, now| e.handle_connected(key, now));
        }
    }

    /// `a` closes its connection with `b`; `b` hears of it after the latency (and
    /// `extra`), `a` is not told (it is gone, or tells its engine itself).
    fn close(&mut self, a: u32, b: u32, extra: Millis) {
        let epoch = self.conn(a, b);
        self.set_conn(a, b, 0);
        self.disconnected_at(b, a, epoch, extra);
    }

    /// Tells `to` that `from` closed connection `epoch`, after the latency and `extra`.
    fn disconnected_at(&mut self, to: u32, from: u32, epoch: u64, extra: Millis) {
        let at = self.now() + self.shape().latency(from, to) + extra;
        self.at(at, Ev::Disconnected { to, from, epoch });
    }

    /// Runs an input on node `i`'s engine, then carries out everything it asks for.
    /// Nothing happens if the node does not run.
    fn drive(&mut self, i: u32, input: impl FnOnce(&mut Engine, Millis)) {
        let Some(mut engine) = self.vnet().stations[i as usize].engine.take() else {
            return;
        };
        let now = self.now();
        let clock = self.vnet_ref().clock;
        input(&mut engine, clock + now);
        while let Some(out) = engine.poll_output() {
            self.carry_out(i, &mut engine, out);
        }
        if let Some(t) = engine.poll_timeout() {
            let t = t.saturating_sub(clock).max(now);
            let node = &mut self.vnet().stations[i as usize];
            if node.timer.is_none_or(|pending| t < pending) {
                node.timer = Some(t);
                self.at(t, Ev::Timeout { node: i });
            }
        }
        self.vnet().stations[i as usize].engine = Some(engine);
    }

    /// Sends what `make` builds (given the peer's number and the connection's epoch)
    /// from node `i` to `peer`, arriving after the latency; nothing if `i` holds no
    /// connection with it.
    fn over_connection(
        &mut self,
        i: u32,
        peer: &PeerId,
        make: impl FnOnce(u32, u64) -> Ev<Self::Own>,
    ) {
        let Some(j) = self.shape().node_of(peer) else {
            return;
        };
        let epoch = self.conn(i, j);
        if epoch != 0 {
            let at = self.now() + self.shape().latency(i, j);
            self.at(at, make(j, epoch));
        }
    }

    /// Carries out one output of node `i`'s engine: what crosses the network here, the
    /// rest through [`Driver::keep`].
    fn carry_out(&mut self, i: u32, engine: &mut Engine, out: Output) {
        self.saw(i, &out);
        match out {
            Output::Send { to, msg } => self.send_control(i, &to, msg),
            Output::Fetch {
                id,
                from,
                update,
                first,
                count,
                direct,
            } => {
                let base = self.delta_base(engine, &update);
                self.over_connection(i, &from, |j, epoch| Ev::Serve {
                    server: j,
                    client: i,
                    epoch,
                    fetch: id,
                    update,
                    first,
                    count,
                    direct,
                    base,
                })
            }
            Output::Dial { peer } => {
                let Some(j) = self.shape().node_of(&peer) else {
                    return;
                };
                // The handshake reaches the listener after a round trip.
                let rtt = 2 * self.shape().latency(i, j);
                self.at(self.now() + rtt, Ev::Accept { to: j, from: i });
            }
            Output::Disconnect { peer, .. } => {
                let Some(j) = self.shape().node_of(&peer) else {
                    return;
                };
                if self.conn(i, j) != 0 {
                    self.close(i, j, 0);
                    engine.handle_disconnected(peer, self.vnet_ref().engine_now());
                }
            }
            other => self.keep(i, engine, other),
        }
    }
}
