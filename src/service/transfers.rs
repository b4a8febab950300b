//! Volume transfers between projects. The owner offers a volume and gets a
//! one-time key; whoever presents the transfer's id and key takes the
//! volume, with its snapshots, into their own project. The key is shown
//! once and stored only as a salted hash, compared in constant time.

use super::{Caller, JobParams, Result, Service, ServiceError, not_found};
use crate::store::model::*;
use crate::store::{Acceptance, StoreError, Transfer, TransferQuery, TransferQuota, TransferState};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Length of a generated key, as Cinder's default.
const KEY_LEN: usize = 16;

#[derive(Debug, Clone, Default)]
pub struct CreateTransfer {
    pub volume_id: String,
    pub name: Option<String>,
    /// Leave snapshots behind; refused when the volume has any.
    pub no_snapshots: bool,
}

/// A new transfer with its key, which exists only in this answer.
#[derive(Debug, Clone)]
pub struct NewTransfer {
    pub transfer: Transfer,
    pub auth_key: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key_hash(salt: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(b":");
    h.update(key.as_bytes());
    hex(&h.finalize())
}

/// True when `key` is the transfer's key; the time taken does not depend
/// on how much of it matches.
pub fn key_matches(t: &Transfer, key: &str) -> bool {
    let want = t.key_hash.as_bytes();
    let got = key_hash(&t.salt, key);
    want.len() == got.len() && bool::from(want.ct_eq(got.as_bytes()))
}

fn new_key() -> (String, String) {
    use rand::RngExt;
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let key: String = (0..KEY_LEN)
        .map(|_| ALNUM[rng.random_range(0..ALNUM.len())] as char)
        .collect();
    let salt: Vec<u8> = (0..16).map(|_| rng.random_range(0..=255u8)).collect();
    (key, hex(&salt))
}

fn transfer_not_found(id: &str) -> impl FnOnce(StoreError) -> ServiceError + '_ {
    move |e| match e {
        StoreError::NotFound => ServiceError::NotFound {
            what: "transfer",
            id: id.to_string(),
        },
        e => e.into(),
    }
}

impl Service {
    /// Offers an available volume: it goes to awaiting-transfer until the
    /// transfer is accepted or deleted.
    pub fn create_transfer(&self, caller: &Caller, req: CreateTransfer) -> Result<NewTransfer> {
        self.accepting()?;
        let v = self
            .store
            .get_volume(caller.scope(), &req.volume_id)
            .map_err(not_found(&req.volume_id))?;
        if v.state != VolumeState::Available {
            return Err(ServiceError::Conflict(format!(
                "volume {} is {}; only an available volume can be transferred",
                v.id, v.state
            )));
        }
        let (auth_key, salt) = new_key();
        let now = self.now();
        let transfer = Transfer {
            id: uuid::Uuid::new_v4().to_string(),
            volume_id: v.id.clone(),
            project_id: v.project_id.clone(),
            user_id: caller.user_id.clone(),
            name: req.name,
            key_hash: key_hash(&salt, &auth_key),
            salt,
            no_snapshots: req.no_snapshots,
            state: TransferState::Pending,
            destination_project_id: None,
            created_at: now.clone(),
            updated_at: now,
        };
        let job = self.transfer_job(JobKind::CreateTransfer, caller, &transfer);
        self.store
            .create_transfer(&transfer, &job)
            .map_err(not_found(&v.id))
            .map_err(|e| match e {
                ServiceError::Store(StoreError::WrongState(s)) => ServiceError::Conflict(format!(
                    "volume {} is {s}; only an available volume can be transferred",
                    v.id
                )),
                e => e,
            })?;
        tracing::info!(transfer = %transfer.id, volume = %v.id, job = %job.id, "transfer offered");
        Ok(NewTransfer { transfer, auth_key })
    }

    /// A pending transfer of the caller's project (any project for admins).
    pub fn get_transfer(&self, caller: &Caller, id: &str) -> Result<Transfer> {
        self.store
            .get_transfer(caller.scope(), id)
            .map_err(transfer_not_found(id))
    }

    /// A page of pending transfers; only admins may name another project.
    pub fn list_transfers(&self, caller: &Caller, mut q: TransferQuery) -> Result<Page<Transfer>> {
        if !caller.admin || q.project_id.is_none() {
            q.project_id = caller.scope().map(String::from);
        }
        Ok(self.store.list_transfers(&q)?)
    }

    /// Takes the volume into the caller's project when `auth_key` is the
    /// transfer's key. The receiving project's quota must hold the volume
    /// and its snapshots. Returns the accepted transfer.
    pub fn accept_transfer(&self, caller: &Caller, id: &str, auth_key: &str) -> Result<Transfer> {
        self.accepting()?;
        let t = self
            .store
            .get_transfer(None, id)
            .map_err(transfer_not_found(id))?;
        if !key_matches(&t, auth_key) {
            tracing::info!(transfer = %id, project = %caller.project_id, "transfer accept with a wrong key");
            return Err(ServiceError::invalid(
                "auth_key",
                format!("the key does not match transfer {id}"),
            ));
        }
        let v = self
            .store
            .get_volume(None, &t.volume_id)
            .map_err(not_found(&t.volume_id))?;
        let limits = self.quota_limits(&caller.project_id);
        if v.size_gib > limits.per_volume_gigabytes {
            return Err(ServiceError::QuotaExceeded {
                resource: "per_volume_gigabytes",
                limit: limits.per_volume_gigabytes,
                in_use: 0,
                requested: v.size_gib,
            });
        }
        let job = self.transfer_job(JobKind::AcceptTransfer, caller, &t);
        let now = self.now();
        self.store
            .accept_transfer(&Acceptance {
                transfer_id: id,
                project_id: &caller.project_id,
                user_id: &caller.user_id,
                quota: &TransferQuota {
                    volumes: limits.volumes,
                    gigabytes: limits.gigabytes,
                    snapshots: limits.snapshots,
                },
                job: &job,
                now: &now,
            })
            .map_err(transfer_not_found(id))
            .map_err(|e| match e {
                ServiceError::Store(StoreError::WrongState(s)) => {
                    ServiceError::Conflict(format!("volume {} is {s}; cannot accept it now", v.id))
                }
                e => e,
            })?;
        tracing::info!(transfer = %id, volume = %t.volume_id, from = %t.project_id, to = %caller.project_id, job = %job.id, "transfer accepted");
        Ok(Transfer {
            state: TransferState::Accepted,
            destination_project_id: Some(caller.project_id.clone()),
            updated_at: now,
            ..t
        })
    }

    /// Cancels a pending transfer of the caller's project; the volume is
    /// available again. Returns whether there was one to cancel.
    pub fn delete_transfer(&self, caller: &Caller, id: &str) -> Result<bool> {
        let t = match self.store.get_transfer(caller.scope(), id) {
            Ok(t) => t,
            Err(StoreError::NotFound) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let job = self.transfer_job(JobKind::DeleteTransfer, caller, &t);
        let now = self.now();
        let done = self
            .store
            .delete_transfer(caller.scope(), id, &job, &now)?
            .is_some();
        if done {
            tracing::info!(transfer = %id, volume = %t.volume_id, job = %job.id, "transfer deleted");
        }
        Ok(done)
    }

    fn transfer_job(&self, kind: JobKind, caller: &Caller, t: &Transfer) -> Job {
        let params = JobParams::Transfer {
            transfer_id: t.id.clone(),
        };
        self.new_job(kind, caller, &t.volume_id, &params, JobState::Succeeded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(salt: &str, key: &str) -> Transfer {
        Transfer {
            id: "t".into(),
            volume_id: "v".into(),
            project_id: "p".into(),
            user_id: "u".into(),
            name: None,
            salt: salt.into(),
            key_hash: key_hash(salt, key),
            no_snapshots: false,
            state: TransferState::Pending,
            destination_project_id: None,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn keys_are_salted_and_checked() {
        let (key, salt) = new_key();
        assert_eq!(key.len(), KEY_LEN);
        assert_eq!(salt.len(), 32);
        let t = transfer(&salt, &key);
        assert!(!t.key_hash.contains(&key));
        assert!(key_matches(&t, &key));
        assert!(!key_matches(&t, ""));
        assert!(!key_matches(&t, &key[1..]));
        assert!(!key_matches(&t, &format!("{key}x")));
        // The same key under another salt hashes differently.
        assert_ne!(transfer("00", &key).key_hash, transfer("01", &key).key_hash);
        let (k2, _) = new_key();
        assert_ne!(key, k2);
    }
}
