//! The newest report of each child (PROTOCOL.md §15), as the canonical envelope bytes
//! it sent: kept so that a parent that restarts while a child is offline still counts
//! that child in its roll-up.

use super::{Store, StoreError, db_err};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

/// Child node key → the canonical bytes of its newest report.
const REPORTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("reports");

/// A kept report: its child's node key and its canonical bytes.
pub type KeptReport = ([u8; 32], Vec<u8>);

impl Store {
    /// Keeps each child's newest report, replacing the ones before, in one transaction.
    /// The caller has verified them and checked that they are newer.
    pub fn put_reports<'a>(
        &self,
        reports: impl IntoIterator<Item = (&'a [u8; 32], &'a [u8])>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(REPORTS).map_err(db_err)?;
            for (child, bytes) in reports {
                table.insert(child, bytes).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    /// Forgets a child's report (it was revoked).
    pub fn remove_report(&self, child: &[u8; 32]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.open_table(REPORTS)
            .map_err(db_err)?
            .remove(child)
            .map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    /// Every report kept. They are untrusted until checked again: the store file is the
    /// operator's.
    pub fn reports(&self) -> Result<Vec<KeptReport>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(REPORTS) {
            Ok(t) => t,
            // A store made before reports existed has no table until the first report.
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
    fn the_newest_report_of_each_child_is_kept_until_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let store = Store::create(dir.path()).expect("store");
            assert!(store.reports().expect("reports").is_empty());
            store
                .put_reports([(&[1; 32], &b"one"[..]), (&[2; 32], &b"two"[..])])
                .expect("put");
            store.put_reports([(&[1; 32], &b"newer"[..])]).expect("put");
            store.remove_report(&[2; 32]).expect("remove");
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(
            store.reports().expect("reports"),
            vec![([1; 32], b"newer".to_vec())]
        );
    }
}
