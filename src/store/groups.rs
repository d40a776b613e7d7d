//! A node's groups of its own children: which groups exist, and who is in each.
//!
//! Membership lives in each child's [`ChildRecord`] (one place, so revoking or deleting
//! never leaves a dangling list); this table holds the groups themselves. The built-in
//! group [`ALL`] holds every child that is not revoked and is never stored.

use super::{
    CHILDREN, ChildRecord, Store, StoreError, db_err, decode_record, open_optional, read_child,
};
use crate::trust::PublicKey;
use crate::wire;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Group name → CBOR [`GroupRecord`].
pub(super) const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");

pub use crate::rules::ALL;

/// A group this node's admin created. Fields in canonical key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// Unix seconds.
    pub created: u64,
}

/// What a change to a group's members found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// Done; `false` when the child already was (or was not) in the group.
    Changed(bool),
    NoSuchGroup,
    NoSuchChild,
    Revoked,
}

impl Store {
    /// Every group this node's admin created, by name.
    pub fn groups(&self) -> Result<Vec<(String, GroupRecord)>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(db_err)?;
        let Some(table) = open_optional(&txn, GROUPS)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            out.push((
                k.value().to_string(),
                decode_record(v.value(), "group record")?,
            ));
        }
        Ok(out)
    }

    /// Every group this node's admin created, each with its members that are not
    /// revoked: the `groups` of this node's rule set (PROTOCOL.md §14.2).
    pub fn group_members(&self) -> Result<BTreeMap<String, BTreeSet<PublicKey>>, StoreError> {
        let mut out: BTreeMap<String, BTreeSet<PublicKey>> = self
            .groups()?
            .into_iter()
            .map(|(name, _)| (name, BTreeSet::new()))
            .collect();
        for (child, record) in self.children()? {
            if record.revoked {
                continue;
            }
            for g in &record.groups {
                if let Some(members) = out.get_mut(g) {
                    members.insert(PublicKey(child));
                }
            }
        }
        Ok(out)
    }

    /// Whether group `name` exists (the built-in [`ALL`] always does).
    pub fn has_group(&self, name: &str) -> Result<bool, StoreError> {
        if name == ALL {
            return Ok(true);
        }
        let db = self.db()?;
        let txn = db.begin_read().map_err(db_err)?;
        match open_optional(&txn, GROUPS)? {
            Some(t) => Ok(t.get(name).map_err(db_err)?.is_some()),
            None => Ok(false),
        }
    }

    /// Creates a group; false if it already exists. The caller checks the name.
    pub fn create_group(&self, name: &str, now: u64) -> Result<bool, StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(db_err)?;
        let created = {
            let mut table = txn.open_table(GROUPS).map_err(db_err)?;
            if name == ALL || table.get(name).map_err(db_err)?.is_some() {
                false
            } else {
                let record = GroupRecord { created: now };
                table
                    .insert(name, wire::encode(&record).as_slice())
                    .map_err(db_err)?;
                true
            }
        };
        txn.commit().map_err(db_err)?;
        Ok(created)
    }

    /// Deletes a group and takes every child out of it, in one transaction; false if
    /// there was no such group.
    pub fn delete_group(&self, name: &str) -> Result<bool, StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(db_err)?;
        let found = {
            let mut groups = txn.open_table(GROUPS).map_err(db_err)?;
            let found = groups.remove(name).map_err(db_err)?.is_some();
            if found {
                let mut children = txn.open_table(CHILDREN).map_err(db_err)?;
                let mut changed = Vec::new();
                for entry in children.iter().map_err(db_err)? {
                    let (k, v) = entry.map_err(db_err)?;
                    let mut r: ChildRecord = decode_record(v.value(), "child record")?;
                    if r.groups.iter().any(|g| g == name) {
                        r.groups.retain(|g| g != name);
                        changed.push((*k.value(), r));
                    }
                }
                for (k, r) in changed {
                    children
                        .insert(&k, wire::encode(&r).as_slice())
                        .map_err(db_err)?;
                }
            }
            found
        };
        txn.commit().map_err(db_err)?;
        Ok(found)
    }

    /// Puts a child into a group (`member`) or takes it out.
    pub fn set_member(
        &self,
        group: &str,
        child: &[u8; 32],
        member: bool,
    ) -> Result<MemberChange, StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(db_err)?;
        let outcome = {
            let exists = txn
                .open_table(GROUPS)
                .map_err(db_err)?
                .get(group)
                .map_err(db_err)?
                .is_some();
            let mut children = txn.open_table(CHILDREN).map_err(db_err)?;
            match read_child(&children, child)? {
                _ if !exists => MemberChange::NoSuchGroup,
                None => MemberChange::NoSuchChild,
                Some(r) if r.revoked => MemberChange::Revoked,
                Some(mut r) => {
                    let was = r.groups.iter().any(|g| g == group);
                    if was != member {
                        if member {
                            r.groups.push(group.to_string());
                            r.groups.sort();
                        } else {
                            r.groups.retain(|g| g != group);
                        }
                        children
                            .insert(child, wire::encode(&r).as_slice())
                            .map_err(db_err)?;
                    }
                    MemberChange::Changed(was != member)
                }
            }
        };
        txn.commit().map_err(db_err)?;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TokenRecord;

    fn store_with_child(dir: &std::path::Path, child: [u8; 32]) -> Store {
        let store = Store::create(dir).expect("store");
        let token = TokenRecord {
            used: false,
            client: false,
            groups: vec![],
            expires: u64::MAX,
        };
        let secret = crate::content::Hash([7; 32]);
        store.add_token(&secret, &token).expect("token");
        store
            .redeem_token(&secret, &child, 1)
            .expect("store")
            .expect("redeemed");
        store
    }

    #[test]
    fn groups_are_created_assigned_and_deleted_without_leaving_members_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = [1u8; 32];
        let store = store_with_child(dir.path(), child);
        assert!(store.groups().expect("groups").is_empty());
        assert!(store.create_group("pilot", 10).expect("create"));
        assert!(
            !store.create_group("pilot", 11).expect("again"),
            "no duplicate"
        );
        assert!(
            !store.create_group(ALL, 11).expect("all"),
            "all is built in"
        );
        assert!(store.has_group(ALL).expect("all"));

        let set = |g, m| store.set_member(g, &child, m).expect("set");
        assert_eq!(set("pilot", true), MemberChange::Changed(true));
        assert_eq!(set("pilot", true), MemberChange::Changed(false));
        assert_eq!(set("nope", true), MemberChange::NoSuchGroup);
        assert_eq!(
            store.set_member("pilot", &[2; 32], true).expect("set"),
            MemberChange::NoSuchChild
        );
        assert_eq!(
            store.child(&child).expect("get").expect("child").groups,
            ["pilot"]
        );

        assert!(store.delete_group("pilot").expect("delete"));
        assert!(!store.delete_group("pilot").expect("again"));
        assert!(
            store
                .child(&child)
                .expect("get")
                .expect("child")
                .groups
                .is_empty()
        );

        store.create_group("pilot", 12).expect("create");
        store.revoke_child(&child).expect("revoke");
        assert_eq!(set("pilot", true), MemberChange::Revoked);
    }
}
