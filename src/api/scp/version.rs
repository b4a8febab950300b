//! SCP version negotiation: the `Scp-Api-Version` header against the
//! lifecycle table from configuration, evaluated on the clock's date.

use crate::config::{SERVED_SCP_VERSIONS, VersionConfig, VersionStatus};
use chrono::NaiveDate;

/// A dialect version this build answers in. Ordered, so `>=` reads as
/// "this version or later".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ApiVersion {
    V1_0,
    V1_1,
    V1_2,
    V1_3,
}

impl ApiVersion {
    pub fn parse(s: &str) -> Option<ApiVersion> {
        Some(match s {
            "1.0" => ApiVersion::V1_0,
            "1.1" => ApiVersion::V1_1,
            "1.2" => ApiVersion::V1_2,
            "1.3" => ApiVersion::V1_3,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V1_0 => "1.0",
            ApiVersion::V1_1 => "1.1",
            ApiVersion::V1_2 => "1.2",
            ApiVersion::V1_3 => "1.3",
        }
    }

    /// QoS fields and `PUT /qos` arrived in 1.2.
    pub fn has_qos(self) -> bool {
        self >= ApiVersion::V1_2
    }
}

/// Why a requested version cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionRefusal {
    Malformed(String),
    Unknown(String),
    Planned(String),
    Expired { id: String, since: String },
}

impl VersionRefusal {
    pub fn message(&self, latest: &str) -> String {
        match self {
            VersionRefusal::Malformed(h) => {
                format!("Scp-Api-Version {h:?} is not of the form \"virtualserver <version>\"")
            }
            VersionRefusal::Unknown(v) => {
                format!("API version virtualserver {v} is unknown; the latest is {latest}")
            }
            VersionRefusal::Planned(v) => format!(
                "API version virtualserver {v} is planned and not callable yet; the latest is {latest}"
            ),
            VersionRefusal::Expired { id, since } => format!(
                "API version virtualserver {id} is deprecated and no longer supported since {since}; use {latest}"
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub struct VersionTable {
    entries: Vec<VersionConfig>,
}

impl VersionTable {
    pub fn new(entries: Vec<VersionConfig>) -> VersionTable {
        VersionTable { entries }
    }

    pub fn entries(&self) -> &[VersionConfig] {
        &self.entries
    }

    /// The newest CURRENT version this build serves.
    pub fn latest(&self) -> ApiVersion {
        self.entries
            .iter()
            .filter(|v| v.status == VersionStatus::Current)
            .filter_map(|v| ApiVersion::parse(&v.id))
            .max()
            .unwrap_or(ApiVersion::V1_3)
    }

    /// Picks the version for a request's header value (None: absent).
    pub fn negotiate(
        &self,
        header: Option<&str>,
        today: NaiveDate,
    ) -> Result<ApiVersion, VersionRefusal> {
        let Some(h) = header else {
            return Ok(self.latest());
        };
        let mut parts = h.split_whitespace();
        let (Some(service), Some(id), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(VersionRefusal::Malformed(h.to_string()));
        };
        if !service.eq_ignore_ascii_case("virtualserver") {
            return Err(VersionRefusal::Malformed(h.to_string()));
        }
        let id = id.trim_start_matches(['v', 'V']);
        let Some(entry) = self.entries.iter().find(|v| v.id == id) else {
            return Err(VersionRefusal::Unknown(id.to_string()));
        };
        match entry.status {
            VersionStatus::Planned => return Err(VersionRefusal::Planned(id.to_string())),
            VersionStatus::Deprecated => {
                if let Some(nb) = &entry.not_before
                    && let Ok(date) = NaiveDate::parse_from_str(nb, "%Y-%m-%d")
                    && today >= date
                {
                    return Err(VersionRefusal::Expired {
                        id: id.to_string(),
                        since: nb.clone(),
                    });
                }
            }
            VersionStatus::Current | VersionStatus::Supported => {}
        }
        if !SERVED_SCP_VERSIONS.contains(&id) {
            return Err(VersionRefusal::Unknown(id.to_string()));
        }
        ApiVersion::parse(id).ok_or_else(|| VersionRefusal::Unknown(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::builtin_versions;

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn lifecycle_follows_the_date() {
        let t = VersionTable::new(builtin_versions());
        let neg = |h: &str, d: &str| t.negotiate(Some(h), day(d));
        assert_eq!(neg("virtualserver 1.3", "2026-12-02"), Ok(ApiVersion::V1_3));
        assert_eq!(neg("virtualserver 1.2", "2026-12-02"), Ok(ApiVersion::V1_2));
        assert!(matches!(
            neg("virtualserver 1.1", "2026-12-02"),
            Err(VersionRefusal::Expired { .. })
        ));
        assert_eq!(neg("virtualserver 1.1", "2026-05-30"), Ok(ApiVersion::V1_1));
        // The not_before date itself has "arrived".
        assert!(neg("virtualserver 1.1", "2026-05-31").is_err());
        assert_eq!(neg("virtualserver 1.0", "2025-12-30"), Ok(ApiVersion::V1_0));
        assert!(matches!(
            neg("virtualserver 9.9", "2026-01-01"),
            Err(VersionRefusal::Unknown(_))
        ));
        assert!(matches!(
            neg("blockstorage 1.3", "2026-01-01"),
            Err(VersionRefusal::Malformed(_))
        ));
        assert_eq!(t.negotiate(None, day("2026-12-02")), Ok(ApiVersion::V1_3));
    }

    #[test]
    fn planned_is_listed_but_refused() {
        let mut v = builtin_versions();
        v.push(VersionConfig {
            id: "1.4".into(),
            status: VersionStatus::Planned,
            not_before: None,
        });
        let t = VersionTable::new(v);
        assert!(matches!(
            t.negotiate(Some("virtualserver 1.4"), day("2026-12-02")),
            Err(VersionRefusal::Planned(_))
        ));
        assert_eq!(t.latest(), ApiVersion::V1_3);
    }
}
