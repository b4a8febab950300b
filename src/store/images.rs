//! Image metadata of volumes made from images: the Glance properties
//! Cinder shows as `volume_image_metadata`, with the bootable flag set in
//! the same transaction that records them.

use super::model::*;
use super::{Result, Store, StoreError, get_volume_in, insert_job};
use rusqlite::params;

/// A change to a volume's image metadata.
#[derive(Debug, Clone)]
pub enum ImageMetaChange {
    /// Replace it all and mark the volume bootable (a create from an image).
    Replace(Vec<(String, String)>),
    /// Add or overwrite these keys.
    Merge(Vec<(String, String)>),
    /// Remove one key; NotFound when it is absent.
    Delete(String),
}

impl Store {
    pub fn image_metadata(&self, volume_id: &str) -> Result<Vec<(String, String)>> {
        self.read(|c| image_metadata_in(c, volume_id))
    }

    /// The image metadata of several volumes in one query, by volume id
    /// (volumes without any are absent).
    pub fn image_metadata_of(
        &self,
        volume_ids: &[&str],
    ) -> Result<std::collections::HashMap<String, std::collections::BTreeMap<String, String>>> {
        let mut out = std::collections::HashMap::new();
        if volume_ids.is_empty() {
            return Ok(out);
        }
        let ids = serde_json::to_string(volume_ids)
            .map_err(|e| StoreError::Corrupt(format!("volume ids as JSON: {e}")))?;
        let rows = self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT volume_id, key, value FROM volume_image_metadata WHERE volume_id IN \
                 (SELECT value FROM json_each(?1))",
            )?;
            let rows = st.query_map([ids], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<(String, String, String)>>>()?)
        })?;
        for (v, k, val) in rows {
            out.entry(v)
                .or_insert_with(std::collections::BTreeMap::new)
                .insert(k, val);
        }
        Ok(out)
    }

    /// Applies `change` to a volume in one of `allowed`, with the job that
    /// records it (None when a running job makes the change).
    pub fn change_image_metadata(
        &self,
        project: Option<&str>,
        volume_id: &str,
        allowed: &[VolumeState],
        change: &ImageMetaChange,
        job: Option<&Job>,
        now: &str,
    ) -> Result<Vec<(String, String)>> {
        self.write(|tx| {
            let v = get_volume_in(tx, project, volume_id)?;
            if !allowed.contains(&v.state) {
                return Err(StoreError::WrongState(v.state));
            }
            let put = |k: &str, val: &str| {
                tx.execute(
                    "INSERT OR REPLACE INTO volume_image_metadata (volume_id, key, value) VALUES (?1, ?2, ?3)",
                    params![volume_id, k, val],
                )
            };
            match change {
                ImageMetaChange::Replace(entries) => {
                    tx.execute(
                        "DELETE FROM volume_image_metadata WHERE volume_id = ?1",
                        [volume_id],
                    )?;
                    for (k, val) in entries {
                        put(k, val)?;
                    }
                    tx.execute(
                        "UPDATE volumes SET bootable = 1, modified_at = ?2 WHERE id = ?1",
                        params![volume_id, now],
                    )?;
                }
                ImageMetaChange::Merge(entries) => {
                    for (k, val) in entries {
                        put(k, val)?;
                    }
                }
                ImageMetaChange::Delete(k) => {
                    let n = tx.execute(
                        "DELETE FROM volume_image_metadata WHERE volume_id = ?1 AND key = ?2",
                        params![volume_id, k],
                    )?;
                    if n == 0 {
                        return Err(StoreError::NotFound);
                    }
                }
            }
            if let Some(j) = job {
                insert_job(tx, j)?;
            }
            let mut st = tx.prepare_cached(
                "SELECT key, value FROM volume_image_metadata WHERE volume_id = ?1 ORDER BY key",
            )?;
            let rows = st.query_map([volume_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }
}

pub(super) fn image_metadata_in(
    c: &rusqlite::Connection,
    volume_id: &str,
) -> Result<Vec<(String, String)>> {
    let mut st = c.prepare_cached(
        "SELECT key, value FROM volume_image_metadata WHERE volume_id = ?1 ORDER BY key",
    )?;
    let rows = st.query_map([volume_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}
