//! Records the store keeps, and the closed sets of values they use.

use serde::Serialize;

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($var:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($var),+ }
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }
            pub fn parse(s: &str) -> Option<$name> {
                match s { $($s => Some($name::$var),)+ _ => None }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// Where a volume is in its lifecycle.
    VolumeState {
        Creating => "creating",
        Available => "available",
        Reserved => "reserved",
        Attaching => "attaching",
        Detaching => "detaching",
        InUse => "in-use",
        Extending => "extending",
        Deleting => "deleting",
        Restoring => "restoring",
        AwaitingTransfer => "awaiting-transfer",
        Error => "error",
        ErrorExtending => "error_extending",
        ErrorDeleting => "error_deleting",
        ErrorRestoring => "error_restoring",
        Uploading => "uploading",
    }
);

impl VolumeState {
    /// States a job leaves behind it; a volume found in any other state at
    /// start-up without a running job was interrupted.
    pub fn is_transitional(self) -> bool {
        matches!(
            self,
            VolumeState::Creating
                | VolumeState::Attaching
                | VolumeState::Detaching
                | VolumeState::Extending
                | VolumeState::Deleting
                | VolumeState::Restoring
                | VolumeState::Uploading
        )
    }

    pub fn is_error(self) -> bool {
        matches!(
            self,
            VolumeState::Error
                | VolumeState::ErrorExtending
                | VolumeState::ErrorDeleting
                | VolumeState::ErrorRestoring
        )
    }
}

string_enum!(
    /// What a job does.
    JobKind {
        CreateVolume => "create_volume",
        ExtendVolume => "extend_volume",
        DeleteVolume => "delete_volume",
        UpdateVolume => "update_volume",
        SetQos => "set_qos",
        AttachVolume => "attach_volume",
        DetachVolume => "detach_volume",
        CreateSnapshot => "create_snapshot",
        DeleteSnapshot => "delete_snapshot",
        RevertVolume => "revert_volume",
        CreateTransfer => "create_transfer",
        AcceptTransfer => "accept_transfer",
        DeleteTransfer => "delete_transfer",
        SetQuota => "set_quota",
        UploadImage => "upload_image",
    }
);

string_enum!(
    /// A job's progress. Succeeded and Failed are terminal.
    JobState {
        Pending => "pending",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
    }
);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Volume {
    pub id: String,
    pub project_id: String,
    pub user_id: String,
    pub name: String,
    pub description: String,
    pub size_gib: u64,
    pub volume_type_id: String,
    pub volume_type: String,
    pub state: VolumeState,
    pub bootable: bool,
    pub encrypted: bool,
    pub multiattach: bool,
    pub snapshot_id: Option<String>,
    pub source_volid: Option<String>,
    pub max_iops: Option<u32>,
    pub max_throughput: Option<u32>,
    pub backend: String,
    pub error_reason: Option<String>,
    pub created_at: String,
    pub modified_at: String,
}

string_enum!(
    /// Where a snapshot is in its lifecycle.
    SnapshotStatus {
        Creating => "creating",
        Available => "available",
        Deleting => "deleting",
        Error => "error",
        ErrorDeleting => "error_deleting",
    }
);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub id: String,
    pub volume_id: String,
    pub project_id: String,
    pub user_id: String,
    pub name: String,
    pub description: Option<String>,
    pub size_gib: u64,
    pub status: SnapshotStatus,
    /// The client's metadata, stored as the JSON it sent.
    pub metadata: Option<String>,
    /// blake3 over the manifest's chunk hashes, once available.
    pub checksum: Option<String>,
    pub error_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Default)]
pub struct SnapshotQuery {
    pub project_id: Option<String>,
    pub volume_id: Option<String>,
    pub name: Option<String>,
    pub status: Option<String>,
    pub sort: Vec<(VolumeSortKey, SortDir)>,
    pub limit: u32,
    pub offset: u64,
    pub marker: Option<String>,
    pub with_count: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tag {
    pub key: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    pub id: String,
    pub volume_id: String,
    pub server_id: String,
    pub device: String,
    pub attached_at: String,
    pub delete_on_termination: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: String,
    pub kind: JobKind,
    pub volume_id: Option<String>,
    pub project_id: String,
    pub state: JobState,
    /// JSON parameters the job needs to run again after a crash.
    pub params: String,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// Sort keys a volume list accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeSortKey {
    CreatedAt,
    ModifiedAt,
    Name,
    Size,
    State,
    Id,
}

impl VolumeSortKey {
    pub fn parse(s: &str) -> Option<VolumeSortKey> {
        Some(match s {
            "created_at" => VolumeSortKey::CreatedAt,
            "modified_at" | "updated_at" => VolumeSortKey::ModifiedAt,
            "name" => VolumeSortKey::Name,
            "size" => VolumeSortKey::Size,
            "state" | "status" => VolumeSortKey::State,
            "id" => VolumeSortKey::Id,
            _ => return None,
        })
    }

    pub(crate) fn column(self) -> &'static str {
        match self {
            VolumeSortKey::CreatedAt => "created_at",
            VolumeSortKey::ModifiedAt => "modified_at",
            VolumeSortKey::Name => "name",
            VolumeSortKey::Size => "size_gib",
            VolumeSortKey::State => "state",
            VolumeSortKey::Id => "id",
        }
    }
}

/// A comparison on a volume column, e.g. `created_at > t` or `name`
/// containing a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub key: VolumeSortKey,
    pub op: CmpOp,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Contains,
}

impl CmpOp {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Contains => "LIKE",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortDir {
    Asc,
    Desc,
}

/// One page request over a project's volumes.
#[derive(Debug, Clone)]
pub struct VolumeQuery {
    /// None lists every project (admin views).
    pub project_id: Option<String>,
    pub name: Option<String>,
    pub state: Option<String>,
    pub bootable: Option<bool>,
    /// Volumes carrying every one of these tags (a missing value matches "").
    pub tags: Vec<Tag>,
    /// Comparisons every volume must pass.
    pub conditions: Vec<Condition>,
    pub sort: Vec<(VolumeSortKey, SortDir)>,
    pub limit: u32,
    pub offset: u64,
    pub marker: Option<String>,
    pub with_count: bool,
}

impl VolumeQuery {
    /// Whether the query narrows by project alone. Every field is named so
    /// that a new filter cannot be missed here.
    pub fn filters_project_only(&self) -> bool {
        let VolumeQuery {
            project_id: _,
            name,
            state,
            bootable,
            tags,
            conditions,
            sort: _,
            limit: _,
            offset: _,
            marker: _,
            with_count: _,
        } = self;
        name.is_none()
            && state.is_none()
            && bootable.is_none()
            && tags.is_empty()
            && conditions.is_empty()
    }
}

impl SnapshotQuery {
    /// Whether the query narrows by project alone (see `VolumeQuery`).
    pub fn filters_project_only(&self) -> bool {
        let SnapshotQuery {
            project_id: _,
            volume_id,
            name,
            status,
            sort: _,
            limit: _,
            offset: _,
            marker: _,
            with_count: _,
        } = self;
        volume_id.is_none() && name.is_none() && status.is_none()
    }
}

impl Default for VolumeQuery {
    fn default() -> Self {
        VolumeQuery {
            project_id: None,
            name: None,
            state: None,
            bootable: None,
            tags: Vec::new(),
            conditions: Vec::new(),
            sort: vec![(VolumeSortKey::CreatedAt, SortDir::Desc)],
            limit: 20,
            offset: 0,
            marker: None,
            with_count: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub count: Option<u64>,
}

/// What a project uses now, for quota answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub volumes: u64,
    pub gigabytes: u64,
    pub snapshots: u64,
}
