//! Volume transfers: a volume offered by its project to whoever presents
//! the transfer's id and key. The key itself is never stored, only a salt
//! and a hash of both. Offering, accepting and cancelling each change the
//! volume and the transfer in one transaction.

use super::model::*;
use super::{Result, Store, StoreError, get_volume_in, insert_job, usage_in};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

/// Where a transfer is. Only a pending transfer can be accepted or
/// cancelled; the others stay as history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferState {
    Pending,
    Accepted,
    Cancelled,
}

impl TransferState {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferState::Pending => "pending",
            TransferState::Accepted => "accepted",
            TransferState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<TransferState> {
        Some(match s {
            "pending" => TransferState::Pending,
            "accepted" => TransferState::Accepted,
            "cancelled" => TransferState::Cancelled,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    pub id: String,
    pub volume_id: String,
    /// The project giving the volume away.
    pub project_id: String,
    pub user_id: String,
    pub name: Option<String>,
    /// Hex salt and hex hash of salt and key.
    pub salt: String,
    pub key_hash: String,
    /// Leave the volume's snapshots behind (refused when it has any).
    pub no_snapshots: bool,
    pub state: TransferState,
    pub destination_project_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// One page request over pending transfers.
#[derive(Debug, Clone)]
pub struct TransferQuery {
    /// None lists every project's (admin views).
    pub project_id: Option<String>,
    pub limit: u32,
    pub offset: u64,
    pub marker: Option<String>,
    pub with_count: bool,
}

/// The receiving project's limits, checked in the accepting transaction.
#[derive(Debug, Clone, Copy)]
pub struct TransferQuota {
    pub volumes: u64,
    pub gigabytes: u64,
    pub snapshots: u64,
}

/// Who takes a volume over.
pub struct Acceptance<'a> {
    pub transfer_id: &'a str,
    pub project_id: &'a str,
    pub user_id: &'a str,
    pub quota: &'a TransferQuota,
    pub job: &'a Job,
    pub now: &'a str,
}

const TRANSFER_COLS: &str = "id, volume_id, project_id, user_id, name, salt, key_hash, \
    no_snapshots, state, destination_project_id, created_at, updated_at";

fn transfer_from_row(r: &Row) -> rusqlite::Result<Transfer> {
    let state: String = r.get(8)?;
    Ok(Transfer {
        id: r.get(0)?,
        volume_id: r.get(1)?,
        project_id: r.get(2)?,
        user_id: r.get(3)?,
        name: r.get(4)?,
        salt: r.get(5)?,
        key_hash: r.get(6)?,
        no_snapshots: r.get(7)?,
        state: TransferState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                8,
                rusqlite::types::Type::Text,
                format!("unknown transfer state {state:?}").into(),
            )
        })?,
        destination_project_id: r.get(9)?,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
    })
}

/// A pending transfer, limited to `project` when given.
fn pending_in(c: &Connection, project: Option<&str>, id: &str) -> Result<Transfer> {
    c.query_row(
        &format!(
            "SELECT {TRANSFER_COLS} FROM transfers WHERE id = ?1 AND state = 'pending' \
             AND (?2 IS NULL OR project_id = ?2)"
        ),
        params![id, project],
        transfer_from_row,
    )
    .optional()?
    .ok_or(StoreError::NotFound)
}

fn set_done(
    tx: &Transaction,
    id: &str,
    state: TransferState,
    dest: Option<&str>,
    now: &str,
) -> Result<()> {
    tx.execute(
        "UPDATE transfers SET state = ?2, destination_project_id = ?3, updated_at = ?4 WHERE id = ?1",
        params![id, state.as_str(), dest, now],
    )?;
    Ok(())
}

impl Store {
    /// Records a transfer and moves its volume from available to
    /// awaiting-transfer. The volume must belong to the transfer's project;
    /// its snapshots must all be available, since they move with it.
    pub fn create_transfer(&self, t: &Transfer, job: &Job) -> Result<()> {
        self.write(|tx| {
            let v = get_volume_in(tx, Some(&t.project_id), &t.volume_id)?;
            if v.state != VolumeState::Available {
                return Err(StoreError::WrongState(v.state));
            }
            let attached: u64 = tx.query_row(
                "SELECT COUNT(*) FROM attachments WHERE volume_id = ?1",
                [&v.id],
                |r| r.get(0),
            )?;
            if attached > 0 {
                return Err(StoreError::Conflict(format!("volume {} is attached", v.id)));
            }
            let (snaps, settled): (u64, u64) = tx.query_row(
                "SELECT COUNT(*), COALESCE(SUM(status = 'available'), 0) FROM snapshots WHERE volume_id = ?1",
                [&v.id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if t.no_snapshots && snaps > 0 {
                return Err(StoreError::Conflict(format!(
                    "volume {} has {snaps} snapshot(s); they move with the volume, so it cannot be transferred without them",
                    v.id
                )));
            }
            if settled < snaps {
                return Err(StoreError::Conflict(format!(
                    "volume {} has a snapshot that is not available",
                    v.id
                )));
            }
            tx.execute(
                "UPDATE volumes SET state = 'awaiting-transfer', modified_at = ?2 WHERE id = ?1",
                params![v.id, t.created_at],
            )?;
            tx.execute(
                &format!(
                    "INSERT INTO transfers ({TRANSFER_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
                ),
                params![
                    t.id,
                    t.volume_id,
                    t.project_id,
                    t.user_id,
                    t.name,
                    t.salt,
                    t.key_hash,
                    t.no_snapshots,
                    t.state.as_str(),
                    t.destination_project_id,
                    t.created_at,
                    t.updated_at
                ],
            )?;
            insert_job(tx, job)?;
            Ok(())
        })
    }

    /// A pending transfer; `project` None finds any project's.
    pub fn get_transfer(&self, project: Option<&str>, id: &str) -> Result<Transfer> {
        self.read(|c| pending_in(c, project, id))
    }

    /// One page of pending transfers, newest first, after the marker.
    pub fn list_transfers(&self, q: &TransferQuery) -> Result<Page<Transfer>> {
        self.read(|c| {
            let project = q.project_id.as_deref();
            let after = match &q.marker {
                Some(m) => Some(pending_in(c, project, m).map_err(|e| match e {
                    StoreError::NotFound => StoreError::MarkerNotFound(m.to_string()),
                    e => e,
                })?),
                None => None,
            };
            let (at, id) = match &after {
                Some(t) => (Some(t.created_at.as_str()), Some(t.id.as_str())),
                None => (None, None),
            };
            let count = if q.with_count {
                Some(c.query_row(
                    "SELECT COUNT(*) FROM transfers WHERE state = 'pending' \
                     AND (?1 IS NULL OR project_id = ?1)",
                    [project],
                    |r| r.get::<_, u64>(0),
                )?)
            } else {
                None
            };
            let mut st = c.prepare_cached(&format!(
                "SELECT {TRANSFER_COLS} FROM transfers WHERE state = 'pending' \
                 AND (?1 IS NULL OR project_id = ?1) \
                 AND (?2 IS NULL OR (created_at, id) < (?2, ?3)) \
                 ORDER BY created_at DESC, id DESC LIMIT ?4 OFFSET ?5"
            ))?;
            let rows = st.query_map(
                params![project, at, id, q.limit, q.offset],
                transfer_from_row,
            )?;
            Ok(Page {
                items: rows.collect::<rusqlite::Result<Vec<_>>>()?,
                count,
            })
        })
    }

    /// Hands a transferred volume and its snapshots to the accepting
    /// project, after checking that project's quota, and makes the volume
    /// available again. Returns the transfer as it was.
    pub fn accept_transfer(&self, a: &Acceptance) -> Result<Transfer> {
        self.write(|tx| {
            let t = pending_in(tx, None, a.transfer_id)?;
            let v = get_volume_in(tx, None, &t.volume_id)?;
            if v.state != VolumeState::AwaitingTransfer {
                return Err(StoreError::WrongState(v.state));
            }
            if a.project_id != v.project_id {
                let snaps: u64 = tx.query_row(
                    "SELECT COUNT(*) FROM snapshots WHERE volume_id = ?1",
                    [&v.id],
                    |r| r.get(0),
                )?;
                let used = usage_in(tx, a.project_id)?;
                for (resource, limit, in_use, requested) in [
                    ("volumes", a.quota.volumes, used.volumes, 1),
                    ("gigabytes", a.quota.gigabytes, used.gigabytes, v.size_gib),
                    ("snapshots", a.quota.snapshots, used.snapshots, snaps),
                ] {
                    if in_use + requested > limit {
                        return Err(StoreError::Quota {
                            resource,
                            limit,
                            in_use,
                            requested,
                        });
                    }
                }
            }
            tx.execute(
                "UPDATE volumes SET project_id = ?2, user_id = ?3, state = 'available', \
                 modified_at = ?4 WHERE id = ?1",
                params![v.id, a.project_id, a.user_id, a.now],
            )?;
            tx.execute(
                "UPDATE snapshots SET project_id = ?2, user_id = ?3, updated_at = ?4 WHERE volume_id = ?1",
                params![v.id, a.project_id, a.user_id, a.now],
            )?;
            set_done(tx, &t.id, TransferState::Accepted, Some(a.project_id), a.now)?;
            insert_job(tx, a.job)?;
            Ok(t)
        })
    }

    /// Cancels a pending transfer and makes its volume available again.
    /// Returns None when there was no such pending transfer.
    pub fn delete_transfer(
        &self,
        project: Option<&str>,
        id: &str,
        job: &Job,
        now: &str,
    ) -> Result<Option<Transfer>> {
        self.write(|tx| {
            let t = match pending_in(tx, project, id) {
                Ok(t) => t,
                Err(StoreError::NotFound) => return Ok(None),
                Err(e) => return Err(e),
            };
            tx.execute(
                "UPDATE volumes SET state = 'available', modified_at = ?2 \
                 WHERE id = ?1 AND state = 'awaiting-transfer'",
                params![t.volume_id, now],
            )?;
            set_done(tx, &t.id, TransferState::Cancelled, None, now)?;
            insert_job(tx, job)?;
            Ok(Some(t))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::StoreErrorKind;
    use super::super::tests::{BIG, store, vol};
    use super::*;

    fn volume(id: &str, project: &str, state: VolumeState, size_gib: u64) -> Volume {
        Volume {
            state,
            size_gib,
            user_id: format!("u-{project}"),
            ..vol(id, project, id, size_gib, "2026-01-01T00:00:00Z")
        }
    }

    fn job(id: &str, volume: &str, project: &str) -> Job {
        Job {
            kind: JobKind::CreateTransfer,
            project_id: project.into(),
            state: JobState::Succeeded,
            ..super::super::tests::job(id, volume)
        }
    }

    fn transfer(id: &str, volume: &str, project: &str, at: &str) -> Transfer {
        Transfer {
            id: id.into(),
            volume_id: volume.into(),
            project_id: project.into(),
            user_id: "u".into(),
            name: None,
            salt: "00".into(),
            key_hash: "11".into(),
            no_snapshots: false,
            state: TransferState::Pending,
            destination_project_id: None,
            created_at: at.into(),
            updated_at: at.into(),
        }
    }

    fn add_volume(s: &Store, v: &Volume) {
        let quota = super::super::QuotaCheck {
            add_gigabytes: v.size_gib,
            ..BIG
        };
        let j = job(&format!("j-{}", v.id), &v.id, &v.project_id);
        s.create_volume(v, &[], &j, &quota).unwrap();
    }

    const Q: TransferQuota = TransferQuota {
        volumes: 10,
        gigabytes: 100,
        snapshots: 10,
    };

    #[test]
    fn offer_accept_moves_ownership_once() {
        let (_d, s) = store();
        add_volume(&s, &volume("v1", "a", VolumeState::Available, 8));
        s.create_transfer(
            &transfer("t1", "v1", "a", "2026-01-02T00:00:00Z"),
            &job("j1", "v1", "a"),
        )
        .unwrap();
        assert_eq!(
            s.get_volume(None, "v1").unwrap().state,
            VolumeState::AwaitingTransfer
        );
        // A second offer of the same volume is refused.
        let e = s
            .create_transfer(
                &transfer("t2", "v1", "a", "2026-01-02T00:00:01Z"),
                &job("j2", "v1", "a"),
            )
            .unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::WrongState);
        let acc = |job_id: &str, quota: &TransferQuota| {
            s.accept_transfer(&Acceptance {
                transfer_id: "t1",
                project_id: "b",
                user_id: "u-b",
                quota,
                job: &job(job_id, "v1", "b"),
                now: "2026-01-03T00:00:00Z",
            })
        };
        let tight = TransferQuota { gigabytes: 7, ..Q };
        let e = acc("j3", &tight).unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::Quota);
        assert_eq!(s.get_volume(None, "v1").unwrap().project_id, "a");
        assert!(s.get_job("j3").is_err(), "a refused accept records no job");
        acc("j4", &Q).unwrap();
        let v = s.get_volume(None, "v1").unwrap();
        assert_eq!(
            (v.project_id.as_str(), v.state),
            ("b", VolumeState::Available)
        );
        assert_eq!(v.user_id, "u-b");
        assert!(s.get_transfer(None, "t1").is_err());
        assert_eq!(acc("j5", &Q).unwrap_err().kind(), StoreErrorKind::NotFound);
    }

    #[test]
    fn cancel_restores_available_and_reports_change() {
        let (_d, s) = store();
        add_volume(&s, &volume("v1", "a", VolumeState::Available, 8));
        add_volume(&s, &volume("v2", "a", VolumeState::InUse, 8));
        let e = s
            .create_transfer(
                &transfer("t0", "v2", "a", "2026-01-02T00:00:00Z"),
                &job("j0", "v2", "a"),
            )
            .unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::WrongState);
        s.create_transfer(
            &transfer("t1", "v1", "a", "2026-01-02T00:00:00Z"),
            &job("j1", "v1", "a"),
        )
        .unwrap();
        assert!(
            s.delete_transfer(Some("b"), "t1", &job("j2", "v1", "b"), "n")
                .unwrap()
                .is_none()
        );
        assert!(
            s.delete_transfer(Some("a"), "t1", &job("j3", "v1", "a"), "n")
                .unwrap()
                .is_some()
        );
        assert_eq!(
            s.get_volume(None, "v1").unwrap().state,
            VolumeState::Available
        );
        assert!(
            s.delete_transfer(Some("a"), "t1", &job("j4", "v1", "a"), "n")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn list_pages_by_marker() {
        let (_d, s) = store();
        for i in 0..5 {
            let v = format!("v{i}");
            add_volume(&s, &volume(&v, "a", VolumeState::Available, 8));
            s.create_transfer(
                &transfer(
                    &format!("t{i}"),
                    &v,
                    "a",
                    &format!("2026-01-02T00:00:0{i}Z"),
                ),
                &job(&format!("jt{i}"), &v, "a"),
            )
            .unwrap();
        }
        let q = |project: &str, limit, offset, marker: Option<&str>| TransferQuery {
            project_id: Some(project.into()),
            limit,
            offset,
            marker: marker.map(String::from),
            with_count: true,
        };
        let ids =
            |p: Page<Transfer>| -> Vec<String> { p.items.into_iter().map(|t| t.id).collect() };
        let first = s.list_transfers(&q("a", 2, 0, None)).unwrap();
        assert_eq!(first.count, Some(5));
        assert_eq!(ids(first), ["t4", "t3"]);
        assert_eq!(
            ids(s.list_transfers(&q("a", 10, 0, Some("t3"))).unwrap()),
            ["t2", "t1", "t0"]
        );
        assert_eq!(
            ids(s.list_transfers(&q("a", 2, 3, None)).unwrap()),
            ["t1", "t0"]
        );
        assert!(
            s.list_transfers(&q("b", 10, 0, None))
                .unwrap()
                .items
                .is_empty()
        );
        assert_eq!(
            s.list_transfers(&q("a", 10, 0, Some("nope")))
                .unwrap_err()
                .kind(),
            StoreErrorKind::MarkerNotFound
        );
    }
}
