//! The daemon's answers to its admin: status, tokens, revocation, groups, publish, and
//! the installer's tasks. The HTTP face is `crate::admin`.

use super::*;
use command::{
    ChildStatus, GroupCreated, GroupDeleted, GroupList, GroupListing, IssuedToken,
    MembershipChange, NodeStatus, ParentStatus, RevokedChild, RuleSetStatus, SiblingStatus,
    UpdateStatus,
};

impl Daemon {
    pub(super) fn on_local(&mut self, req: Request, reply: oneshot::Sender<Reply>) {
        let response = match req {
            Request::Status => Ok(Answer::Status(Box::new(self.status()))),
            Request::Token(t) => self.issue_token(t),
            Request::Revoke { node } => self.revoke(&node),
            Request::Group(g) => {
                // Only a change signs the rules again: a read (the web UI lists the groups
                // every second) or an assignment that was already so leaves their version,
                // and the subtree, alone.
                let answer = self.group(g);
                if let Ok((_, true)) = &answer {
                    self.resign_rules();
                }
                answer.map(|(view, _)| view)
            }
            Request::Approve(a) => self.approve(a),
            Request::Decline { update, group } => self.decline(&update, &group),
            Request::Approvals => self.approvals(),
            Request::Reports => self.reports_view(),
            Request::Tree => self.tree_view(),
            Request::Updates => self.updates_view(),
            Request::Metrics => Ok(Answer::Metrics(self.metrics())),
            Request::Installed => match &self.installer {
                Some(h) => Ok(Answer::Installed(h.view())),
                None => Err(not_a_client()),
            },
            Request::Check { repair } => {
                self.installer_task(InstallTask::Check { repair }, reply);
                return;
            }
            Request::Rollback { module } => {
                match module.parse::<crate::install::ModuleName>() {
                    Ok(module) => self.installer_task(InstallTask::Rollback { module }, reply),
                    Err(e) => {
                        let _ = reply.send(Err(Refusal::bad(e.to_string())));
                    }
                }
                return;
            }
            Request::Wait { update } => match self.resolve(&update) {
                Ok(u) => {
                    self.waiters.push((u, reply));
                    self.answer_waiters();
                    return;
                }
                Err(e) => Err(e),
            },
            Request::Publish(req) => {
                let node = self.node.clone();
                let ev = self.ev_tx.clone();
                self.tasks.spawn_blocking(move || {
                    let result = publish::publish(
                        &node,
                        &req,
                        req.created.unwrap_or_else(now_secs),
                        &|_| {},
                    )
                    .map_err(|e| {
                        use publish::PublishError as P;
                        let kind = match e {
                            P::Conflict { .. } | P::Node(_) => RefusalKind::Conflict,
                            P::Store(_) | P::Trust(_) => RefusalKind::Internal,
                            _ => RefusalKind::BadRequest,
                        };
                        Refusal::new(kind, e.to_string())
                    });
                    let _ = ev.send(LoopInput::Published { result, reply });
                });
                return;
            }
        };
        let _ = reply.send(response);
    }

    /// Hands an admin's request to the installer, which answers it once it has run.
    pub(super) fn installer_task(&mut self, task: InstallTask, reply: oneshot::Sender<Reply>) {
        match self.installer.as_mut() {
            Some(hands) if self.engine.installer_task(task, now_ms()) => {
                hands.replies.push_back(reply);
            }
            _ => {
                let _ = reply.send(Err(not_a_client()));
            }
        }
    }

    pub(super) fn resolve(&self, update: &str) -> Result<Hash, Refusal> {
        // A whole id may name an update that has not been offered yet.
        if let Ok(id) = update.parse::<Hash>() {
            return Ok(id);
        }
        let lower = update.to_ascii_lowercase();
        let found: Vec<Hash> = self
            .engine
            .progress()
            .into_iter()
            .map(|p| p.update)
            .filter(|u| lower.len() >= 4 && u.to_hex().starts_with(&lower))
            .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(Refusal::new(
                RefusalKind::NotFound,
                format!("no update {update:?} is known to this node yet"),
            )),
            _ => Err(Refusal::bad(format!(
                "{update:?} matches several updates; give more digits"
            ))),
        }
    }

    pub(super) fn issue_token(&mut self, req: command::TokenRequest) -> Reply {
        let command::TokenRequest {
            mut groups,
            client,
            ttl_secs,
            addr,
            site,
        } = req;
        if let Some(site) = &site
            && let Err(e) = crate::content::names::check_name("site", site)
        {
            return Err(Refusal::bad(e.to_string()));
        }
        // Every child is in the built-in group; the others must exist.
        groups.retain(|g| g != crate::store::ALL);
        groups.sort();
        groups.dedup();
        for g in &groups {
            if let Err(e) = crate::content::names::check_name("group", g) {
                return Err(Refusal::bad(e.to_string()));
            }
            match self.node.store.has_group(g) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(Refusal::new(
                        RefusalKind::NotFound,
                        format!("there is no group {g:?}; create it first (arbor group create)"),
                    ));
                }
                Err(e) => return Err(Refusal::internal(e.to_string())),
            }
        }
        if groups.len() > member::MAX_GROUPS {
            return Err(Refusal::bad(format!(
                "at most {} groups",
                member::MAX_GROUPS
            )));
        }
        if let Ok(ms) = verify_chain(&self.chain, &self.node.root_key, now_secs())
            && ms.last().is_some_and(|m| m.client)
        {
            return Err(Refusal::new(
                RefusalKind::Conflict,
                "this node joined as a client; clients have no children",
            ));
        }
        let addr = match addr {
            Some(a) => match a.parse::<Multiaddr>() {
                Ok(m) => m,
                Err(e) => {
                    return Err(Refusal::bad(format!(
                        "the address {a:?} is not a multiaddr: {e}"
                    )));
                }
            },
            None => match self.advertised_addr() {
                Some(a) => a,
                None => {
                    return Err(Refusal::bad(
                        "this node has no address to put in the token; give one (--addr)",
                    ));
                }
            },
        };
        let mut secret = [0u8; 32];
        if let Err(e) = getrandom::fill(&mut secret) {
            return Err(Refusal::internal(format!(
                "the system random source failed: {e}"
            )));
        }
        let expires = now_secs().saturating_add(ttl_secs);
        let record = TokenRecord {
            used: false,
            client,
            groups,
            expires,
        };
        if let Err(e) = self
            .node
            .store
            .add_token(&JoinToken::secret_hash(&secret), &record)
        {
            return Err(Refusal::internal(e.to_string()));
        }
        let token = JoinToken {
            addr: addr.to_string(),
            root: root_fingerprint(&self.node.root_key),
            site,
            parent: self.node.node_key.public(),
            secret,
        };
        tracing::info!(expires, client, "issued a join token");
        Ok(Answer::Token(IssuedToken {
            token: token.to_text(),
            addr: addr.to_string(),
            expires,
        }))
    }

    /// The address a child should dial: a listening address, not the unspecified one.
    pub(super) fn advertised_addr(&self) -> Option<Multiaddr> {
        let usable = |a: &&Multiaddr| !is_unspecified(a);
        let addrs: Vec<&Multiaddr> = self.listen_addrs.iter().filter(usable).collect();
        addrs
            .iter()
            .find(|a| !is_loopback(a))
            .or(addrs.first())
            .map(|a| (*a).clone())
    }

    pub(super) fn revoke(&mut self, node: &str) -> Reply {
        let key = parse_node(node)?;
        match self.node.store.revoke_child(&key.0) {
            Ok(true) => {
                tracing::warn!(child = %node, "membership revoked");
                self.engine.remove_child(&key, now_ms());
                self.reports_to_keep.remove(&key);
                if let Err(e) = self.node.store.remove_report(&key.0) {
                    tracing::error!("cannot forget the revoked child's report: {e}");
                }
                self.resign_rules();
                self.sessions.remove(&key);
                self.disconnect(key);
                Ok(Answer::Revoked(RevokedChild {
                    revoked: node.to_string(),
                }))
            }
            Ok(false) => Err(Refusal::new(
                RefusalKind::NotFound,
                format!("{node} is not a child of this node"),
            )),
            Err(e) => Err(Refusal::internal(e.to_string())),
        }
    }

    /// Carries out a group request; says whether it changed the groups.
    pub(super) fn group(&mut self, req: command::GroupRequest) -> Result<(Answer, bool), Refusal> {
        use crate::store::{ALL, MemberChange};
        use command::GroupRequest as G;
        let store = &self.node.store;
        let failed = |e: StoreError| Refusal::internal(e.to_string());
        let not_found = |m: String| Refusal::new(RefusalKind::NotFound, m);
        let built_in = |what: &str| {
            Refusal::new(
                RefusalKind::Conflict,
                format!("`{ALL}` is built in and holds every child; it cannot be {what}"),
            )
        };
        let (group, node, member) = match req {
            G::List => return self.list_groups().map(|v| (v, false)),
            G::Create { name } => {
                crate::content::names::check_name("group", &name)
                    .map_err(|e| Refusal::bad(e.to_string()))?;
                if name == ALL {
                    return Err(built_in("created"));
                }
                if !store.create_group(&name, now_secs()).map_err(failed)? {
                    return Err(Refusal::new(
                        RefusalKind::Conflict,
                        format!("group {name:?} already exists"),
                    ));
                }
                tracing::info!(group = %name, "group created");
                return Ok((Answer::GroupCreated(GroupCreated { created: name }), true));
            }
            G::Delete { name } => {
                if name == ALL {
                    return Err(built_in("deleted"));
                }
                if !store.delete_group(&name).map_err(failed)? {
                    return Err(not_found(format!("there is no group {name:?}")));
                }
                tracing::info!(group = %name, "group deleted");
                return Ok((Answer::GroupDeleted(GroupDeleted { deleted: name }), true));
            }
            G::Assign { group, node } => (group, node, true),
            G::Unassign { group, node } => (group, node, false),
        };
        if group == ALL {
            return Err(built_in("changed"));
        }
        let key = parse_node(&node)?;
        match store.set_member(&group, &key.0, member).map_err(failed)? {
            MemberChange::Changed(changed) => {
                if changed {
                    tracing::info!(group = %group, child = %node, member, "group membership changed");
                }
                let view = Answer::Membership(MembershipChange {
                    group,
                    node_id: node,
                    member,
                    changed,
                });
                Ok((view, changed))
            }
            MemberChange::NoSuchGroup => Err(not_found(format!("there is no group {group:?}"))),
            MemberChange::NoSuchChild => {
                Err(not_found(format!("{node} is not a child of this node")))
            }
            MemberChange::Revoked => Err(Refusal::new(
                RefusalKind::Conflict,
                format!("{node} was revoked"),
            )),
        }
    }

    /// The groups of this node's children, the built-in one first, with their members.
    pub(super) fn list_groups(&self) -> Reply {
        use crate::store::ALL;
        let store = &self.node.store;
        let failed = |e: StoreError| Refusal::internal(e.to_string());
        let children = store.children().map_err(failed)?;
        let members = |g: &str| -> Vec<String> {
            children
                .iter()
                .filter(|(_, r)| !r.revoked && (g == ALL || r.groups.iter().any(|x| x == g)))
                .map(|(k, _)| PublicKey(*k).node_id())
                .collect()
        };
        let mut groups = vec![GroupListing {
            name: ALL.to_string(),
            built_in: true,
            created: None,
            members: members(ALL),
        }];
        for (name, record) in store.groups().map_err(failed)? {
            groups.push(GroupListing {
                members: members(&name),
                name,
                built_in: false,
                created: Some(record.created),
            });
        }
        Ok(Answer::Groups(GroupList { groups }))
    }

    pub(super) fn status(&self) -> NodeStatus {
        let records: HashMap<[u8; 32], ChildRecord> = self
            .node
            .store
            .children()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let sent_to = |key: &PublicKey| self.sent_to.get(key).copied().unwrap_or(0);
        let children = records
            .iter()
            .map(|(k, r)| {
                let key = PublicKey(*k);
                ChildStatus {
                    node_id: key.node_id(),
                    connected: self.engine.is_connected_child(&key),
                    client: r.client,
                    groups: r.groups.clone(),
                    revoked: r.revoked,
                    site: self.engine.child_site(&key).map(str::to_string),
                    bytes_sent: sent_to(&key),
                }
            })
            .collect();
        let siblings = self
            .engine
            .siblings()
            .into_iter()
            .map(|s| SiblingStatus {
                node_id: s.peer.node_id(),
                connected: s.connected,
                banned: s.banned,
                bytes_received: s.bytes_from,
                bytes_sent: sent_to(&s.peer),
            })
            .collect();
        let updates = self
            .engine
            .progress()
            .into_iter()
            .map(|p| {
                let t = self.transfers.get(&p.update);
                UpdateStatus {
                    update_id: p.update,
                    available: p.available,
                    module: self
                        .engine
                        .manifest(&p.update)
                        .map(module_name)
                        .unwrap_or_default(),
                    bytes: p.bytes,
                    bytes_held: p.bytes_held,
                    chunks: p.chunks,
                    chunks_held: p.chunks_held,
                    bytes_in: t.map_or(0, |t| t.bytes_in),
                    bytes_out: t.map_or(0, |t| t.bytes_out),
                    rate_in: t.map_or(0, |t| t.rate_in),
                    rate_out: t.map_or(0, |t| t.rate_out),
                }
            })
            .collect();
        let parent = self.engine.parent().map(|p| ParentStatus {
            node_id: p.node_id(),
            addr: self.parent_addr.as_ref().map(|a| a.to_string()),
            connected: self.engine.parent_connected() == Some(true),
            // Given up for silence (a frozen or hung parent), and not heard since.
            unresponsive_since: self.engine.parent_silent_since().map(|t| t / 1000),
            bytes_received: self.engine.stats().bytes_from_parent,
            // How far the parent's clock is ahead of this node's, and what that means.
            clock_offset_ms: self.engine.clock_offset(),
            clock_note: self.engine.clock_note(),
        });
        let stats = self.engine.stats();
        let me = self.node.node_key.public();
        let rules = self
            .engine
            .path()
            .iter()
            .filter_map(|n| self.engine.rules().get(n))
            .map(|r| RuleSetStatus {
                issuer: r.issuer().node_id(),
                own: r.issuer() == me,
                version: r.version,
                issued: r.rules.issued,
                expires: r.expires,
                approvals: r.rules.approvals.len(),
            })
            .collect();
        NodeStatus {
            node_id: self.node.node_id(),
            root: self.node.is_root(),
            listen: self.listen_addrs.iter().map(|a| a.to_string()).collect(),
            admin: self.admin_url.clone(),
            parent,
            site: self.opts.site.clone(),
            siblings,
            children,
            redirects: stats.redirects,
            updates,
            bad_chunks: stats.bad_chunks,
            fetch_timeouts: stats.fetch_timeouts,
            refused: self.refused,
            rules,
            halted: self.halted_approvals(),
            rules_refused: self.rules_refused,
            bans: self.bans_view(),
            installed: self.installer.as_ref().map(|h| h.view()),
        }
    }
}
