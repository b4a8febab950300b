//! Counts for the metrics endpoint (volumes, snapshots, jobs and exports
//! grouped by their labels) and the clean close at shutdown.

use super::{Result, Store};

/// One group of rows: its labels, how many, and their bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub labels: Vec<String>,
    pub count: u64,
    pub bytes: u64,
}

/// What the store holds, grouped for metrics.
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    /// By backend and state.
    pub volumes: Vec<Group>,
    /// By status.
    pub snapshots: Vec<Group>,
    /// By kind and state.
    pub jobs: Vec<Group>,
    /// By kind.
    pub exports: Vec<Group>,
}

impl Store {
    pub fn stats(&self) -> Result<StoreStats> {
        self.read(|c| {
            let group = |sql: &str, n: usize| -> Result<Vec<Group>> {
                let mut st = c.prepare(sql)?;
                let rows = st.query_map([], |r| {
                    let mut labels = Vec::with_capacity(n);
                    for i in 0..n {
                        labels.push(r.get::<_, String>(i)?);
                    }
                    let count: i64 = r.get(n)?;
                    let gib: i64 = r.get(n + 1)?;
                    Ok(Group {
                        labels,
                        count: count.max(0) as u64,
                        bytes: (gib.max(0) as u64) << 30,
                    })
                })?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            };
            Ok(StoreStats {
                volumes: group(
                    "SELECT backend, state, COUNT(*), COALESCE(SUM(size_gib), 0) FROM volumes GROUP BY backend, state",
                    2,
                )?,
                snapshots: group(
                    "SELECT status, COUNT(*), COALESCE(SUM(size_gib), 0) FROM snapshots GROUP BY status",
                    1,
                )?,
                jobs: group(
                    "SELECT kind, state, COUNT(*), 0 FROM jobs GROUP BY kind, state",
                    2,
                )?,
                exports: group("SELECT kind, COUNT(*), 0 FROM exports GROUP BY kind", 1)?,
            })
        })
    }

    /// Cheap check that the database answers.
    pub fn ping(&self) -> Result<()> {
        self.with(|c| {
            Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map(|_| ())?)
        })
    }

    /// Folds the write-ahead log into the database so that the files left
    /// at exit are complete on their own.
    pub fn close_clean(&self) -> Result<()> {
        self.with(|c| {
            c.execute_batch("PRAGMA optimize;")?;
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(())
        })
    }
}
