//! Pure parsers of lvm2's JSON reports (`--reportformat json --units b
//! --nosuffix`). lvm2 prints every value as a string; sizes may still carry
//! a `B` suffix or decimals on some versions, and an empty string means the
//! field does not apply to that row.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lvm report: {0}")]
pub struct ParseError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VgInfo {
    pub size: u64,
    pub free: u64,
    pub extent_size: u64,
}

/// One linear segment: `count` extents from `start_pe` of PV `pv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub pv: String,
    pub start_pe: u64,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvInfo {
    pub name: String,
    pub size: u64,
    /// Segments in LV order; empty for thin LVs (their data is in the pool).
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvInfo {
    pub name: String,
    pub vg: String,
    /// Byte offset of the first extent on the PV.
    pub pe_start: u64,
}

/// A size or count as lvm2 prints it: digits, maybe decimals ("0.00"),
/// maybe a trailing `B`. Empty is None.
pub fn number(s: &str) -> Result<Option<u64>, ParseError> {
    let t = s.trim();
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    if t.is_empty() {
        return Ok(None);
    }
    let (int, frac) = match t.split_once('.') {
        Some((i, f)) => (i, f),
        None => (t, ""),
    };
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(ParseError(format!("{s:?} is not a byte count")));
    }
    if frac.bytes().any(|b| b != b'0') {
        return Err(ParseError(format!("{s:?} is not a whole number of bytes")));
    }
    int.parse::<u64>()
        .map(Some)
        .map_err(|_| ParseError(format!("{s:?} does not fit in 64 bits")))
}

/// The rows of the first report section named `key` ("lv", "vg", "pv").
fn rows(json: &str, key: &str) -> Result<Vec<serde_json::Map<String, Value>>, ParseError> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(json).map_err(|e| ParseError(format!("not JSON: {e}")))?;
    let reports = v
        .get("report")
        .and_then(Value::as_array)
        .ok_or_else(|| ParseError("no \"report\" array".into()))?;
    let mut out = Vec::new();
    for r in reports {
        if let Some(list) = r.get(key).and_then(Value::as_array) {
            for row in list {
                match row.as_object() {
                    Some(o) => out.push(o.clone()),
                    None => return Err(ParseError(format!("a {key} row is not an object"))),
                }
            }
        }
    }
    Ok(out)
}

fn field<'a>(row: &'a serde_json::Map<String, Value>, name: &str) -> Result<&'a str, ParseError> {
    match row.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ParseError(format!("field {name} is not a string"))),
        None => Err(ParseError(format!("field {name} is missing"))),
    }
}

fn required(row: &serde_json::Map<String, Value>, name: &str) -> Result<u64, ParseError> {
    number(field(row, name)?)?.ok_or_else(|| ParseError(format!("field {name} is empty")))
}

/// `vgs -o vg_name,vg_size,vg_free,vg_extent_size`: the row of `vg`, or
/// None when the report does not list it.
pub fn parse_vg(json: &str, vg: &str) -> Result<Option<VgInfo>, ParseError> {
    for row in rows(json, "vg")? {
        if field(&row, "vg_name")? == vg {
            return Ok(Some(VgInfo {
                size: required(&row, "vg_size")?,
                free: required(&row, "vg_free")?,
                extent_size: required(&row, "vg_extent_size")?,
            }));
        }
    }
    Ok(None)
}

/// `pvs -o pv_name,vg_name,pe_start`.
pub fn parse_pvs(json: &str) -> Result<Vec<PvInfo>, ParseError> {
    rows(json, "pv")?
        .iter()
        .map(|row| {
            Ok(PvInfo {
                name: field(row, "pv_name")?.to_string(),
                vg: field(row, "vg_name")?.to_string(),
                pe_start: required(row, "pe_start")?,
            })
        })
        .collect()
}

/// `seg_pe_ranges`, e.g. "/dev/loop0:0-255" (several, space separated, for
/// striped or mirrored segments).
pub fn parse_pe_ranges(s: &str) -> Result<Vec<Segment>, ParseError> {
    s.split_whitespace()
        .map(|r| {
            let (pv, range) = r
                .rsplit_once(':')
                .ok_or_else(|| ParseError(format!("PE range {r:?} has no ':'")))?;
            let (a, b) = range
                .split_once('-')
                .ok_or_else(|| ParseError(format!("PE range {r:?} has no '-'")))?;
            let a = number(a)?.ok_or_else(|| ParseError(format!("PE range {r:?}")))?;
            let b = number(b)?.ok_or_else(|| ParseError(format!("PE range {r:?}")))?;
            if b < a || pv.is_empty() {
                return Err(ParseError(format!("PE range {r:?} is backwards")));
            }
            Ok(Segment {
                pv: pv.to_string(),
                start_pe: a,
                count: b - a + 1,
            })
        })
        .collect()
}

/// `lvs -o lv_name,lv_size,seg_pe_ranges` (one row per segment): the LVs
/// in report order with their segments merged.
pub fn parse_lvs(json: &str) -> Result<Vec<LvInfo>, ParseError> {
    let mut out: Vec<LvInfo> = Vec::new();
    for row in rows(json, "lv")? {
        let name = field(&row, "lv_name")?.to_string();
        if name.is_empty() {
            return Err(ParseError("an lv row has an empty lv_name".into()));
        }
        let size = required(&row, "lv_size")?;
        let segs = match row.get("seg_pe_ranges") {
            Some(Value::String(s)) => parse_pe_ranges(s)?,
            None => Vec::new(),
            Some(_) => return Err(ParseError("field seg_pe_ranges is not a string".into())),
        };
        match out.iter_mut().find(|l| l.name == name) {
            Some(l) => l.segments.extend(segs),
            None => out.push(LvInfo {
                name,
                size,
                segments: segs,
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LVS: &str = r#"  {
      "report": [
          {
              "lv": [
                  {"lv_name":"volume-a", "lv_size":"1073741824", "seg_pe_ranges":"/dev/loop0:0-255"},
                  {"lv_name":"volume-b", "lv_size":"2147483648", "seg_pe_ranges":"/dev/loop0:256-511"},
                  {"lv_name":"volume-b", "lv_size":"2147483648", "seg_pe_ranges":"/dev/loop1:0-255"},
                  {"lv_name":"thin1", "lv_size":"1073741824B", "seg_pe_ranges":""}
              ]
          }
      ]
  }"#;

    #[test]
    fn lvs_rows_merge_per_lv() {
        let lvs = parse_lvs(LVS).unwrap();
        assert_eq!(lvs.len(), 3);
        assert_eq!(lvs[0].size, 1 << 30);
        assert_eq!(
            lvs[0].segments,
            vec![Segment {
                pv: "/dev/loop0".into(),
                start_pe: 0,
                count: 256
            }]
        );
        assert_eq!(lvs[1].segments.len(), 2);
        assert_eq!(lvs[1].segments[1].pv, "/dev/loop1");
        assert!(lvs[2].segments.is_empty());
        assert_eq!(lvs[2].size, 1 << 30);
    }

    #[test]
    fn empty_reports_are_empty_not_errors() {
        assert_eq!(parse_lvs("").unwrap(), vec![]);
        assert_eq!(parse_lvs(r#"{"report":[{"lv":[]}]}"#).unwrap(), vec![]);
        assert_eq!(parse_lvs(r#"{"report":[]}"#).unwrap(), vec![]);
        assert_eq!(parse_vg(r#"{"report":[{"vg":[]}]}"#, "vg").unwrap(), None);
        assert_eq!(parse_pvs(r#"{"report":[{"pv":[]}]}"#).unwrap(), vec![]);
    }

    #[test]
    fn vg_and_pv_rows() {
        let vgs = r#"{"report":[{"vg":[
            {"vg_name":"other", "vg_size":"1", "vg_free":"1", "vg_extent_size":"1"},
            {"vg_name":"blockd-vg", "vg_size":"4290772992", "vg_free":"2143289344.00", "vg_extent_size":"4194304B"}]}]}"#;
        assert_eq!(
            parse_vg(vgs, "blockd-vg").unwrap(),
            Some(VgInfo {
                size: 4290772992,
                free: 2143289344,
                extent_size: 4 << 20
            })
        );
        assert_eq!(parse_vg(vgs, "nope").unwrap(), None);
        let pvs = r#"{"report":[{"pv":[{"pv_name":"/dev/loop0", "vg_name":"blockd-vg", "pe_start":"1048576"}]}]}"#;
        assert_eq!(
            parse_pvs(pvs).unwrap(),
            vec![PvInfo {
                name: "/dev/loop0".into(),
                vg: "blockd-vg".into(),
                pe_start: 1 << 20
            }]
        );
    }

    #[test]
    fn odd_and_broken_input_is_an_error_naming_the_problem() {
        let missing = r#"{"report":[{"vg":[{"vg_name":"v", "vg_size":"1"}]}]}"#;
        assert!(
            parse_vg(missing, "v")
                .unwrap_err()
                .0
                .contains("vg_free is missing")
        );
        let empty = r#"{"report":[{"vg":[{"vg_name":"v", "vg_size":"", "vg_free":"1", "vg_extent_size":"1"}]}]}"#;
        assert!(
            parse_vg(empty, "v")
                .unwrap_err()
                .0
                .contains("vg_size is empty")
        );
        let units = r#"{"report":[{"vg":[{"vg_name":"v", "vg_size":"4.00g", "vg_free":"1", "vg_extent_size":"1"}]}]}"#;
        assert!(
            parse_vg(units, "v")
                .unwrap_err()
                .0
                .contains("not a byte count")
        );
        assert!(parse_lvs("{not json").unwrap_err().0.contains("not JSON"));
        assert!(parse_lvs(r#"{"x":1}"#).unwrap_err().0.contains("report"));
        assert!(parse_lvs(r#"{"report":[{"lv":[{"lv_name":"a","lv_size":1}]}]}"#).is_err());
        assert!(parse_pe_ranges("/dev/sda:9-3").is_err());
        assert!(parse_pe_ranges("/dev/sda").is_err());
        assert_eq!(
            number("12.50").unwrap_err().0,
            "\"12.50\" is not a whole number of bytes"
        );
        assert!(number("99999999999999999999999").is_err());
        assert_eq!(number(" 0 ").unwrap(), Some(0));
        assert_eq!(number("").unwrap(), None);
    }

    #[test]
    fn pe_ranges_keep_colons_in_device_paths() {
        let s = parse_pe_ranges("/dev/disk/by-path/pci-0000:00:1f.2:10-19 /dev/sdb:0-0").unwrap();
        assert_eq!(s[0].pv, "/dev/disk/by-path/pci-0000:00:1f.2");
        assert_eq!((s[0].start_pe, s[0].count), (10, 10));
        assert_eq!((s[1].pv.as_str(), s[1].count), ("/dev/sdb", 1));
    }
}
