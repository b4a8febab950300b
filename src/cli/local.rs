//! Commands that read this host's store and files directly (read-only), so
//! they work while the daemon is stopped: `export show` and
//! `snapshot verify --local`.

use super::{Failure, exit};
use std::path::PathBuf;
use std::process::ExitCode;

fn data_dir(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> Result<PathBuf, Failure> {
    let conn = super::Conn {
        config,
        data_dir: data_dir.clone(),
        ..Default::default()
    };
    Ok(super::client::daemon_config(&conn)?.data_dir())
}

fn open_store(dir: &std::path::Path) -> Result<crate::store::Store, Failure> {
    let db = dir.join("blockd.db");
    crate::store::Store::open_read_only(&db)
        .map_err(|e| Failure::setup(format!("opening {}: {e}", db.display())))
}

/// Re-hashes a snapshot against its manifest; exit 1 on the first bad chunk.
pub fn snapshot_verify(
    id: &str,
    config: Option<PathBuf>,
    dir: Option<PathBuf>,
) -> Result<ExitCode, Failure> {
    let dir = data_dir(config, dir)?;
    let store = open_store(&dir)?;
    let s = store
        .get_snapshot(None, id)
        .map_err(|e| Failure::refused(404, format!("snapshot {id}: {e}")))?;
    let data = dir.join("snapshots").join(format!("{}.img", s.id));
    let manifest = crate::copy::Manifest::read_from(&crate::backend::manifest_path(&data))
        .map_err(|e| Failure::failed(format!("manifest of {id}: {e}")))?;
    if let Some(sum) = &s.checksum
        && *sum != manifest.checksum_hex()
    {
        println!("{id}\tBAD\tmanifest checksum differs from the store");
        return Ok(ExitCode::from(exit::FAILED));
    }
    let r = crate::copy::verify(&data, &manifest)
        .map_err(|e| Failure::failed(format!("verify {id}: {e}")))?;
    match r.first_bad_chunk {
        None if r.ok => {
            println!("{id}\tOK\t{} chunks", r.chunks);
            Ok(ExitCode::SUCCESS)
        }
        bad => {
            println!("{id}\tBAD\tfirst bad chunk {bad:?} of {}", r.chunks);
            Ok(ExitCode::from(exit::FAILED))
        }
    }
}

/// Where a volume is exposed on this host; exit 2 when it is not exported.
pub fn export_show(
    volume_id: &str,
    config: Option<PathBuf>,
    dir: Option<PathBuf>,
    json: bool,
) -> Result<ExitCode, Failure> {
    let dir = data_dir(config, dir)?;
    let store = open_store(&dir)?;
    let internal = |e: crate::store::StoreError| Failure::failed(e.to_string());
    let v = store
        .get_volume(None, volume_id)
        .map_err(|e| Failure::refused(404, format!("volume {volume_id}: {e}")))?;
    let x = store.export(volume_id).map_err(internal)?;
    if json {
        let out = serde_json::json!({
            "volume_id": v.id,
            "state": v.state.as_str(),
            "export": x,
            "attachments": store.attachments(volume_id).map_err(internal)?,
        });
        println!("{out}");
    } else {
        match &x {
            Some(x) => println!("{}\t{}\t{}\t{}", v.id, v.state, x.kind, x.host_path),
            None => println!("{}\t{}\tnot exported", v.id, v.state),
        }
    }
    Ok(if x.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::NOT_EXPORTED)
    })
}
