//! Cinder microversions: the range served, the named versions whose
//! behaviour changes what a request does or shows, and negotiation of the
//! `OpenStack-API-Version: volume X.Y` header.

use std::fmt;

/// A v3 microversion, or the v2 API (which behaves as 3.0 without a header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Microversion(pub u16, pub u16);

impl fmt::Display for Microversion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

pub const MIN: Microversion = Microversion(3, 0);
/// The highest microversion served. 3.68 (re-image) is not offered.
pub const MAX: Microversion = Microversion(3, 67);

/// `GET volumes/summary`.
pub const VOLUME_SUMMARY: Microversion = Microversion(3, 12);
/// `group_id` in volume details.
pub const GROUP_VOLUME: Microversion = Microversion(3, 13);
/// `group_snapshot_id` in snapshots.
pub const GROUP_SNAPSHOTS: Microversion = Microversion(3, 14);
/// `provider_id` in volume details (admin).
pub const VOLUME_DETAIL_PROVIDER_ID: Microversion = Microversion(3, 21);
/// `name~` and `status~`: filters by contained text.
pub const LIKE_FILTER: Microversion = Microversion(3, 34);
/// Volume summary carries `metadata`.
pub const VOLUME_SUMMARY_METADATA: Microversion = Microversion(3, 36);
/// Revert a volume to its latest snapshot.
pub const VOLUME_REVERT: Microversion = Microversion(3, 40);
/// `user_id` in snapshots.
pub const SNAPSHOT_LIST_USER_ID: Microversion = Microversion(3, 41);
/// Extending an in-use volume.
pub const VOLUME_EXTEND_INUSE: Microversion = Microversion(3, 42);
/// `with_count` on lists.
pub const SUPPORT_COUNT_INFO: Microversion = Microversion(3, 45);
/// `shared_targets` and `service_uuid` in volume details.
pub const VOLUME_SHARED_TARGETS_AND_SERVICE_FIELDS: Microversion = Microversion(3, 48);
/// `/volume-transfers`, whose create takes `no_snapshots`.
pub const TRANSFER_WITH_SNAPSHOTS: Microversion = Microversion(3, 55);
/// `accepted`, `source_project_id` and `destination_project_id` in transfers.
pub const TRANSFER_WITH_HISTORY: Microversion = Microversion(3, 57);
/// `created_at` / `updated_at` filters with gt, gte, lt, lte, eq, neq.
pub const VOLUME_TIME_COMPARISON_FILTER: Microversion = Microversion(3, 60);
/// `cluster_name` in volume details (admin).
pub const VOLUME_CLUSTER_NAME: Microversion = Microversion(3, 61);
/// `volume_type_id` in volume details.
pub const VOLUME_TYPE_ID_IN_VOLUME_DETAIL: Microversion = Microversion(3, 63);
/// `encryption_key_id` in volume details (only when encrypted).
pub const ENCRYPTION_KEY_ID_IN_DETAILS: Microversion = Microversion(3, 64);
/// `consumes_quota` in volumes and snapshots.
pub const USE_QUOTA: Microversion = Microversion(3, 65);
/// Snapshots of in-use volumes without `force`.
pub const SNAPSHOT_IN_USE: Microversion = Microversion(3, 66);
/// The project id in the URL becomes optional.
pub const PROJECT_ID_OPTIONAL: Microversion = Microversion(3, 67);

impl Microversion {
    pub fn at_least(self, v: Microversion) -> bool {
        self >= v
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Negotiation {
    Ok(Microversion),
    /// Well formed but outside the served range: 406.
    OutOfRange(String),
    /// Unreadable: 400.
    Malformed(String),
}

/// Reads the `volume` entry of `OpenStack-API-Version` (several services
/// may share the header, comma separated). No entry means 3.0.
pub fn negotiate(header: Option<&str>) -> Negotiation {
    let Some(h) = header else {
        return Negotiation::Ok(MIN);
    };
    let entry = h.split(',').map(str::trim).find_map(|part| {
        let (svc, ver) = part.split_once(char::is_whitespace)?;
        (svc.eq_ignore_ascii_case("volume") || svc.eq_ignore_ascii_case("block-storage"))
            .then(|| ver.trim())
    });
    let Some(v) = entry else {
        return Negotiation::Ok(MIN);
    };
    if v.eq_ignore_ascii_case("latest") {
        return Negotiation::Ok(MAX);
    }
    let parsed = v
        .split_once('.')
        .and_then(|(a, b)| Some(Microversion(a.parse().ok()?, b.parse().ok()?)));
    match parsed {
        None => Negotiation::Malformed(format!(
            "Invalid API version request string {v:?}; use \"volume X.Y\""
        )),
        Some(m) if m < MIN || m > MAX => Negotiation::OutOfRange(format!(
            "Version {m} is not supported by the API. Minimum is {MIN} and maximum is {MAX}."
        )),
        Some(m) => Negotiation::Ok(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(None), Negotiation::Ok(MIN));
        assert_eq!(
            negotiate(Some("volume 3.42")),
            Negotiation::Ok(Microversion(3, 42))
        );
        assert_eq!(
            negotiate(Some("compute 2.1, volume latest")),
            Negotiation::Ok(MAX)
        );
        assert_eq!(negotiate(Some("compute 2.90")), Negotiation::Ok(MIN));
        assert!(matches!(
            negotiate(Some("volume 3.68")),
            Negotiation::OutOfRange(_)
        ));
        assert!(matches!(
            negotiate(Some("volume 2.9")),
            Negotiation::OutOfRange(_)
        ));
        assert!(matches!(
            negotiate(Some("volume 3")),
            Negotiation::Malformed(_)
        ));
        assert!(matches!(
            negotiate(Some("volume x.y")),
            Negotiation::Malformed(_)
        ));
        assert!(Microversion(3, 10) > Microversion(3, 9));
    }
}
