//! Configuration: the TOML file (or the embedded default), its validation,
//! and the credentials file generated on first start.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The configuration used when no file is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {file}: {message}")]
    Parse { file: String, message: String },
    #[error("config file {file}: key `{key}`: {problem}")]
    Invalid {
        file: String,
        key: String,
        problem: String,
    },
    #[error("cannot read config file {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("credentials file {file}: {problem}")]
    Credentials { file: String, problem: String },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where volumes, the database and generated credentials live.
    /// Empty means /var/lib/blockd for root, else a per-user state dir.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub scp: ScpConfig,
    #[serde(default = "default_volume_types")]
    pub volume_types: Vec<VolumeTypeConfig>,
    /// Name of the type used when a create names none.
    #[serde(default = "default_type_name")]
    pub default_volume_type: String,
    #[serde(default)]
    pub quota: QuotaConfig,
    #[serde(default)]
    pub jobs: JobsConfig,
    #[serde(default)]
    pub cinder: crate::api::cinder::config::CinderConfig,
    #[serde(default)]
    pub daemon: crate::ops::DaemonConfig,
    #[serde(default)]
    pub metrics: crate::ops::MetricsConfig,
    #[serde(default)]
    pub images: crate::images::ImagesConfig,
    /// Extra backends beside the built-in `file` one, named by volume types.
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    #[serde(default)]
    pub export: ExportConfig,
}

/// Export kinds blockd can serve.
pub const EXPORT_KINDS: &[&str] = &["loop", "vhost-user-blk"];

/// Where and how volumes are exported.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Run-time dir; vhost-user-blk sockets go in `<run_dir>/vhost/`.
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    /// Kind used when neither the attach nor the volume type names one.
    #[serde(default = "default_export_kind")]
    pub default_kind: String,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            run_dir: default_run_dir(),
            default_kind: default_export_kind(),
        }
    }
}

fn default_run_dir() -> PathBuf {
    PathBuf::from("/run/blockd")
}
fn default_export_kind() -> String {
    "loop".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScpConfig {
    #[serde(default = "default_scp_listen")]
    pub listen: String,
    #[serde(default)]
    pub credentials: Vec<Credential>,
    /// Overrides of the built-in version lifecycle table, matched by id.
    #[serde(default)]
    pub versions: Vec<VersionConfig>,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// How far a request's timestamp may be from our clock, in seconds.
    #[serde(default = "default_window")]
    pub signature_window_secs: i64,
    /// Scheme clients use to reach us; part of the signed URL. Set it to
    /// "https" behind a TLS proxy.
    #[serde(default = "default_scheme")]
    pub url_scheme: String,
}

impl Default for ScpConfig {
    fn default() -> Self {
        ScpConfig {
            listen: default_scp_listen(),
            credentials: Vec::new(),
            versions: Vec::new(),
            max_body_bytes: default_max_body(),
            signature_window_secs: default_window(),
            url_scheme: default_scheme(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub access_key: String,
    pub secret_key: String,
    pub user_id: String,
    pub project_id: String,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum VersionStatus {
    Current,
    Supported,
    Deprecated,
    Planned,
}

impl VersionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionStatus::Current => "CURRENT",
            VersionStatus::Supported => "SUPPORTED",
            VersionStatus::Deprecated => "DEPRECATED",
            VersionStatus::Planned => "PLANNED",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VersionConfig {
    pub id: String,
    pub status: VersionStatus,
    /// "YYYY-MM-DD"; a DEPRECATED version is refused from this date on.
    #[serde(default)]
    pub not_before: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Provisioning {
    /// Blocks are allocated on first write.
    Sparse,
    /// Every block is allocated at create and extend.
    Full,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeTypeConfig {
    pub name: String,
    /// Stable id; derived from the name when absent.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_provisioning")]
    pub provisioning: Provisioning,
    #[serde(default)]
    pub multiattach: bool,
    /// Snapshot copies share extents (FICLONE) where the filesystem can.
    #[serde(default = "yes")]
    pub reflink: bool,
    /// Export kind for attaches that name none (`loop`, `vhost-user-blk`);
    /// `export.default_kind` when absent.
    #[serde(default)]
    pub export: Option<String>,
    /// Name of the backend holding this type's volumes.
    #[serde(default = "default_backend_name")]
    pub backend: String,
}

fn default_backend_name() -> String {
    "file".into()
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    File,
    Lvm,
}

/// What an LVM volume's extents hold after delete.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum VolumeClear {
    /// Left as they are (a new volume is cleared anyway).
    None,
    /// Cleared before the LV is removed (discard or BLKZEROOUT, never a full write on sparse storage).
    #[default]
    Zero,
}

/// One `[[backends]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub name: String,
    pub kind: BackendKind,
    /// LVM: the volume group volumes are made in.
    #[serde(default)]
    pub volume_group: String,
    /// LVM: prefix of volume LV names (snapshots get `<prefix>snap-`).
    #[serde(default = "default_lv_prefix")]
    pub lv_prefix: String,
    /// LVM: thin pool to provision in (needs device-mapper); empty is thick.
    #[serde(default)]
    pub thin_pool: String,
    /// LVM: the only devices lvm2 may scan (`--devices`); empty scans as lvm.conf says.
    #[serde(default)]
    pub devices: Vec<PathBuf>,
    #[serde(default)]
    pub volume_clear: VolumeClear,
    /// LVM: the longest one lvm2 command may run.
    #[serde(default = "default_lvm_timeout")]
    pub command_timeout_secs: u64,
}

fn default_lv_prefix() -> String {
    "volume-".into()
}

fn default_lvm_timeout() -> u64 {
    60
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    #[serde(default = "default_quota_volumes")]
    pub volumes: u64,
    #[serde(default = "default_quota_snapshots")]
    pub snapshots: u64,
    /// Total GiB of volumes per project.
    #[serde(default = "default_quota_gigabytes")]
    pub gigabytes: u64,
    /// Largest single volume, in GiB.
    #[serde(default = "default_quota_per_volume")]
    pub per_volume_gigabytes: u64,
    /// Per-project overrides, keyed by project id.
    #[serde(default)]
    pub projects: BTreeMap<String, QuotaOverride>,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            volumes: default_quota_volumes(),
            snapshots: default_quota_snapshots(),
            gigabytes: default_quota_gigabytes(),
            per_volume_gigabytes: default_quota_per_volume(),
            projects: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaOverride {
    pub volumes: Option<u64>,
    pub snapshots: Option<u64>,
    pub gigabytes: Option<u64>,
    pub per_volume_gigabytes: Option<u64>,
}

/// The limits that apply to one project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimits {
    pub volumes: u64,
    pub snapshots: u64,
    pub gigabytes: u64,
    pub per_volume_gigabytes: u64,
}

impl QuotaConfig {
    pub fn for_project(&self, project: &str) -> QuotaLimits {
        let o = self.projects.get(project).cloned().unwrap_or_default();
        QuotaLimits {
            volumes: o.volumes.unwrap_or(self.volumes),
            snapshots: o.snapshots.unwrap_or(self.snapshots),
            gigabytes: o.gigabytes.unwrap_or(self.gigabytes),
            per_volume_gigabytes: o.per_volume_gigabytes.unwrap_or(self.per_volume_gigabytes),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// Wait this long before a job starts its work. Only for testing
    /// crash recovery; keep 0 in production.
    #[serde(default)]
    pub debug_delay_ms: u64,
}

fn default_scp_listen() -> String {
    "127.0.0.1:8780".into()
}
fn default_max_body() -> usize {
    64 * 1024
}
fn default_window() -> i64 {
    300
}
fn default_scheme() -> String {
    "http".into()
}
fn default_type_name() -> String {
    "SSD".into()
}
fn default_provisioning() -> Provisioning {
    Provisioning::Sparse
}
fn default_quota_volumes() -> u64 {
    100
}
fn default_quota_snapshots() -> u64 {
    100
}
fn default_quota_gigabytes() -> u64 {
    10240
}
fn default_quota_per_volume() -> u64 {
    4096
}

fn default_volume_types() -> Vec<VolumeTypeConfig> {
    let t = |name: &str, description: &str, provisioning| VolumeTypeConfig {
        name: name.into(),
        id: None,
        description: description.into(),
        provisioning,
        multiattach: false,
        reflink: true,
        backend: default_backend_name(),
        export: None,
    };
    vec![
        t("SSD", "Sparse volume on fast storage", Provisioning::Sparse),
        t(
            "SSD_Provisioned",
            "Fully allocated volume on fast storage",
            Provisioning::Full,
        ),
        t("HDD", "Sparse volume", Provisioning::Sparse),
    ]
}

/// The built-in SCP version lifecycle, as the public docs give it.
pub fn builtin_versions() -> Vec<VersionConfig> {
    let v = |id: &str, status, nb: Option<&str>| VersionConfig {
        id: id.into(),
        status,
        not_before: nb.map(String::from),
    };
    vec![
        v("1.0", VersionStatus::Deprecated, Some("2025-12-31")),
        v("1.1", VersionStatus::Deprecated, Some("2026-05-31")),
        v("1.2", VersionStatus::Supported, Some("2026-08-31")),
        v("1.3", VersionStatus::Current, None),
    ]
}

/// Dialect versions this build can answer in.
pub const SERVED_SCP_VERSIONS: [&str; 4] = ["1.0", "1.1", "1.2", "1.3"];

impl Config {
    /// Parses and validates `text`; `file` names the source in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.into(),
            message: e.to_string().trim_end().to_string(),
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Config::parse(EMBEDDED_DEFAULT, "<embedded default>"),
            Some(p) => {
                let file = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    file: file.clone(),
                    source,
                })?;
                Config::parse(&text, &file)
            }
        }
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |key: String, problem: String| ConfigError::Invalid {
            file: file.into(),
            key,
            problem,
        };
        self.scp
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| bad("scp.listen".into(), format!("not an address:port ({e})")))?;
        crate::ops::validate(&self.daemon, &self.metrics).map_err(|(k, p)| bad(k, p))?;
        self.images.validate().map_err(|(k, p)| bad(k, p))?;
        for (key, kind) in
            std::iter::once(("export.default_kind".to_string(), &self.export.default_kind)).chain(
                self.volume_types.iter().filter_map(|t| {
                    t.export
                        .as_ref()
                        .map(|k| (format!("volume_types.{}.export", t.name), k))
                }),
            )
        {
            if !EXPORT_KINDS.contains(&kind.as_str()) {
                return Err(bad(key, format!("{kind:?} is not one of {EXPORT_KINDS:?}")));
            }
        }
        if self.scp.max_body_bytes < 1024 {
            return Err(bad(
                "scp.max_body_bytes".into(),
                "must be at least 1024".into(),
            ));
        }
        if self.scp.signature_window_secs <= 0 {
            return Err(bad(
                "scp.signature_window_secs".into(),
                "must be positive".into(),
            ));
        }
        if self.scp.url_scheme != "http" && self.scp.url_scheme != "https" {
            return Err(bad("scp.url_scheme".into(), "must be http or https".into()));
        }
        for (i, c) in self.scp.credentials.iter().enumerate() {
            validate_credential(c).map_err(|p| bad(format!("scp.credentials[{i}]"), p))?;
        }
        let mut keys: Vec<&str> = self
            .scp
            .credentials
            .iter()
            .map(|c| c.access_key.as_str())
            .collect();
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return Err(bad(
                "scp.credentials".into(),
                "an access_key appears twice".into(),
            ));
        }
        for (i, v) in self.scp.versions.iter().enumerate() {
            if let Some(nb) = &v.not_before {
                NaiveDate::parse_from_str(nb, "%Y-%m-%d").map_err(|_| {
                    bad(
                        format!("scp.versions[{i}].not_before"),
                        format!("{nb:?} is not a YYYY-MM-DD date"),
                    )
                })?;
            }
            if !SERVED_SCP_VERSIONS.contains(&v.id.as_str()) && v.status != VersionStatus::Planned {
                return Err(bad(
                    format!("scp.versions[{i}].id"),
                    format!(
                        "version {:?} is not served by this build; only PLANNED is allowed for it",
                        v.id
                    ),
                ));
            }
        }
        if !self
            .versions()
            .iter()
            .any(|v| v.status == VersionStatus::Current)
        {
            return Err(bad("scp.versions".into(), "no version is CURRENT".into()));
        }
        self.cinder
            .validate()
            .map_err(|(key, problem)| bad(key, problem))?;
        for (i, b) in self.backends.iter().enumerate() {
            let key = |k: &str| format!("backends[{i}].{k}");
            let name_ok = !b.name.is_empty()
                && b.name.len() <= 64
                && b.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !name_ok {
                return Err(bad(key("name"), "must be 1-64 of A-Z a-z 0-9 - _".into()));
            }
            if b.name == "file" || self.backends[..i].iter().any(|o| o.name == b.name) {
                return Err(bad(key("name"), format!("{:?} is already taken", b.name)));
            }
            if b.kind == BackendKind::Lvm {
                for (k, v, allow_empty) in [
                    ("volume_group", &b.volume_group, false),
                    ("lv_prefix", &b.lv_prefix, false),
                    ("thin_pool", &b.thin_pool, true),
                ] {
                    if let Err(p) = crate::backend::lvm::check_lvm_name(v, allow_empty) {
                        return Err(bad(key(k), p));
                    }
                }
                if !(1..=3600).contains(&b.command_timeout_secs) {
                    return Err(bad(key("command_timeout_secs"), "must be 1-3600".into()));
                }
            }
        }
        if self.volume_types.is_empty() {
            return Err(bad(
                "volume_types".into(),
                "at least one type is needed".into(),
            ));
        }
        for (i, t) in self.volume_types.iter().enumerate() {
            if t.name.is_empty() || t.name.len() > 255 {
                return Err(bad(
                    format!("volume_types[{i}].name"),
                    "must be 1-255 characters".into(),
                ));
            }
            if let Some(id) = &t.id
                && uuid::Uuid::parse_str(id).is_err()
            {
                return Err(bad(
                    format!("volume_types[{i}].id"),
                    format!("{id:?} is not a UUID"),
                ));
            }
            if t.backend != "file" && !self.backends.iter().any(|b| b.name == t.backend) {
                return Err(bad(
                    format!("volume_types[{i}].backend"),
                    format!("{:?} is neither \"file\" nor one of backends", t.backend),
                ));
            }
            if self.volume_types[..i].iter().any(|o| o.name == t.name) {
                return Err(bad(
                    format!("volume_types[{i}].name"),
                    format!("{:?} appears twice", t.name),
                ));
            }
        }
        if !self
            .volume_types
            .iter()
            .any(|t| t.name == self.default_volume_type)
        {
            return Err(bad(
                "default_volume_type".into(),
                format!("{:?} is not one of volume_types", self.default_volume_type),
            ));
        }
        Ok(())
    }

    /// The version table in force: built-ins with the config's overrides.
    pub fn versions(&self) -> Vec<VersionConfig> {
        let mut table = builtin_versions();
        for o in &self.scp.versions {
            match table.iter_mut().find(|v| v.id == o.id) {
                Some(v) => *v = o.clone(),
                None => table.push(o.clone()),
            }
        }
        table
    }

    /// The data dir: configured, or the default for this user.
    pub fn data_dir(&self) -> PathBuf {
        if let Some(d) = &self.data_dir
            && !d.as_os_str().is_empty()
        {
            return d.clone();
        }
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/blockd");
        }
        if let Some(s) = std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
            return PathBuf::from(s).join("blockd");
        }
        match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".local/state/blockd"),
            None => PathBuf::from("blockd-data"),
        }
    }
}

fn validate_credential(c: &Credential) -> Result<(), String> {
    for (name, v) in [
        ("access_key", &c.access_key),
        ("secret_key", &c.secret_key),
        ("user_id", &c.user_id),
        ("project_id", &c.project_id),
    ] {
        if v.is_empty() || v.len() > 255 {
            return Err(format!("{name} must be 1-255 characters"));
        }
    }
    if c.secret_key.len() < 16 {
        return Err("secret_key must be at least 16 characters".into());
    }
    Ok(())
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    credentials: Vec<Credential>,
}

pub const CREDENTIALS_FILE: &str = "credentials.toml";

/// Loads the generated credentials from `data_dir`, creating them (mode
/// 0600) on first use. Returns the credentials and whether they are new.
pub fn load_or_generate_credentials(
    data_dir: &Path,
) -> Result<(Vec<Credential>, bool), ConfigError> {
    use rand::RngExt;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(CREDENTIALS_FILE);
    let file = path.display().to_string();
    let err = |problem: String| ConfigError::Credentials {
        file: file.clone(),
        problem,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let f: CredentialsFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
            for c in &f.credentials {
                validate_credential(c).map_err(&err)?;
            }
            if f.credentials.is_empty() {
                return Err(err("holds no credentials".into()));
            }
            Ok((f.credentials, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
            let mut rng = rand::rng();
            let mut pick = |n: usize| -> String {
                (0..n)
                    .map(|_| ALNUM[rng.random_range(0..ALNUM.len())] as char)
                    .collect()
            };
            let cred = Credential {
                access_key: pick(20),
                secret_key: pick(40),
                user_id: uuid::Uuid::new_v4().simple().to_string(),
                project_id: uuid::Uuid::new_v4().simple().to_string(),
            };
            let body = toml::to_string(&CredentialsFile {
                credentials: vec![cred.clone()],
            })
            .map_err(|e| err(e.to_string()))?;
            let tmp = data_dir.join(format!("{CREDENTIALS_FILE}.tmp"));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| err(e.to_string()))?;
            f.write_all(body.as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| err(e.to_string()))?;
            std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))?;
            Ok((vec![cred], true))
        }
        Err(e) => Err(err(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.scp.listen, "127.0.0.1:8780");
        assert_eq!(c.volume_types.len(), 3);
        assert!(c.scp.credentials.is_empty());
    }

    #[test]
    fn example_config_is_valid() {
        Config::parse(include_str!("../config/blockd.toml"), "blockd.toml").unwrap();
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = Config::parse("[scp]\nlisten = \"nowhere\"\n", "x.toml").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("x.toml") && s.contains("scp.listen"), "{s}");
        let e = Config::parse("[scp]\nlistn = \"1.2.3.4:5\"\n", "y.toml").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("y.toml") && s.contains("listn"), "{s}");
        let e = Config::parse(
            "[[scp.versions]]\nid = \"1.1\"\nstatus = \"SUPPORTED\"\nnot_before = \"May\"\n",
            "z.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("scp.versions[0].not_before"), "{e}");
        let e = Config::parse("data_dir = 5\n", "w.toml").unwrap_err();
        assert!(e.to_string().contains("data_dir"), "{e}");
    }

    #[test]
    fn version_overrides_merge_by_id() {
        let c = Config::parse(
            "[[scp.versions]]\nid = \"1.1\"\nstatus = \"SUPPORTED\"\n",
            "v.toml",
        )
        .unwrap();
        let v = c.versions();
        let one_one = v.iter().find(|v| v.id == "1.1").unwrap();
        assert_eq!(one_one.status, VersionStatus::Supported);
        assert_eq!(one_one.not_before, None);
        assert_eq!(v.len(), 4);
    }

    #[test]
    fn credentials_are_generated_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let (a, new_a) = load_or_generate_credentials(d.path()).unwrap();
        let (b, new_b) = load_or_generate_credentials(d.path()).unwrap();
        assert!(new_a && !new_b);
        assert_eq!(a, b);
        let mode = std::fs::metadata(d.path().join(CREDENTIALS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn backends_and_type_backends_are_checked() {
        let ok = "[[backends]]\nname = \"lvm-ssd\"\nkind = \"lvm\"\nvolume_group = \"vg0\"\n\
                  [[volume_types]]\nname = \"SSD\"\nbackend = \"lvm-ssd\"\n";
        let c = Config::parse(ok, "b.toml").unwrap();
        assert_eq!(c.backends[0].lv_prefix, "volume-");
        assert_eq!(c.backends[0].volume_clear, VolumeClear::Zero);
        assert_eq!(c.volume_types[0].backend, "lvm-ssd");
        for (text, key) in [
            (
                ok.replace("backend = \"lvm-ssd\"", "backend = \"nope\""),
                "volume_types[0].backend",
            ),
            (
                ok.replace("\"vg0\"", "\"--force\""),
                "backends[0].volume_group",
            ),
            (ok.replace("\"vg0\"", "\"\""), "backends[0].volume_group"),
            (
                ok.replace("name = \"lvm-ssd\"\nkind", "name = \"file\"\nkind"),
                "backends[0].name",
            ),
            (
                ok.replace(
                    "volume_group = \"vg0\"",
                    "volume_group = \"vg0\"\nthin_pool = \"a/b\"",
                ),
                "backends[0].thin_pool",
            ),
        ] {
            let e = Config::parse(&text, "b.toml").unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        // Defaults keep every type on the file backend.
        let d = Config::parse("", "d.toml").unwrap();
        assert!(d.volume_types.iter().all(|t| t.backend == "file"));
    }
}
