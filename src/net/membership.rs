//! Membership on the parent side: redeeming join tokens, checking a connecting child's
//! chain and addresses, and issuing its renewed certificate.

use super::*;
use crate::store::TokenRefusal;

impl Daemon {
    pub(super) fn on_join(&mut self, peer: PublicKey, secret: [u8; 32]) -> JoinReply {
        let redeemed =
            self.node
                .store
                .redeem_token(&JoinToken::secret_hash(&secret), &peer.0, now_secs());
        match redeemed {
            Ok(Ok(record)) => {
                tracing::info!(child = %peer.node_id(), client = record.client, "a new child joined");
                self.engine.add_child(peer, record.client, now_ms());
                if !record.groups.is_empty() {
                    self.resign_rules();
                }
                JoinReply::Accepted {
                    chain: self.child_chain(&peer, &record, None),
                    root: self.node.root_key,
                    time: now_ms(),
                }
            }
            // The same node asking again, its first answer lost on the way: it is a
            // member already, and gets its certificate again.
            Ok(Err(TokenRefusal::Used)) if self.is_member(&peer) => {
                let Ok(Some(record)) = self.node.store.child(&peer.0) else {
                    return JoinReply::Refused {
                        reason: "the parent could not read its record of this node; try again"
                            .into(),
                    };
                };
                crate::peer_info!(
                    peer,
                    "joined again",
                    "a child asked to join again; answered again"
                );
                JoinReply::Accepted {
                    chain: self.child_chain(&peer, &record, None),
                    root: self.node.root_key,
                    time: now_ms(),
                }
            }
            Ok(Err(refusal)) => {
                self.refused += 1;
                crate::peer_warn!(peer, "join refused", "join refused: {refusal}");
                let why = format!("join refused: {refusal}");
                self.engine.handle_offence(
                    peer,
                    crate::engine::Offence::Unauthorised,
                    &why,
                    now_ms(),
                );
                JoinReply::Refused {
                    reason: refusal.to_string(),
                }
            }
            Err(e) => {
                tracing::error!("cannot redeem a join token: {e}");
                JoinReply::Refused {
                    reason: "the parent could not record the join; try again".into(),
                }
            }
        }
    }

    /// Whether `peer` is a child of this node that was not revoked.
    fn is_member(&self, peer: &PublicKey) -> bool {
        matches!(self.node.store.child(&peer.0), Ok(Some(r)) if !r.revoked)
    }

    /// This node's chain followed by a fresh certificate for `child`, at `site`.
    pub(super) fn child_chain(
        &self,
        child: &PublicKey,
        record: &ChildRecord,
        site: Option<&str>,
    ) -> Vec<Envelope> {
        let now = now_secs();
        let mut chain = match self.node.root_secret() {
            Ok(root) => vec![member::issue(
                root,
                self.node.node_key.public(),
                false,
                Vec::new(),
                None,
                now,
                now + CERT_TTL_SECS,
            )],
            Err(_) => self.chain.clone(),
        };
        chain.push(member::issue(
            &self.node.node_key,
            *child,
            record.client,
            record.groups.clone(),
            site.map(str::to_string),
            now,
            now + CERT_TTL_SECS,
        ));
        chain
    }

    /// Checks a connecting child's chain, records, site and addresses; keeps the
    /// addresses for its siblings; returns its renewed chain, certified at its site.
    pub(super) fn check_child(
        &mut self,
        peer: &PublicKey,
        chain: &[Envelope],
        site: Option<&str>,
        addrs: &[String],
    ) -> Result<Vec<Envelope>, String> {
        if let Some(site) = site {
            crate::content::names::check_name("site", site).map_err(|e| e.to_string())?;
        }
        let addrs = parse_addrs(addrs)?;
        let members = verify_chain(chain, &self.node.root_key, now_secs()).map_err(|e| {
            format!("its certificate chain is refused ({e}); it may belong to another tree")
        })?;
        let last = members.last().ok_or("empty chain")?;
        if last.node != *peer {
            return Err("it presented the certificate chain of another node".into());
        }
        if last.issuer != self.node.node_key.public() {
            return Err("it is not a child of this node".into());
        }
        let record = self
            .node
            .store
            .child(&peer.0)
            .map_err(|e| e.to_string())?
            .ok_or("this node has no record of it as a child")?;
        if record.revoked {
            return Err("its membership was revoked".into());
        }
        // A child listening on every interface, or naming its loopback address while it
        // connected from elsewhere, is reachable at the address it connected from.
        let seen = self.remote_addrs.get(peer).and_then(|a| a.iter().next());
        let seen_loopback = self.remote_addrs.get(peer).is_some_and(is_loopback);
        let mut reachable: Vec<Multiaddr> = Vec::new();
        for a in addrs {
            let a = match &seen {
                Some(ip) if is_unspecified(&a) || (is_loopback(&a) && !seen_loopback) => a
                    .iter()
                    .map(|p| if is_ip(&p) { ip.clone() } else { p })
                    .collect(),
                _ => a,
            };
            if !reachable.contains(&a) {
                reachable.push(a);
            }
        }
        self.peer_addrs.insert(*peer, reachable);
        Ok(self.child_chain(peer, &record, site))
    }
}

/// Reads the addresses a peer gave for itself (or another): bounded in number and
/// length, each a multiaddr.
pub fn parse_addrs(addrs: &[String]) -> Result<Vec<Multiaddr>, String> {
    if addrs.len() > proto::MAX_ADDRS {
        return Err(format!(
            "{} addresses, over the limit of {}",
            addrs.len(),
            proto::MAX_ADDRS
        ));
    }
    addrs
        .iter()
        .map(|a| {
            if a.len() > proto::MAX_ADDR_LEN {
                return Err(format!(
                    "an address of {} bytes, over the limit of {}",
                    a.len(),
                    proto::MAX_ADDR_LEN
                ));
            }
            a.parse::<Multiaddr>()
                .map_err(|e| format!("{a:?} is not a multiaddr: {e}"))
        })
        .collect()
}

pub(super) fn is_ip(p: &libp2p::multiaddr::Protocol) -> bool {
    matches!(
        p,
        libp2p::multiaddr::Protocol::Ip4(_) | libp2p::multiaddr::Protocol::Ip6(_)
    )
}

/// Whether an address is a loopback one (127.0.0.0/8 or ::1).
pub(super) fn is_loopback(a: &Multiaddr) -> bool {
    a.iter().any(|p| {
        matches!(p, libp2p::multiaddr::Protocol::Ip4(ip) if ip.is_loopback())
            || matches!(p, libp2p::multiaddr::Protocol::Ip6(ip) if ip.is_loopback())
    })
}

/// Whether an address is on every interface (0.0.0.0 or ::).
pub(super) fn is_unspecified(a: &Multiaddr) -> bool {
    a.iter().any(|p| {
        matches!(p, libp2p::multiaddr::Protocol::Ip4(ip) if ip.is_unspecified())
            || matches!(p, libp2p::multiaddr::Protocol::Ip6(ip) if ip.is_unspecified())
    })
}
