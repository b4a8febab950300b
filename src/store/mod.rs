//! The metadata store: one SQLite database (WAL, synchronous commits) with
//! versioned migrations. All SQL in blockd lives here, behind typed calls;
//! each call that changes state runs in one transaction.

mod images;
pub mod model;
mod transfers;

pub use transfers::{Acceptance, Transfer, TransferQuery, TransferQuota, TransferState};
mod stats;
pub use images::ImageMetaChange;
pub use stats::{Group, StoreStats};

use model::*;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("volume is {0}")]
    WrongState(VolumeState),
    #[error("{0}")]
    Conflict(String),
    #[error("marker {0} not found")]
    MarkerNotFound(String),
    #[error("quota exceeded for {resource}: limit {limit}, in use {in_use}, requested {requested}")]
    Quota {
        resource: &'static str,
        limit: u64,
        in_use: u64,
        requested: u64,
    },
    /// The filesystem under the database is full: nothing was written.
    #[error("the database cannot be written, its filesystem is full: {0}")]
    NoSpace(rusqlite::Error),
    #[error("database: {0}")]
    Db(rusqlite::Error),
    #[error("stored row is damaged: {0}")]
    Corrupt(String),
}

/// A stable name for each error, to match on without the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    NotFound,
    WrongState,
    Conflict,
    MarkerNotFound,
    Quota,
    NoSpace,
    Db,
}

impl StoreError {
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            StoreError::NotFound => StoreErrorKind::NotFound,
            StoreError::WrongState(_) => StoreErrorKind::WrongState,
            StoreError::Conflict(_) => StoreErrorKind::Conflict,
            StoreError::MarkerNotFound(_) => StoreErrorKind::MarkerNotFound,
            StoreError::Quota { .. } => StoreErrorKind::Quota,
            StoreError::NoSpace(_) => StoreErrorKind::NoSpace,
            StoreError::Db(_) | StoreError::Corrupt(_) => StoreErrorKind::Db,
        }
    }
}

/// A full disk is told apart from other database failures: the
/// transaction was rolled back, and a retry works once space is freed.
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::NoSpace(e),
            _ => StoreError::Db(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Checked inside the same transaction that adds the usage.
#[derive(Debug, Clone, Copy)]
pub struct QuotaCheck {
    pub volumes_limit: u64,
    pub gigabytes_limit: u64,
    pub add_volumes: u64,
    pub add_gigabytes: u64,
}

/// A state change that starts a job.
pub struct Transition<'a> {
    pub allowed: &'a [VolumeState],
    pub to: VolumeState,
    pub job: &'a Job,
    pub quota: Option<&'a QuotaCheck>,
    pub now: &'a str,
}

/// What finishing a job does to its volume.
#[derive(Debug, Clone)]
pub enum VolumeEffect {
    Nothing,
    SetState {
        state: VolumeState,
        size_gib: Option<u64>,
        error_reason: Option<String>,
    },
    /// Removes one attachment and sets the state the remaining ones imply.
    DropAttachment {
        attachment_id: String,
        error_reason: Option<String>,
    },
    Remove,
}

/// How a snapshot job ended. `status` None removes the snapshot row.
pub struct SnapshotJobEnd<'a> {
    pub job_id: &'a str,
    pub job_state: JobState,
    pub error: Option<&'a str>,
    pub snapshot_id: &'a str,
    pub status: Option<SnapshotStatus>,
    pub checksum: Option<&'a str>,
    pub now: &'a str,
}

/// An attach request, checked and recorded in one transaction.
pub struct NewAttachment<'a> {
    pub volume_id: &'a str,
    pub server_id: &'a str,
    pub delete_on_termination: bool,
    pub job: &'a Job,
    pub now: &'a str,
}

/// Where an attached volume is exposed on the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Export {
    pub volume_id: String,
    pub kind: String,
    pub host_path: String,
    pub created_at: String,
    /// The guest sees the volume read-only.
    pub read_only: bool,
}

/// Guest device names handed out per server, in order.
pub const DEVICE_NAMES: &str = "bcdefghijklmnopqrstuvwxyz";

fn attachment_from_row(r: &Row) -> rusqlite::Result<Attachment> {
    Ok(Attachment {
        id: r.get(0)?,
        volume_id: r.get(1)?,
        server_id: r.get(2)?,
        device: r.get(3)?,
        attached_at: r.get(4)?,
        delete_on_termination: r.get(5)?,
    })
}

macro_rules! attachment_cols {
    () => {
        "id, volume_id, server_id, device, attached_at, delete_on_termination"
    };
}
const ATTACHMENT_COLS: &str = attachment_cols!();

/// Fields an update may change; None leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct VolumePatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub max_iops: Option<u32>,
    pub max_throughput: Option<u32>,
    pub bootable: Option<bool>,
    pub tags: Option<TagChange>,
}

/// A change to a volume's tags (Cinder calls them metadata).
#[derive(Debug, Clone)]
pub enum TagChange {
    /// Replace all tags with these.
    Replace(Vec<Tag>),
    /// Add or overwrite these keys.
    Merge(Vec<Tag>),
    /// Remove one key.
    Delete(String),
}

/// The triggers that keep `row_counts` for table `$t` (migration 7).
macro_rules! count_triggers {
    ($t:literal) => {
        concat!(
            "CREATE TRIGGER ",
            $t,
            "_count_insert AFTER INSERT ON ",
            $t,
            " BEGIN
                INSERT INTO row_counts (tbl, project_id, n) VALUES ('",
            $t,
            "', NEW.project_id, 1)
                    ON CONFLICT (tbl, project_id) DO UPDATE SET n = n + 1;
            END;
            CREATE TRIGGER ",
            $t,
            "_count_delete AFTER DELETE ON ",
            $t,
            " BEGIN
                UPDATE row_counts SET n = n - 1 WHERE tbl = '",
            $t,
            "' AND project_id = OLD.project_id;
            END;
            CREATE TRIGGER ",
            $t,
            "_count_move AFTER UPDATE OF project_id ON ",
            $t,
            "
            WHEN OLD.project_id IS NOT NEW.project_id BEGIN
                UPDATE row_counts SET n = n - 1 WHERE tbl = '",
            $t,
            "' AND project_id = OLD.project_id;
                INSERT INTO row_counts (tbl, project_id, n) VALUES ('",
            $t,
            "', NEW.project_id, 1)
                    ON CONFLICT (tbl, project_id) DO UPDATE SET n = n + 1;
            END;"
        )
    };
}

const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE volumes (
        id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        size_gib INTEGER NOT NULL,
        volume_type_id TEXT NOT NULL,
        volume_type TEXT NOT NULL,
        state TEXT NOT NULL,
        bootable INTEGER NOT NULL DEFAULT 0,
        encrypted INTEGER NOT NULL DEFAULT 0,
        multiattach INTEGER NOT NULL DEFAULT 0,
        snapshot_id TEXT,
        source_volid TEXT,
        max_iops INTEGER,
        max_throughput INTEGER,
        backend TEXT NOT NULL,
        error_reason TEXT,
        created_at TEXT NOT NULL,
        modified_at TEXT NOT NULL
    );
    CREATE INDEX volumes_project_created ON volumes(project_id, created_at, id);
    CREATE INDEX volumes_project_modified ON volumes(project_id, modified_at, id);
    CREATE INDEX volumes_project_name ON volumes(project_id, name, id);
    CREATE INDEX volumes_project_size ON volumes(project_id, size_gib, id);
    CREATE INDEX volumes_project_state ON volumes(project_id, state, created_at, id);
    CREATE INDEX volumes_created ON volumes(created_at, id);
    CREATE INDEX volumes_state ON volumes(state);

    CREATE TABLE volume_tags (
        volume_id TEXT NOT NULL REFERENCES volumes(id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT,
        PRIMARY KEY (volume_id, key)
    );

    CREATE TABLE attachments (
        id TEXT PRIMARY KEY,
        volume_id TEXT NOT NULL REFERENCES volumes(id) ON DELETE CASCADE,
        server_id TEXT NOT NULL,
        device TEXT NOT NULL,
        attached_at TEXT NOT NULL,
        delete_on_termination INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX attachments_volume ON attachments(volume_id);
    CREATE UNIQUE INDEX attachments_server_device ON attachments(server_id, device);

    CREATE TABLE snapshots (
        id TEXT PRIMARY KEY,
        volume_id TEXT NOT NULL,
        project_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT,
        size_gib INTEGER NOT NULL,
        status TEXT NOT NULL,
        metadata TEXT,
        checksum TEXT,
        error_reason TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX snapshots_volume ON snapshots(volume_id);
    CREATE INDEX snapshots_project_created ON snapshots(project_id, created_at, id);

    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        volume_id TEXT,
        project_id TEXT NOT NULL,
        state TEXT NOT NULL,
        params TEXT NOT NULL DEFAULT '{}',
        error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX jobs_unfinished ON jobs(state) WHERE state IN ('pending', 'running');
    CREATE INDEX jobs_volume ON jobs(volume_id, created_at);
    "#,
    // 2: host exports of attached volumes.
    r#"
    CREATE TABLE exports (
        volume_id TEXT PRIMARY KEY REFERENCES volumes(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        host_path TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX attachments_server ON attachments(server_id);
    "#,
    // 3: volume transfers between projects.
    r#"
    CREATE TABLE transfers (
        id TEXT PRIMARY KEY,
        volume_id TEXT NOT NULL,
        project_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        name TEXT,
        salt TEXT NOT NULL,
        key_hash TEXT NOT NULL,
        no_snapshots INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        destination_project_id TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX transfers_project_created ON transfers(project_id, created_at, id);
    CREATE INDEX transfers_pending_created ON transfers(created_at, id) WHERE state = 'pending';
    CREATE UNIQUE INDEX transfers_pending_volume ON transfers(volume_id) WHERE state = 'pending';
    "#,
    // 4: per-volume admin metadata (readonly, attach mode), and quota
    // limits set through the API.
    r#"
    CREATE TABLE volume_admin_metadata (
        volume_id TEXT NOT NULL REFERENCES volumes(id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (volume_id, key)
    );
    CREATE TABLE quota_limits (
        project_id TEXT NOT NULL,
        resource TEXT NOT NULL,
        hard_limit INTEGER NOT NULL,
        PRIMARY KEY (project_id, resource)
    );
    "#,
    // 5: the image a volume was made from (Cinder's volume_image_metadata).
    r#"
    CREATE TABLE volume_image_metadata (
        volume_id TEXT NOT NULL REFERENCES volumes(id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (volume_id, key)
    );
    "#,
    // 6: exports remember whether the guest sees them read-only (the kind
    // column says loop or vhost-user-blk).
    r#"
    ALTER TABLE exports ADD COLUMN read_only INTEGER NOT NULL DEFAULT 0;
    "#,
    // 7: row counts per project for volumes and snapshots, kept by
    // triggers in the same transaction as the change, so an unfiltered
    // counted list does not scan every row of the project.
    concat!(
        r#"
    CREATE TABLE row_counts (
        tbl TEXT NOT NULL,
        project_id TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (tbl, project_id)
    ) WITHOUT ROWID;
    INSERT INTO row_counts (tbl, project_id, n)
        SELECT 'volumes', project_id, COUNT(*) FROM volumes GROUP BY project_id;
    INSERT INTO row_counts (tbl, project_id, n)
        SELECT 'snapshots', project_id, COUNT(*) FROM snapshots GROUP BY project_id;
    "#,
        count_triggers!("volumes"),
        count_triggers!("snapshots"),
    ),
];

pub struct Store {
    /// The one writer; reads fall back to it when there are no readers.
    conn: Mutex<Connection>,
    /// Read-only connections, so reads do not wait behind a commit's fsync.
    readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
}

/// Read connections opened beside the writer.
const READERS: usize = 4;

/// Prepared statements kept per connection; the list queries alone take
/// several shapes, and rusqlite's default of 16 let them evict each other.
const STATEMENT_CACHE: usize = 64;

/// The volume columns `volume_from_row` reads, as a literal so that hot
/// queries can be built with `concat!` rather than on every call.
macro_rules! volume_cols {
    () => {
        "id, project_id, user_id, name, description, size_gib, volume_type_id, \
         volume_type, state, bootable, encrypted, multiattach, snapshot_id, source_volid, max_iops, \
         max_throughput, backend, error_reason, created_at, modified_at"
    };
}
const VOLUME_COLS: &str = volume_cols!();

const JOB_COLS: &str =
    "id, kind, volume_id, project_id, state, params, error, created_at, updated_at";

fn volume_from_row(r: &Row) -> rusqlite::Result<Volume> {
    let state: String = r.get(8)?;
    let state = VolumeState::parse(&state).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            8,
            rusqlite::types::Type::Text,
            format!("unknown volume state {state:?}").into(),
        )
    })?;
    Ok(Volume {
        id: r.get(0)?,
        project_id: r.get(1)?,
        user_id: r.get(2)?,
        name: r.get(3)?,
        description: r.get(4)?,
        size_gib: r.get(5)?,
        volume_type_id: r.get(6)?,
        volume_type: r.get(7)?,
        state,
        bootable: r.get(9)?,
        encrypted: r.get(10)?,
        multiattach: r.get(11)?,
        snapshot_id: r.get(12)?,
        source_volid: r.get(13)?,
        max_iops: r.get(14)?,
        max_throughput: r.get(15)?,
        backend: r.get(16)?,
        error_reason: r.get(17)?,
        created_at: r.get(18)?,
        modified_at: r.get(19)?,
    })
}

const SNAPSHOT_COLS: &str = "id, volume_id, project_id, user_id, name, description, size_gib, \
    status, metadata, checksum, error_reason, created_at, updated_at";

fn snapshot_from_row(r: &Row) -> rusqlite::Result<Snapshot> {
    let status: String = r.get(7)?;
    Ok(Snapshot {
        id: r.get(0)?,
        volume_id: r.get(1)?,
        project_id: r.get(2)?,
        user_id: r.get(3)?,
        name: r.get(4)?,
        description: r.get(5)?,
        size_gib: r.get(6)?,
        status: SnapshotStatus::parse(&status).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                7,
                rusqlite::types::Type::Text,
                format!("unknown snapshot status {status:?}").into(),
            )
        })?,
        metadata: r.get(8)?,
        checksum: r.get(9)?,
        error_reason: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
    })
}

fn get_snapshot_in(c: &Connection, project: Option<&str>, id: &str) -> Result<Snapshot> {
    c.query_row(
        &format!(
            "SELECT {SNAPSHOT_COLS} FROM snapshots WHERE id = ?1 AND (?2 IS NULL OR project_id = ?2)"
        ),
        params![id, project],
        snapshot_from_row,
    )
    .optional()?
    .ok_or(StoreError::NotFound)
}

fn job_from_row(r: &Row) -> rusqlite::Result<Job> {
    let bad = |i, what: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, what.into())
    };
    let kind: String = r.get(1)?;
    let state: String = r.get(4)?;
    Ok(Job {
        id: r.get(0)?,
        kind: JobKind::parse(&kind).ok_or_else(|| bad(1, format!("unknown job kind {kind:?}")))?,
        volume_id: r.get(2)?,
        project_id: r.get(3)?,
        state: JobState::parse(&state)
            .ok_or_else(|| bad(4, format!("unknown job state {state:?}")))?,
        params: r.get(5)?,
        error: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
    })
}

fn insert_volume(tx: &Transaction, v: &Volume) -> rusqlite::Result<()> {
    let mut st = tx.prepare_cached(&format!(
        "INSERT INTO volumes ({VOLUME_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, \
         ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
    ))?;
    st.execute(params![
        v.id,
        v.project_id,
        v.user_id,
        v.name,
        v.description,
        v.size_gib,
        v.volume_type_id,
        v.volume_type,
        v.state.as_str(),
        v.bootable,
        v.encrypted,
        v.multiattach,
        v.snapshot_id,
        v.source_volid,
        v.max_iops,
        v.max_throughput,
        v.backend,
        v.error_reason,
        v.created_at,
        v.modified_at
    ])?;
    Ok(())
}

fn insert_job(tx: &Transaction, j: &Job) -> rusqlite::Result<()> {
    tx.execute(
        &format!("INSERT INTO jobs ({JOB_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
        params![
            j.id,
            j.kind.as_str(),
            j.volume_id,
            j.project_id,
            j.state.as_str(),
            j.params,
            j.error,
            j.created_at,
            j.updated_at
        ],
    )?;
    Ok(())
}

fn usage_in(tx: &Connection, project: &str) -> rusqlite::Result<Usage> {
    let (volumes, gigabytes): (u64, u64) = tx.query_row(
        "SELECT COUNT(*), COALESCE(SUM(size_gib), 0) FROM volumes WHERE project_id = ?1",
        [project],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let snapshots: u64 = tx.query_row(
        "SELECT COUNT(*) FROM snapshots WHERE project_id = ?1",
        [project],
        |r| r.get(0),
    )?;
    Ok(Usage {
        volumes,
        gigabytes,
        snapshots,
    })
}

fn check_quota(tx: &Connection, project: &str, q: &QuotaCheck) -> Result<()> {
    let u = usage_in(tx, project)?;
    if u.volumes + q.add_volumes > q.volumes_limit {
        return Err(StoreError::Quota {
            resource: "volumes",
            limit: q.volumes_limit,
            in_use: u.volumes,
            requested: q.add_volumes,
        });
    }
    if u.gigabytes + q.add_gigabytes > q.gigabytes_limit {
        return Err(StoreError::Quota {
            resource: "gigabytes",
            limit: q.gigabytes_limit,
            in_use: u.gigabytes,
            requested: q.add_gigabytes,
        });
    }
    Ok(())
}

fn change_tags(tx: &Connection, id: &str, change: &TagChange) -> rusqlite::Result<()> {
    let put = |tags: &[Tag]| -> rusqlite::Result<()> {
        for t in tags {
            tx.execute(
                "INSERT OR REPLACE INTO volume_tags (volume_id, key, value) VALUES (?1, ?2, ?3)",
                params![id, t.key, t.value],
            )?;
        }
        Ok(())
    };
    match change {
        TagChange::Replace(tags) => {
            tx.execute("DELETE FROM volume_tags WHERE volume_id = ?1", [id])?;
            put(tags)
        }
        TagChange::Merge(tags) => put(tags),
        TagChange::Delete(key) => {
            tx.execute(
                "DELETE FROM volume_tags WHERE volume_id = ?1 AND key = ?2",
                params![id, key],
            )?;
            Ok(())
        }
    }
}

fn get_volume_in(c: &Connection, project: Option<&str>, id: &str) -> Result<Volume> {
    let v = match project {
        // Cached: shows are the commonest request, and parsing the SQL
        // each time cost more than running it.
        Some(p) => c
            .prepare_cached(concat!(
                "SELECT ",
                volume_cols!(),
                " FROM volumes WHERE id = ?1 AND project_id = ?2"
            ))?
            .query_row(params![id, p], volume_from_row)
            .optional()?,
        None => c
            .prepare_cached(concat!(
                "SELECT ",
                volume_cols!(),
                " FROM volumes WHERE id = ?1"
            ))?
            .query_row(params![id], volume_from_row)
            .optional()?,
    };
    v.ok_or(StoreError::NotFound)
}

/// A volume's row, its attachments, and its image metadata by key.
pub type VolumeRows = (Volume, Vec<Attachment>, Vec<(String, String)>);

fn attachments_in(c: &Connection, volume_id: &str) -> Result<Vec<Attachment>> {
    let mut st = c.prepare_cached(concat!(
        "SELECT ",
        attachment_cols!(),
        " FROM attachments WHERE volume_id = ?1 ORDER BY attached_at, id"
    ))?;
    let rows = st.query_map([volume_id], attachment_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Runs `f` in one read transaction, which ends whether `f` succeeds or
/// not. Its statements are cached like any other.
fn in_read_transaction<T>(c: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    c.prepare_cached("BEGIN")?.execute([])?;
    let out = f(c);
    let end = c.prepare_cached("COMMIT").and_then(|mut s| s.execute([]));
    let out = out?;
    end?;
    Ok(out)
}

/// The number of rows of `tbl` in `project` (or in all projects), as the
/// triggers of migration 7 keep it.
fn kept_count(c: &Connection, tbl: &str, project: Option<&str>) -> Result<u64> {
    let n: i64 = match project {
        Some(p) => c
            .prepare_cached("SELECT n FROM row_counts WHERE tbl = ?1 AND project_id = ?2")?
            .query_row(params![tbl, p], |r| r.get(0))
            .optional()?
            .unwrap_or(0),
        None => c
            .prepare_cached("SELECT COALESCE(SUM(n), 0) FROM row_counts WHERE tbl = ?1")?
            .query_row(params![tbl], |r| r.get(0))?,
    };
    Ok(n.max(0) as u64)
}

/// Settings every connection gets. The query planner stability guarantee
/// keeps a cached statement's plan independent of its bound values:
/// without it SQLite re-parses some cached statements (those with an ORDER
/// BY, for one) on every run, which cost more than running them.
fn configure(c: &Connection) -> Result<()> {
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    c.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    c.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    // Reads map the database rather than copy pages in with pread; this
    // reserves address space, not memory.
    c.query_row("PRAGMA mmap_size = 268435456", [], |_| Ok(()))?;
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        let mut store = Store::init(conn)?;
        for _ in 0..READERS {
            let r = Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            configure(&r)?;
            store.readers.push(Mutex::new(r));
        }
        Ok(store)
    }

    /// Opens an existing database for reading only (operator tools beside
    /// a running daemon). It must already be migrated.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure(&conn)?;
        let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version != MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "database schema version {version}, this blockd expects {}",
                MIGRATIONS.len()
            )));
        }
        Ok(Store {
            conn: Mutex::new(conn),
            readers: Vec::new(),
            next_reader: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn init(mut conn: Connection) -> Result<Store> {
        configure(&conn)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if mode != "wal" && mode != "memory" {
            return Err(StoreError::Corrupt(format!(
                "journal mode is {mode}, expected wal"
            )));
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
        let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "database schema version {version} is newer than this blockd ({})",
                MIGRATIONS.len()
            )));
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction()?;
            tx.execute_batch(m)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
            tracing::info!(version = i + 1, "applied store migration");
        }
        Ok(Store {
            conn: Mutex::new(conn),
            readers: Vec::new(),
            next_reader: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        // A poisoned lock only means another caller panicked mid-call; SQLite
        // rolled its transaction back, so the connection is still sound.
        let mut c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c)
    }

    /// Runs a query on a free read connection (each sees every commit made
    /// before it starts), or on the writer when there are none.
    fn read<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        if self.readers.is_empty() {
            return self.with(f);
        }
        let n = self.readers.len();
        let start = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for i in 0..n {
            if let Ok(mut c) = self.readers[(start + i) % n].try_lock() {
                return f(&mut c);
            }
        }
        let mut c = self.readers[start % n]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        f(&mut c)
    }

    fn write<T>(&self, f: impl FnOnce(&Transaction) -> Result<T>) -> Result<T> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    pub fn schema_version(&self) -> Result<usize> {
        self.with(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
    }

    pub fn integrity_check(&self) -> Result<String> {
        self.with(|c| Ok(c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?))
    }

    /// Inserts a new volume, its tags and its create job, after checking the
    /// project's quota in the same transaction.
    pub fn create_volume(
        &self,
        v: &Volume,
        tags: &[Tag],
        job: &Job,
        quota: &QuotaCheck,
    ) -> Result<()> {
        self.write(|tx| {
            check_quota(tx, &v.project_id, quota)?;
            insert_volume(tx, v)?;
            for t in tags {
                tx.execute(
                    "INSERT OR REPLACE INTO volume_tags (volume_id, key, value) VALUES (?1, ?2, ?3)",
                    params![v.id, t.key, t.value],
                )?;
            }
            insert_job(tx, job)?;
            Ok(())
        })
    }

    /// Inserts many volumes with their finished create jobs in one
    /// transaction and without quota checks: bulk imports and benchmarks.
    pub fn import_volumes(&self, items: &[(Volume, Job)]) -> Result<()> {
        self.write(|tx| {
            for (v, j) in items {
                insert_volume(tx, v)?;
                insert_job(tx, j)?;
            }
            Ok(())
        })
    }

    pub fn get_volume(&self, project: Option<&str>, id: &str) -> Result<Volume> {
        self.read(|c| get_volume_in(c, project, id))
    }

    pub fn volume_tags(&self, id: &str) -> Result<Vec<Tag>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT key, value FROM volume_tags WHERE volume_id = ?1 ORDER BY key",
            )?;
            let rows = st.query_map([id], |r| {
                Ok(Tag {
                    key: r.get(0)?,
                    value: r.get(1)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    pub fn attachments(&self, volume_id: &str) -> Result<Vec<Attachment>> {
        self.read(|c| attachments_in(c, volume_id))
    }

    /// A volume with its attachments and image metadata, read in one
    /// transaction so that the three agree (and lock the database once).
    pub fn volume_detail(&self, project: Option<&str>, id: &str) -> Result<VolumeRows> {
        self.read(|c| {
            in_read_transaction(c, |c| {
                let v = get_volume_in(c, project, id)?;
                let a = attachments_in(c, id)?;
                let m = images::image_metadata_in(c, id)?;
                Ok((v, a, m))
            })
        })
    }

    /// The attachments of several volumes in one query (a list page), in
    /// the same order per volume as `attachments`.
    pub fn attachments_of(&self, volume_ids: &[&str]) -> Result<Vec<Attachment>> {
        if volume_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = serde_json::to_string(volume_ids)
            .map_err(|e| StoreError::Corrupt(format!("volume ids as JSON: {e}")))?;
        self.read(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {ATTACHMENT_COLS} FROM attachments WHERE volume_id IN \
                 (SELECT value FROM json_each(?1)) ORDER BY attached_at, id"
            ))?;
            let rows = st.query_map([ids], attachment_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// A server's attachments, limited to volumes of `project` when given.
    pub fn server_attachments(
        &self,
        project: Option<&str>,
        server_id: &str,
    ) -> Result<Vec<Attachment>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT a.id, a.volume_id, a.server_id, a.device, a.attached_at, a.delete_on_termination \
                 FROM attachments a JOIN volumes v ON v.id = a.volume_id \
                 WHERE a.server_id = ?1 AND (?2 IS NULL OR v.project_id = ?2) ORDER BY a.device",
            )?;
            let rows = st.query_map(params![server_id, project], attachment_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Records an attachment with the server's next free device name and
    /// moves the volume to attaching, in one transaction. A volume may be
    /// attached when available, or when in use and multiattach.
    pub fn begin_attach(&self, project: Option<&str>, a: &NewAttachment) -> Result<Attachment> {
        self.write(|tx| {
            let v = get_volume_in(tx, project, a.volume_id)?;
            let ok = matches!(v.state, VolumeState::Available | VolumeState::Reserved)
                || (v.state == VolumeState::InUse && v.multiattach);
            if !ok {
                if v.state == VolumeState::InUse {
                    return Err(StoreError::Conflict(format!(
                        "volume {} is attached and its type does not allow multiattach",
                        v.id
                    )));
                }
                return Err(StoreError::WrongState(v.state));
            }
            let already: u64 = tx.query_row(
                "SELECT COUNT(*) FROM attachments WHERE volume_id = ?1 AND server_id = ?2",
                params![a.volume_id, a.server_id],
                |r| r.get(0),
            )?;
            if already > 0 {
                return Err(StoreError::Conflict(format!(
                    "volume {} is already attached to server {}",
                    v.id, a.server_id
                )));
            }
            let used: Vec<String> = {
                let mut st =
                    tx.prepare_cached("SELECT device FROM attachments WHERE server_id = ?1")?;
                let rows = st.query_map([a.server_id], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            let device = DEVICE_NAMES
                .chars()
                .map(|c| format!("/dev/vd{c}"))
                .find(|d| !used.contains(d))
                .ok_or_else(|| {
                    StoreError::Conflict(format!(
                        "server {} has no free device name left",
                        a.server_id
                    ))
                })?;
            let att = Attachment {
                id: uuid::Uuid::new_v4().to_string(),
                volume_id: a.volume_id.to_string(),
                server_id: a.server_id.to_string(),
                device,
                attached_at: a.now.to_string(),
                delete_on_termination: a.delete_on_termination,
            };
            tx.execute(
                &format!("INSERT INTO attachments ({ATTACHMENT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
                params![
                    att.id,
                    att.volume_id,
                    att.server_id,
                    att.device,
                    att.attached_at,
                    att.delete_on_termination
                ],
            )?;
            tx.execute(
                "UPDATE volumes SET state = 'attaching', error_reason = NULL, modified_at = ?2 WHERE id = ?1",
                params![a.volume_id, a.now],
            )?;
            insert_job(tx, a.job)?;
            Ok(att)
        })
    }

    /// Moves an in-use volume to detaching for one of its attachments.
    pub fn begin_detach(
        &self,
        project: Option<&str>,
        volume_id: &str,
        server_id: &str,
        job: &Job,
        now: &str,
    ) -> Result<Attachment> {
        self.write(|tx| {
            let v = get_volume_in(tx, project, volume_id)?;
            let att = tx
                .query_row(
                    &format!(
                        "SELECT {ATTACHMENT_COLS} FROM attachments WHERE volume_id = ?1 AND server_id = ?2"
                    ),
                    params![volume_id, server_id],
                    attachment_from_row,
                )
                .optional()?
                .ok_or(StoreError::NotFound)?;
            if v.state != VolumeState::InUse {
                return Err(StoreError::WrongState(v.state));
            }
            tx.execute(
                "UPDATE volumes SET state = 'detaching', modified_at = ?2 WHERE id = ?1",
                params![volume_id, now],
            )?;
            insert_job(tx, job)?;
            Ok(att)
        })
    }

    /// Records a new snapshot (creating) and its job. The volume must be in
    /// one of `volume_states`; the project's snapshot quota is checked.
    pub fn create_snapshot(
        &self,
        snap: &Snapshot,
        volume_states: &[VolumeState],
        limit: u64,
        job: &Job,
    ) -> Result<()> {
        self.write(|tx| {
            let v = get_volume_in(tx, Some(&snap.project_id), &snap.volume_id)?;
            if !volume_states.contains(&v.state) {
                return Err(StoreError::WrongState(v.state));
            }
            let used = usage_in(tx, &snap.project_id)?.snapshots;
            if used + 1 > limit {
                return Err(StoreError::Quota {
                    resource: "snapshots",
                    limit,
                    in_use: used,
                    requested: 1,
                });
            }
            tx.execute(
                &format!(
                    "INSERT INTO snapshots ({SNAPSHOT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                ),
                params![
                    snap.id,
                    snap.volume_id,
                    snap.project_id,
                    snap.user_id,
                    snap.name,
                    snap.description,
                    snap.size_gib,
                    snap.status.as_str(),
                    snap.metadata,
                    snap.checksum,
                    snap.error_reason,
                    snap.created_at,
                    snap.updated_at
                ],
            )?;
            insert_job(tx, job)?;
            Ok(())
        })
    }

    pub fn get_snapshot(&self, project: Option<&str>, id: &str) -> Result<Snapshot> {
        self.read(|c| get_snapshot_in(c, project, id))
    }

    pub fn snapshots_of(&self, volume_id: &str) -> Result<Vec<Snapshot>> {
        self.read(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {SNAPSHOT_COLS} FROM snapshots WHERE volume_id = ?1 ORDER BY created_at, id"
            ))?;
            let rows = st.query_map([volume_id], snapshot_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    pub fn snapshots_in_status(&self, status: SnapshotStatus) -> Result<Vec<Snapshot>> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {SNAPSHOT_COLS} FROM snapshots WHERE status = ?1"
            ))?;
            let rows = st.query_map([status.as_str()], snapshot_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// One page of snapshots, newest first unless sorted otherwise.
    pub fn list_snapshots(&self, q: &SnapshotQuery) -> Result<Page<Snapshot>> {
        self.read(|c| {
            let mut filter = String::from(" WHERE 1=1");
            let mut args: Vec<Value> = Vec::new();
            for (col, v) in [
                ("project_id", &q.project_id),
                ("volume_id", &q.volume_id),
                ("name", &q.name),
                ("status", &q.status),
            ] {
                if let Some(v) = v {
                    args.push(Value::Text(v.clone()));
                    filter += &format!(" AND {col} = ?{}", args.len());
                }
            }
            let count = match (q.with_count, q.filters_project_only()) {
                (false, _) => None,
                (true, true) => Some(kept_count(c, "snapshots", q.project_id.as_deref())?),
                (true, false) => Some(
                    c.prepare_cached(&format!("SELECT COUNT(*) FROM snapshots{filter}"))?
                        .query_row(rusqlite::params_from_iter(args.iter()), |r| {
                            r.get::<_, u64>(0)
                        })?,
                ),
            };
            let mut keys: Vec<(&str, SortDir)> = q
                .sort
                .iter()
                .map(|(k, d)| {
                    let col = match k {
                        VolumeSortKey::ModifiedAt => "updated_at",
                        VolumeSortKey::State => "status",
                        k => k.column(),
                    };
                    (col, *d)
                })
                .collect();
            if keys.is_empty() {
                keys.push(("created_at", SortDir::Desc));
            }
            if !keys.iter().any(|(k, _)| *k == "id") {
                let dir = keys[keys.len() - 1].1;
                keys.push(("id", dir));
            }
            let marker = match &q.marker {
                Some(m) => Some(get_snapshot_in(c, q.project_id.as_deref(), m).map_err(
                    |e| match e {
                        StoreError::NotFound => StoreError::MarkerNotFound(m.clone()),
                        e => e,
                    },
                )?),
                None => None,
            };
            let seek = marker.map(|m| {
                keys.iter()
                    .map(|(col, _)| match *col {
                        "created_at" => Value::Text(m.created_at.clone()),
                        "updated_at" => Value::Text(m.updated_at.clone()),
                        "name" => Value::Text(m.name.clone()),
                        "size_gib" => Value::Integer(m.size_gib as i64),
                        "status" => Value::Text(m.status.as_str().to_string()),
                        _ => Value::Text(m.id.clone()),
                    })
                    .collect()
            });
            let page = page_clause(&keys, seek, &mut args, q.limit, q.offset);
            let sql = format!("SELECT {SNAPSHOT_COLS} FROM snapshots{filter}{page}");
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(rusqlite::params_from_iter(args.iter()), snapshot_from_row)?;
            Ok(Page {
                items: rows.collect::<rusqlite::Result<Vec<_>>>()?,
                count,
            })
        })
    }

    /// Sets a snapshot's status (and checksum or reason) outside a job.
    pub fn set_snapshot_status(
        &self,
        id: &str,
        status: SnapshotStatus,
        checksum: Option<&str>,
        reason: Option<&str>,
        now: &str,
    ) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE snapshots SET status = ?2, checksum = COALESCE(?3, checksum), \
                 error_reason = ?4, updated_at = ?5 WHERE id = ?1",
                params![id, status.as_str(), checksum, reason, now],
            )?;
            Ok(())
        })
    }

    /// Moves a snapshot from one of `allowed` to deleting and records the job.
    pub fn begin_snapshot_delete(
        &self,
        project: Option<&str>,
        id: &str,
        allowed: &[SnapshotStatus],
        job: &Job,
        now: &str,
    ) -> Result<Snapshot> {
        self.write(|tx| {
            let s = get_snapshot_in(tx, project, id)?;
            if !allowed.contains(&s.status) {
                return Err(StoreError::Conflict(format!(
                    "snapshot {id} is {}",
                    s.status
                )));
            }
            tx.execute(
                "UPDATE snapshots SET status = 'deleting', updated_at = ?2 WHERE id = ?1",
                params![id, now],
            )?;
            insert_job(tx, job)?;
            Ok(s)
        })
    }

    pub fn update_snapshot(
        &self,
        project: Option<&str>,
        id: &str,
        name: Option<&str>,
        description: Option<&str>,
        now: &str,
    ) -> Result<Snapshot> {
        self.write(|tx| {
            get_snapshot_in(tx, project, id)?;
            tx.execute(
                "UPDATE snapshots SET name = COALESCE(?2, name), description = COALESCE(?3, description), \
                 updated_at = ?4 WHERE id = ?1",
                params![id, name, description, now],
            )?;
            get_snapshot_in(tx, None, id)
        })
    }

    /// Replaces a snapshot's metadata (the JSON text clients sent).
    pub fn set_snapshot_metadata(
        &self,
        project: Option<&str>,
        id: &str,
        metadata: &str,
        now: &str,
    ) -> Result<Snapshot> {
        self.write(|tx| {
            get_snapshot_in(tx, project, id)?;
            tx.execute(
                "UPDATE snapshots SET metadata = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, metadata, now],
            )?;
            get_snapshot_in(tx, None, id)
        })
    }

    /// Ends a snapshot job: the job's state and the snapshot's, together.
    pub fn finish_snapshot_job(&self, e: &SnapshotJobEnd) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE jobs SET state = ?2, error = ?3, updated_at = ?4 WHERE id = ?1",
                params![e.job_id, e.job_state.as_str(), e.error, e.now],
            )?;
            match e.status {
                Some(st) => {
                    tx.execute(
                        "UPDATE snapshots SET status = ?2, checksum = COALESCE(?3, checksum), \
                         error_reason = ?4, updated_at = ?5 WHERE id = ?1",
                        params![e.snapshot_id, st.as_str(), e.checksum, e.error, e.now],
                    )?;
                }
                None => {
                    tx.execute("DELETE FROM snapshots WHERE id = ?1", [e.snapshot_id])?;
                }
            }
            Ok(())
        })
    }

    /// Removes every snapshot row of a volume (cascade delete).
    pub fn remove_snapshots_of(&self, volume_id: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute("DELETE FROM snapshots WHERE volume_id = ?1", [volume_id])?;
            Ok(())
        })
    }

    pub fn set_delete_on_termination(&self, attachment_id: &str, value: bool) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE attachments SET delete_on_termination = ?2 WHERE id = ?1",
                params![attachment_id, value],
            )?;
            Ok(())
        })
    }

    pub fn set_export(&self, e: &Export) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO exports (volume_id, kind, host_path, created_at, read_only) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![e.volume_id, e.kind, e.host_path, e.created_at, e.read_only],
            )?;
            Ok(())
        })
    }

    pub fn remove_export(&self, volume_id: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute("DELETE FROM exports WHERE volume_id = ?1", [volume_id])?;
            Ok(())
        })
    }

    pub fn export(&self, volume_id: &str) -> Result<Option<Export>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT volume_id, kind, host_path, created_at, read_only FROM exports WHERE volume_id = ?1",
                [volume_id],
                |r| {
                    Ok(Export {
                        volume_id: r.get(0)?,
                        kind: r.get(1)?,
                        host_path: r.get(2)?,
                        created_at: r.get(3)?,
                        read_only: r.get(4)?,
                    })
                },
            )
            .optional()?)
        })
    }

    pub fn all_exports(&self) -> Result<Vec<Export>> {
        self.read(|c| {
            let mut st =
                c.prepare("SELECT volume_id, kind, host_path, created_at, read_only FROM exports")?;
            let rows = st.query_map([], |r| {
                Ok(Export {
                    volume_id: r.get(0)?,
                    kind: r.get(1)?,
                    host_path: r.get(2)?,
                    created_at: r.get(3)?,
                    read_only: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Volumes that have at least one attachment.
    pub fn attached_volumes(&self) -> Result<Vec<Volume>> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {VOLUME_COLS} FROM volumes WHERE id IN (SELECT volume_id FROM attachments)"
            ))?;
            let rows = st.query_map([], volume_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// One page of volumes. Ordering always ends with `id`, so a marker
    /// names an exact position; the page is found through an index seek.
    pub fn list_volumes(&self, q: &VolumeQuery) -> Result<Page<Volume>> {
        self.read(|c| {
            let mut filter = String::from(" WHERE 1=1");
            let mut args: Vec<Value> = Vec::new();
            if let Some(p) = &q.project_id {
                args.push(Value::Text(p.clone()));
                filter += &format!(" AND project_id = ?{}", args.len());
            }
            if let Some(n) = &q.name {
                args.push(Value::Text(n.clone()));
                filter += &format!(" AND name = ?{}", args.len());
            }
            if let Some(s) = &q.state {
                args.push(Value::Text(s.clone()));
                filter += &format!(" AND state = ?{}", args.len());
            }
            if let Some(b) = q.bootable {
                args.push(Value::Integer(b as i64));
                filter += &format!(" AND bootable = ?{}", args.len());
            }
            for cond in &q.conditions {
                let value = match cond.op {
                    CmpOp::Contains => {
                        let esc = cond
                            .value
                            .replace('\\', "\\\\")
                            .replace('%', "\\%")
                            .replace('_', "\\_");
                        Value::Text(format!("%{esc}%"))
                    }
                    _ if cond.key == VolumeSortKey::Size => match cond.value.parse::<i64>() {
                        Ok(n) => Value::Integer(n),
                        Err(_) => Value::Text(cond.value.clone()),
                    },
                    _ => Value::Text(cond.value.clone()),
                };
                args.push(value);
                let escape = if cond.op == CmpOp::Contains {
                    " ESCAPE '\\'"
                } else {
                    ""
                };
                filter += &format!(
                    " AND {} {} ?{}{escape}",
                    cond.key.column(),
                    cond.op.sql(),
                    args.len()
                );
            }
            for t in &q.tags {
                args.push(Value::Text(t.key.clone()));
                args.push(Value::Text(t.value.clone().unwrap_or_default()));
                filter += &format!(
                    " AND EXISTS (SELECT 1 FROM volume_tags t WHERE t.volume_id = volumes.id \
                     AND t.key = ?{} AND COALESCE(t.value, '') = ?{})",
                    args.len() - 1,
                    args.len()
                );
            }
            let count = match (q.with_count, q.filters_project_only()) {
                (false, _) => None,
                (true, true) => Some(kept_count(c, "volumes", q.project_id.as_deref())?),
                (true, false) => {
                    let sql = format!("SELECT COUNT(*) FROM volumes{filter}");
                    Some(
                        c.prepare_cached(&sql)?
                            .query_row(rusqlite::params_from_iter(args.iter()), |r| {
                                r.get::<_, u64>(0)
                            })?,
                    )
                }
            };

            let mut keys = q.sort.clone();
            if !keys.iter().any(|(k, _)| *k == VolumeSortKey::Id) {
                let dir = keys.last().map(|(_, d)| *d).unwrap_or(SortDir::Desc);
                keys.push((VolumeSortKey::Id, dir));
            }
            let marker = match &q.marker {
                Some(m) => Some(get_volume_in(c, q.project_id.as_deref(), m).map_err(
                    |e| match e {
                        StoreError::NotFound => StoreError::MarkerNotFound(m.clone()),
                        e => e,
                    },
                )?),
                None => None,
            };
            let cols: Vec<(&str, SortDir)> = keys.iter().map(|(k, d)| (k.column(), *d)).collect();
            let seek = marker.map(|m| keys.iter().map(|(k, _)| sort_value(&m, *k)).collect());
            let page = page_clause(&cols, seek, &mut args, q.limit, q.offset);
            let sql = format!("SELECT {VOLUME_COLS} FROM volumes{filter}{page}");
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(rusqlite::params_from_iter(args.iter()), volume_from_row)?;
            Ok(Page {
                items: rows.collect::<rusqlite::Result<Vec<_>>>()?,
                count,
            })
        })
    }

    /// Moves a volume from one of `t.allowed` to `t.to` and records the
    /// job, in one transaction. Returns the volume as it was before.
    pub fn transition(&self, project: Option<&str>, id: &str, t: &Transition) -> Result<Volume> {
        self.write(|tx| {
            let v = get_volume_in(tx, project, id)?;
            if !t.allowed.contains(&v.state) {
                return Err(StoreError::WrongState(v.state));
            }
            if let Some(q) = t.quota {
                check_quota(tx, &v.project_id, q)?;
            }
            tx.execute(
                "UPDATE volumes SET state = ?2, error_reason = NULL, modified_at = ?3 WHERE id = ?1",
                params![id, t.to.as_str(), t.now],
            )?;
            insert_job(tx, t.job)?;
            Ok(v)
        })
    }

    /// Changes metadata fields in `allowed` states and records the change as
    /// a finished job. Returns the updated volume.
    pub fn update_volume(
        &self,
        project: Option<&str>,
        id: &str,
        allowed: &[VolumeState],
        patch: &VolumePatch,
        job: &Job,
        now: &str,
    ) -> Result<Volume> {
        self.write(|tx| {
            let v = get_volume_in(tx, project, id)?;
            if !allowed.contains(&v.state) {
                return Err(StoreError::WrongState(v.state));
            }
            tx.execute(
                "UPDATE volumes SET name = COALESCE(?2, name), \
                 description = COALESCE(?3, description), max_iops = COALESCE(?4, max_iops), \
                 max_throughput = COALESCE(?5, max_throughput), modified_at = ?6, \
                 bootable = COALESCE(?7, bootable) WHERE id = ?1",
                params![
                    id,
                    patch.name,
                    patch.description,
                    patch.max_iops,
                    patch.max_throughput,
                    now,
                    patch.bootable
                ],
            )?;
            if let Some(change) = &patch.tags {
                change_tags(tx, id, change)?;
            }
            insert_job(tx, job)?;
            get_volume_in(tx, None, id)
        })
    }

    pub fn mark_job_running(&self, job_id: &str, now: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE jobs SET state = 'running', updated_at = ?2 WHERE id = ?1 AND state = 'pending'",
                params![job_id, now],
            )?;
            Ok(())
        })
    }

    /// Ends a job and applies its effect on the volume in one transaction.
    pub fn finish_job(
        &self,
        job_id: &str,
        state: JobState,
        error: Option<&str>,
        volume_id: Option<&str>,
        effect: &VolumeEffect,
        now: &str,
    ) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE jobs SET state = ?2, error = ?3, updated_at = ?4 WHERE id = ?1",
                params![job_id, state.as_str(), error, now],
            )?;
            match (effect, volume_id) {
                (VolumeEffect::Nothing, _) | (_, None) => {}
                (
                    VolumeEffect::SetState {
                        state,
                        size_gib,
                        error_reason,
                    },
                    Some(id),
                ) => {
                    tx.execute(
                        "UPDATE volumes SET state = ?2, size_gib = COALESCE(?3, size_gib), \
                         error_reason = ?4, modified_at = ?5 WHERE id = ?1",
                        params![id, state.as_str(), size_gib, error_reason, now],
                    )?;
                }
                (
                    VolumeEffect::DropAttachment {
                        attachment_id,
                        error_reason,
                    },
                    Some(id),
                ) => {
                    tx.execute("DELETE FROM attachments WHERE id = ?1", [attachment_id])?;
                    let left: u64 = tx.query_row(
                        "SELECT COUNT(*) FROM attachments WHERE volume_id = ?1",
                        [id],
                        |r| r.get(0),
                    )?;
                    let state = if left > 0 {
                        VolumeState::InUse
                    } else {
                        VolumeState::Available
                    };
                    tx.execute(
                        "UPDATE volumes SET state = ?2, error_reason = ?3, modified_at = ?4 WHERE id = ?1",
                        params![id, state.as_str(), error_reason, now],
                    )?;
                }
                (VolumeEffect::Remove, Some(id)) => {
                    tx.execute("DELETE FROM volumes WHERE id = ?1", [id])?;
                }
            }
            Ok(())
        })
    }

    /// Sets a volume's state outside any job (start-up recovery).
    pub fn set_state(
        &self,
        id: &str,
        state: VolumeState,
        reason: Option<&str>,
        now: &str,
    ) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE volumes SET state = ?2, error_reason = ?3, modified_at = ?4 WHERE id = ?1",
                params![id, state.as_str(), reason, now],
            )?;
            Ok(())
        })
    }

    /// A volume's admin metadata (readonly flag, attach mode), by key.
    pub fn admin_metadata(&self, volume_id: &str) -> Result<Vec<(String, String)>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT key, value FROM volume_admin_metadata WHERE volume_id = ?1 ORDER BY key",
            )?;
            let rows = st.query_map([volume_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Sets (Some) or removes (None) admin metadata keys and optionally the
    /// state, with the job that records it, when the volume is in `allowed`.
    pub fn set_admin_metadata(
        &self,
        project: Option<&str>,
        volume_id: &str,
        allowed: &[VolumeState],
        entries: &[(&str, Option<&str>)],
        state: Option<VolumeState>,
        job: &Job,
    ) -> Result<Volume> {
        self.write(|tx| {
            let v = get_volume_in(tx, project, volume_id)?;
            if !allowed.contains(&v.state) {
                return Err(StoreError::WrongState(v.state));
            }
            for (k, val) in entries {
                match val {
                    Some(val) => tx.execute(
                        "INSERT OR REPLACE INTO volume_admin_metadata (volume_id, key, value) VALUES (?1, ?2, ?3)",
                        params![volume_id, k, val],
                    )?,
                    None => tx.execute(
                        "DELETE FROM volume_admin_metadata WHERE volume_id = ?1 AND key = ?2",
                        params![volume_id, k],
                    )?,
                };
            }
            if let Some(st) = state {
                tx.execute(
                    "UPDATE volumes SET state = ?2, error_reason = NULL, modified_at = ?3 WHERE id = ?1",
                    params![volume_id, st.as_str(), job.created_at],
                )?;
            }
            insert_job(tx, job)?;
            get_volume_in(tx, None, volume_id)
        })
    }

    /// Quota limits set through the API: (project, resource, limit).
    pub fn quota_limits(&self) -> Result<Vec<(String, String, u64)>> {
        self.read(|c| {
            let mut st =
                c.prepare_cached("SELECT project_id, resource, hard_limit FROM quota_limits")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Stores a project's limits with the finished job that records it.
    pub fn set_quota_limits(&self, project: &str, limits: &[(&str, u64)], job: &Job) -> Result<()> {
        self.write(|tx| {
            insert_job(tx, job)?;
            for (res, limit) in limits {
                tx.execute(
                    "INSERT OR REPLACE INTO quota_limits (project_id, resource, hard_limit) VALUES (?1, ?2, ?3)",
                    params![project, res, limit],
                )?;
            }
            Ok(())
        })
    }

    pub fn get_job(&self, id: &str) -> Result<Job> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1"),
                [id],
                job_from_row,
            )
            .optional()?
            .ok_or(StoreError::NotFound)
        })
    }

    /// Jobs of one volume, newest first.
    pub fn jobs_for_volume(&self, volume_id: &str, limit: u32) -> Result<Vec<Job>> {
        self.read(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {JOB_COLS} FROM jobs WHERE volume_id = ?1 ORDER BY created_at DESC, id DESC LIMIT ?2"
            ))?;
            let rows = st.query_map(params![volume_id, limit], job_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Jobs not yet in a terminal state, oldest first.
    pub fn unfinished_jobs(&self) -> Result<Vec<Job>> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {JOB_COLS} FROM jobs WHERE state IN ('pending', 'running') ORDER BY created_at, id"
            ))?;
            let rows = st.query_map([], job_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Volumes whose state is transitional, whatever their jobs say.
    pub fn volumes_in_transition(&self) -> Result<Vec<Volume>> {
        self.read(|c| {
            let states: Vec<String> = VolumeState::ALL
                .iter()
                .filter(|s| s.is_transitional())
                .map(|s| format!("'{}'", s.as_str()))
                .collect();
            let mut st = c.prepare(&format!(
                "SELECT {VOLUME_COLS} FROM volumes WHERE state IN ({})",
                states.join(", ")
            ))?;
            let rows = st.query_map([], volume_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    pub fn all_volume_ids(&self) -> Result<Vec<String>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT id FROM volumes")?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    pub fn usage(&self, project: &str) -> Result<Usage> {
        self.read(|c| Ok(usage_in(c, project)?))
    }
}

/// The seek, order and limit part of a page query. `keys` end with the
/// id, so a marker's values name one exact position. Equal directions use
/// one row-value comparison, which SQLite answers with an index range.
fn page_clause(
    keys: &[(&str, SortDir)],
    marker: Option<Vec<Value>>,
    args: &mut Vec<Value>,
    limit: u32,
    offset: u64,
) -> String {
    let mut out = String::new();
    let cmp = |d: SortDir| if d == SortDir::Asc { ">" } else { "<" };
    if let Some(values) = marker {
        let same_dir = keys.iter().all(|(_, d)| *d == keys[0].1);
        if same_dir {
            let mut marks = Vec::new();
            for v in values {
                args.push(v);
                marks.push(format!("?{}", args.len()));
            }
            let cols: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
            out += &format!(
                " AND ({}) {} ({})",
                cols.join(", "),
                cmp(keys[0].1),
                marks.join(", ")
            );
        } else {
            // (k1 > v1) OR (k1 = v1 AND k2 < v2) OR ...
            let mut ors = Vec::new();
            for i in 0..keys.len() {
                let mut ands = Vec::new();
                for (j, (k, d)) in keys.iter().enumerate().take(i + 1) {
                    args.push(values[j].clone());
                    let op = if j < i { "=" } else { cmp(*d) };
                    ands.push(format!("{k} {op} ?{}", args.len()));
                }
                ors.push(format!("({})", ands.join(" AND ")));
            }
            out += &format!(" AND ({})", ors.join(" OR "));
        }
    }
    let order: Vec<String> = keys
        .iter()
        .map(|(k, d)| format!("{k} {}", if *d == SortDir::Asc { "ASC" } else { "DESC" }))
        .collect();
    args.push(Value::Integer(limit as i64));
    let lim = args.len();
    args.push(Value::Integer(offset.min(i64::MAX as u64) as i64));
    out += &format!(
        " ORDER BY {} LIMIT ?{lim} OFFSET ?{} ",
        order.join(", "),
        args.len()
    );
    out
}

fn sort_value(v: &Volume, k: VolumeSortKey) -> Value {
    match k {
        VolumeSortKey::CreatedAt => Value::Text(v.created_at.clone()),
        VolumeSortKey::ModifiedAt => Value::Text(v.modified_at.clone()),
        VolumeSortKey::Name => Value::Text(v.name.clone()),
        VolumeSortKey::Size => Value::Integer(v.size_gib as i64),
        VolumeSortKey::State => Value::Text(v.state.as_str().to_string()),
        VolumeSortKey::Id => Value::Text(v.id.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn vol(id: &str, project: &str, name: &str, size: u64, created: &str) -> Volume {
        Volume {
            id: id.into(),
            project_id: project.into(),
            user_id: "u".into(),
            name: name.into(),
            description: String::new(),
            size_gib: size,
            volume_type_id: "t".into(),
            volume_type: "SSD".into(),
            state: VolumeState::Available,
            bootable: false,
            encrypted: false,
            multiattach: false,
            snapshot_id: None,
            source_volid: None,
            max_iops: None,
            max_throughput: None,
            backend: "file".into(),
            error_reason: None,
            created_at: created.into(),
            modified_at: created.into(),
        }
    }

    pub(super) fn job(id: &str, vol: &str) -> Job {
        Job {
            id: id.into(),
            kind: JobKind::CreateVolume,
            volume_id: Some(vol.into()),
            project_id: "p".into(),
            state: JobState::Pending,
            params: "{}".into(),
            error: None,
            created_at: "t".into(),
            updated_at: "t".into(),
        }
    }

    pub(super) const BIG: QuotaCheck = QuotaCheck {
        volumes_limit: 1000,
        gigabytes_limit: 100000,
        add_volumes: 1,
        add_gigabytes: 8,
    };

    pub(super) fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("db")).unwrap();
        (d, s)
    }

    #[test]
    fn migrations_are_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("db");
        drop(Store::open(&p).unwrap());
        let s = Store::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len());
        assert_eq!(s.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn keyset_pages_cover_everything_once_in_order() {
        let (_d, s) = store();
        for i in 0..25 {
            // Repeated sizes and names force the id tie-breaker to matter.
            let v = vol(
                &format!("id{i:02}"),
                "p",
                &format!("n{}", i % 4),
                8 * (i % 3 + 1),
                &format!("2026-01-01T00:00:{:02}.000Z", i % 7),
            );
            s.create_volume(&v, &[], &job(&format!("j{i}"), &v.id), &BIG)
                .unwrap();
        }
        for sort in [
            vec![(VolumeSortKey::CreatedAt, SortDir::Desc)],
            vec![
                (VolumeSortKey::Size, SortDir::Asc),
                (VolumeSortKey::Name, SortDir::Desc),
            ],
            vec![(VolumeSortKey::Name, SortDir::Asc)],
        ] {
            let all = s
                .list_volumes(&VolumeQuery {
                    project_id: Some("p".into()),
                    sort: sort.clone(),
                    limit: 1000,
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(all.count, Some(25));
            let mut seen = Vec::new();
            let mut marker = None;
            loop {
                let page = s
                    .list_volumes(&VolumeQuery {
                        project_id: Some("p".into()),
                        sort: sort.clone(),
                        limit: 4,
                        marker: marker.clone(),
                        with_count: false,
                        ..Default::default()
                    })
                    .unwrap();
                if page.items.is_empty() {
                    break;
                }
                marker = page.items.last().map(|v| v.id.clone());
                seen.extend(page.items.into_iter().map(|v| v.id));
            }
            let expect: Vec<String> = all.items.into_iter().map(|v| v.id).collect();
            assert_eq!(seen, expect, "sort {sort:?}");
        }
    }

    #[test]
    fn cached_statements_are_not_parsed_again_on_each_run() {
        let (_d, s) = store();
        for i in 0..30 {
            let v = vol(&format!("v{i}"), "p", "n", 8, "t");
            s.create_volume(&v, &[], &job(&format!("j{i}"), &v.id), &BIG)
                .unwrap();
        }
        for i in 0..30 {
            let id = format!("v{i}");
            s.get_volume(Some("p"), &id).unwrap();
            s.attachments(&id).unwrap();
            s.image_metadata(&id).unwrap();
        }
        let sqls = [
            format!("SELECT {VOLUME_COLS} FROM volumes WHERE id = ?1 AND project_id = ?2"),
            format!(
                "SELECT {ATTACHMENT_COLS} FROM attachments WHERE volume_id = ?1 ORDER BY attached_at, id"
            ),
            "SELECT key, value FROM volume_image_metadata WHERE volume_id = ?1 ORDER BY key".into(),
        ];
        let mut runs = 0;
        for r in &s.readers {
            let c = r.lock().unwrap();
            for sql in &sqls {
                let st = c.prepare_cached(sql).unwrap();
                runs += st.get_status(rusqlite::StatementStatus::Run);
                let again = st.get_status(rusqlite::StatementStatus::RePrepare);
                assert_eq!(again, 0, "{sql} was parsed again {again} times");
            }
        }
        assert!(runs >= 90, "the statements ran {runs} times");
    }

    #[test]
    fn kept_counts_follow_inserts_deletes_and_moves() {
        let (_d, s) = store();
        for i in 0..7 {
            let p = if i < 5 { "p" } else { "q" };
            let v = vol(&format!("v{i}"), p, "n", 8, "t");
            s.create_volume(&v, &[], &job(&format!("j{i}"), &v.id), &BIG)
                .unwrap();
        }
        s.with(|c| {
            c.execute("DELETE FROM volumes WHERE id = 'v0'", [])?;
            c.execute("UPDATE volumes SET project_id = 'q' WHERE id = 'v1'", [])?;
            c.execute("UPDATE volumes SET name = 'm' WHERE id = 'v2'", [])?;
            Ok(())
        })
        .unwrap();
        for project in [Some("p"), Some("q"), Some("none"), None] {
            let kept = s
                .list_volumes(&VolumeQuery {
                    project_id: project.map(String::from),
                    ..Default::default()
                })
                .unwrap()
                .count;
            let scanned: u64 = s
                .with(|c| {
                    Ok(c.query_row(
                        "SELECT COUNT(*) FROM volumes WHERE ?1 IS NULL OR project_id = ?1",
                        [project],
                        |r| r.get(0),
                    )?)
                })
                .unwrap();
            assert_eq!(kept, Some(scanned), "project {project:?}");
        }
        // A filter other than the project counts the rows it matches.
        let named = s
            .list_volumes(&VolumeQuery {
                project_id: Some("p".into()),
                name: Some("m".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(named.count, Some(1));
    }

    #[test]
    fn quota_is_checked_in_the_insert_transaction() {
        let (_d, s) = store();
        let q = QuotaCheck {
            volumes_limit: 1,
            ..BIG
        };
        s.create_volume(&vol("a", "p", "a", 8, "t"), &[], &job("j1", "a"), &q)
            .unwrap();
        let e = s
            .create_volume(&vol("b", "p", "b", 8, "t"), &[], &job("j2", "b"), &q)
            .unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::Quota);
        assert!(s.get_volume(None, "b").is_err());
        assert!(s.get_job("j2").is_err());
    }

    #[test]
    fn transition_refuses_wrong_state_and_changes_nothing() {
        let (_d, s) = store();
        let mut v = vol("a", "p", "a", 8, "t");
        v.state = VolumeState::Creating;
        s.create_volume(&v, &[], &job("j1", "a"), &BIG).unwrap();
        let e = s
            .transition(
                Some("p"),
                "a",
                &Transition {
                    allowed: &[VolumeState::Available],
                    to: VolumeState::Deleting,
                    job: &job("j2", "a"),
                    quota: None,
                    now: "t2",
                },
            )
            .unwrap_err();
        assert!(matches!(e, StoreError::WrongState(VolumeState::Creating)));
        assert_eq!(
            s.get_volume(None, "a").unwrap().state,
            VolumeState::Creating
        );
        assert!(s.get_job("j2").is_err());
        // Another project's volume is not found at all.
        let e = s
            .transition(
                Some("q"),
                "a",
                &Transition {
                    allowed: &[VolumeState::Creating],
                    to: VolumeState::Deleting,
                    job: &job("j3", "a"),
                    quota: None,
                    now: "t2",
                },
            )
            .unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::NotFound);
    }

    #[test]
    fn device_names_are_per_server_and_reused_after_detach() {
        let (_d, s) = store();
        let mut ids = Vec::new();
        for i in 0..3 {
            let id = format!("v{i}");
            s.create_volume(
                &vol(&id, "p", &id, 8, "t"),
                &[],
                &job(&format!("c{i}"), &id),
                &BIG,
            )
            .unwrap();
            ids.push(id);
        }
        let attach = |vol: &str, server: &str, j: &str| {
            s.begin_attach(
                Some("p"),
                &NewAttachment {
                    volume_id: vol,
                    server_id: server,
                    delete_on_termination: false,
                    job: &job(j, vol),
                    now: "t",
                },
            )
        };
        assert_eq!(attach("v0", "s1", "a0").unwrap().device, "/dev/vdb");
        // v0 is attaching: not attachable again.
        assert_eq!(
            attach("v0", "s2", "a1").unwrap_err().kind(),
            StoreErrorKind::WrongState
        );
        assert_eq!(attach("v1", "s1", "a2").unwrap().device, "/dev/vdc");
        assert_eq!(attach("v2", "s2", "a3").unwrap().device, "/dev/vdb");
        let first = s.attachments("v0").unwrap().remove(0);
        s.finish_job(
            "a0",
            JobState::Succeeded,
            None,
            Some("v0"),
            &VolumeEffect::DropAttachment {
                attachment_id: first.id,
                error_reason: None,
            },
            "t",
        )
        .unwrap();
        assert_eq!(
            s.get_volume(None, "v0").unwrap().state,
            VolumeState::Available
        );
        assert_eq!(attach("v0", "s1", "a4").unwrap().device, "/dev/vdb");
        assert_eq!(s.server_attachments(Some("p"), "s1").unwrap().len(), 2);
        assert_eq!(s.server_attachments(Some("q"), "s1").unwrap().len(), 0);
    }
}
