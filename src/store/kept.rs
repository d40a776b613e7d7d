//! Signed objects a node keeps by node key, as the canonical envelope bytes it received
//! or signed: the newest rule set of each node on its path and its own (PROTOCOL.md
//! §14.3: after a restart older versions are still refused, and what its children may
//! have is still known while its parent is unreachable), and the newest report of each
//! child (§15: a parent that restarts while a child is offline still counts that
//! child). They are untrusted when read back: the store file is the operator's, so
//! callers check them again.

use super::{Store, StoreError, db_err, open_optional};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

/// Node key → canonical bytes.
type Kept = TableDefinition<'static, &'static [u8; 32], &'static [u8]>;

/// Issuer → its newest rule set.
const RULES: Kept = TableDefinition::new("rules");
/// Child → its newest report.
const REPORTS: Kept = TableDefinition::new("reports");

/// One kept object: the node key it is kept under, and its bytes.
pub type KeptBytes = ([u8; 32], Vec<u8>);

impl Store {
    /// Keeps `bytes` as the newest rule set of `issuer`, replacing the one before. The
    /// caller has verified it and checked that it is newer.
    pub fn put_rules(&self, issuer: &[u8; 32], bytes: &[u8]) -> Result<(), StoreError> {
        self.put_kept(RULES, [(issuer, bytes)])
    }

    /// Every rule set kept, by issuer.
    pub fn rules(&self) -> Result<Vec<KeptBytes>, StoreError> {
        self.kept(RULES)
    }

    /// Keeps each child's newest report, replacing the ones before, in one commit. The
    /// caller has verified them and checked that they are newer.
    pub fn put_reports<'a>(
        &self,
        reports: impl IntoIterator<Item = (&'a [u8; 32], &'a [u8])>,
    ) -> Result<(), StoreError> {
        self.put_kept(REPORTS, reports)
    }

    /// Every report kept, by child.
    pub fn reports(&self) -> Result<Vec<KeptBytes>, StoreError> {
        self.kept(REPORTS)
    }

    /// Forgets a child's report (it was revoked).
    pub fn remove_report(&self, child: &[u8; 32]) -> Result<(), StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(REPORTS)
            .map_err(db_err)?
            .remove(child)
            .map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    fn put_kept<'a>(
        &self,
        table: Kept,
        entries: impl IntoIterator<Item = (&'a [u8; 32], &'a [u8])>,
    ) -> Result<(), StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(table).map_err(db_err)?;
            for (key, bytes) in entries {
                table.insert(key, bytes).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    fn kept(&self, table: Kept) -> Result<Vec<KeptBytes>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(db_err)?;
        let Some(table) = open_optional(&txn, table)? else {
            return Ok(Vec::new());
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
    fn the_newest_rule_set_and_report_of_each_node_are_kept_across_reopening() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let store = Store::create(dir.path()).expect("store");
            assert!(store.rules().expect("rules").is_empty());
            assert!(store.reports().expect("reports").is_empty());
            store.put_rules(&[1; 32], b"one").expect("put");
            store.put_rules(&[2; 32], b"two").expect("put");
            store.put_rules(&[1; 32], b"one, newer").expect("put");
            store
                .put_reports([(&[1; 32], &b"r1"[..]), (&[2; 32], &b"r2"[..])])
                .expect("put");
            store
                .put_reports([(&[1; 32], &b"r1, newer"[..])])
                .expect("put");
            store.remove_report(&[2; 32]).expect("remove");
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(
            store.rules().expect("rules"),
            vec![
                ([1; 32], b"one, newer".to_vec()),
                ([2; 32], b"two".to_vec())
            ]
        );
        assert_eq!(
            store.reports().expect("reports"),
            vec![([1; 32], b"r1, newer".to_vec())]
        );
    }
}
