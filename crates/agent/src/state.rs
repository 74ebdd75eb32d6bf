//! The daemon's saved state: JSON records by id in tables of one embedded database
//! (non-volatile downloads, BITS jobs).

use std::{path::Path, sync::Arc};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::{Serialize, de::DeserializeOwned};
use tracing::warn;

/// One table of saved records; without a database, nothing is kept.
pub(crate) struct Records {
    db: Option<Arc<Database>>,
    table: TableDefinition<'static, &'static str, &'static [u8]>,
}

impl Records {
    /// The table named `name` of `db`.
    pub(crate) fn new(db: Option<Arc<Database>>, name: &'static str) -> Self {
        Self {
            db,
            table: TableDefinition::new(name),
        }
    }

    /// Saves `record` under `id` (a failure is logged: the live state stays right).
    pub(crate) fn put<T: Serialize>(&self, id: &str, record: &T) {
        let bytes = serde_json::to_vec(record).expect("saved records serialise");
        self.write(id, |table| table.insert(id, bytes.as_slice()).map(drop));
    }

    /// Forgets `id`.
    pub(crate) fn remove(&self, id: &str) {
        self.write(id, |table| table.remove(id).map(drop));
    }

    /// Every saved record; unreadable ones are skipped with a warning.
    pub(crate) fn load<T: DeserializeOwned>(&self) -> Vec<(String, T)> {
        match self.try_load() {
            Ok(records) => records,
            Err(e) => {
                warn!(table = self.table.name(), error = %e, "could not read the saved records");
                Vec::new()
            }
        }
    }

    fn try_load<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, redb::Error> {
        let Some(db) = &self.db else {
            return Ok(Vec::new());
        };
        let txn = db.begin_write()?;
        txn.open_table(self.table)?;
        txn.commit()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(self.table)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            match serde_json::from_slice(v.value()) {
                Ok(r) => out.push((k.value().to_owned(), r)),
                Err(e) => warn!(id = k.value(), error = %e, "skipping an unreadable saved record"),
            }
        }
        Ok(out)
    }

    fn write(
        &self,
        id: &str,
        f: impl FnOnce(
            &mut redb::Table<'_, &'static str, &'static [u8]>,
        ) -> Result<(), redb::StorageError>,
    ) {
        let Some(db) = &self.db else { return };
        let result = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            f(&mut txn.open_table(self.table)?)?;
            txn.commit()?;
            Ok(())
        })();
        if let Err(e) = result {
            warn!(table = self.table.name(), %id, error = %e, "could not save the record");
        }
    }
}

/// Opens the daemon's state database; one that cannot be read is moved aside and replaced by
/// an empty one.
pub(crate) fn open(path: &Path) -> Option<Arc<Database>> {
    let db = match Database::create(path) {
        Ok(db) => Some(db),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "daemon state unreadable; starting without it");
            let _ = std::fs::rename(path, path.with_extension("corrupt"));
            Database::create(path).ok()
        }
    };
    db.map(Arc::new)
}
