//! The rule sets a node holds: the newest verified one of each ancestor and its own
//! (PROTOCOL.md §14.3), as the canonical envelope bytes it received or signed. They are
//! kept so that after a restart the node still refuses older versions, and still knows
//! what its children may have while its parent is unreachable.

use super::{Store, StoreError, db_err};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

/// Issuer node key → the canonical bytes of its newest rule set.
const RULES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("rules");

/// A kept rule set: its issuer's node key and its canonical bytes.
pub type KeptRules = ([u8; 32], Vec<u8>);

impl Store {
    /// Keeps `bytes` as the newest rule set of `issuer`, replacing the one before. The
    /// caller has verified it and checked that it is newer.
    pub fn put_rules(&self, issuer: &[u8; 32], bytes: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.open_table(RULES)
            .map_err(db_err)?
            .insert(issuer, bytes)
            .map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    /// Every rule set kept, by issuer. They are untrusted until checked again: the
    /// store file is the operator's.
    pub fn rules(&self) -> Result<Vec<KeptRules>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(RULES) {
            Ok(t) => t,
            // A store made before rules existed has no table until the first rule set.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            out.push((*k.value(), v.value().to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_rule_set_of_each_issuer_is_kept_across_reopening() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let store = Store::create(dir.path()).expect("store");
            assert!(store.rules().expect("rules").is_empty());
            store.put_rules(&[1; 32], b"one").expect("put");
            store.put_rules(&[2; 32], b"two").expect("put");
            store.put_rules(&[1; 32], b"one, newer").expect("put");
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(
            store.rules().expect("rules"),
            vec![
                ([1; 32], b"one, newer".to_vec()),
                ([2; 32], b"two".to_vec())
            ]
        );
    }
}
