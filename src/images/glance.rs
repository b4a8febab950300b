//! A Glance v2 client: image metadata, streamed downloads that are
//! checksummed as they arrive and written sparsely, image creation, uploads
//! streamed from a file, and deletes. Every request carries the caller's
//! token when there is one.

use super::{ImageError, Result};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

/// An image record as `GET /v2/images/{id}` answers it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Image {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub visibility: String,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub disk_format: Option<String>,
    #[serde(default)]
    pub container_format: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub virtual_size: Option<u64>,
    #[serde(default)]
    pub checksum: Option<String>,
    #[serde(default)]
    pub os_hash_algo: Option<String>,
    #[serde(default)]
    pub os_hash_value: Option<String>,
    #[serde(default)]
    pub min_disk: Option<u64>,
    #[serde(default)]
    pub min_ram: Option<u64>,
    /// Everything else: custom properties and Glance's own fields.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Glance's own fields that are not image properties.
const NOT_PROPERTIES: &[&str] = &[
    "self",
    "file",
    "schema",
    "created_at",
    "updated_at",
    "tags",
    "locations",
    "direct_url",
    "stores",
    "protected",
    "os_hidden",
    "deleted",
    "deleted_at",
];

impl Image {
    /// The checksum that a download must match: the multihash when Glance
    /// has one, else md5. None for an image with no recorded checksum.
    pub fn expected_hash(&self) -> Option<(String, String)> {
        match (&self.os_hash_algo, &self.os_hash_value) {
            (Some(a), Some(v)) if !a.is_empty() && !v.is_empty() => Some((a.clone(), v.clone())),
            _ => self
                .checksum
                .clone()
                .filter(|c| !c.is_empty())
                .map(|c| ("md5".to_string(), c)),
        }
    }

    /// What identifies this image's content for the cache.
    pub fn fingerprint(&self) -> String {
        match self.expected_hash() {
            Some((a, v)) => format!("{a}:{v}"),
            None => format!("size:{}", self.size.unwrap_or(0)),
        }
    }

    /// The properties a volume made from this image keeps, as Cinder's
    /// `volume_image_metadata` shows them (all values strings).
    pub fn volume_metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("image_id".into(), self.id.clone());
        if let Some(n) = &self.name {
            m.insert("image_name".into(), n.clone());
        }
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        };
        put("checksum", self.checksum.clone());
        put("container_format", self.container_format.clone());
        put("disk_format", self.disk_format.clone());
        put("min_disk", Some(self.min_disk.unwrap_or(0).to_string()));
        put("min_ram", Some(self.min_ram.unwrap_or(0).to_string()));
        put("size", self.size.map(|s| s.to_string()));
        for (k, v) in &self.extra {
            if NOT_PROPERTIES.contains(&k.as_str()) || k.len() > 255 {
                continue;
            }
            let s = match v {
                Value::Null => continue,
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if s.len() <= 255 {
                m.insert(k.clone(), s);
            }
        }
        m
    }
}

/// A new image to register before an upload.
#[derive(Debug, Clone, Serialize)]
pub struct NewImage {
    pub name: String,
    pub disk_format: String,
    pub container_format: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visibility: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protected: Option<bool>,
    /// The caller's project (Glance accepts one's own project as owner).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(flatten)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Clone)]
pub struct Glance {
    base: String,
    http: reqwest::Client,
    /// For uploads: Glance answers only once it has stored the whole
    /// image, which can take longer than any read timeout.
    upload_http: reqwest::Client,
}

/// Writes are grouped into blocks of this size; all-zero blocks become holes.
const BLOCK: usize = 1 << 20;

impl Glance {
    pub fn new(url: &str, timeout: Duration) -> Result<Glance> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .build()
            .map_err(|e| ImageError::Unavailable(format!("cannot build an HTTP client: {e}")))?;
        let upload_http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .build()
            .map_err(|e| ImageError::Unavailable(format!("cannot build an HTTP client: {e}")))?;
        Ok(Glance {
            base: url.trim_end_matches('/').to_string(),
            http,
            upload_http,
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    fn req(&self, m: reqwest::Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let r = self.http.request(m, format!("{}{path}", self.base));
        match token {
            Some(t) => r.header("X-Auth-Token", t),
            None => r,
        }
    }

    async fn send(&self, r: reqwest::RequestBuilder, what: &str) -> Result<reqwest::Response> {
        r.send().await.map_err(|e| {
            let why = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            ImageError::Unavailable(format!(
                "{what}: {why} talking to Glance at {}: {}",
                self.base,
                crate::service::reason(&e)
            ))
        })
    }

    /// Turns a non-success answer into an error; `id` names the image.
    async fn check(&self, resp: reqwest::Response, id: &str) -> Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let detail: String = body.chars().take(300).collect();
        Err(match status.as_u16() {
            404 => ImageError::NotFound(id.to_string()),
            400 | 409 | 413 => {
                // Clients see the status only; Glance's own words go to the log.
                tracing::warn!(image = %id, %status, detail = %detail, "Glance refused a request");
                ImageError::Invalid(format!(
                    "Glance refused the request for image {id} ({status})"
                ))
            }
            401 | 403 => ImageError::Unavailable(format!(
                "Glance does not allow access to image {id} ({status})"
            )),
            _ => ImageError::Unavailable(format!(
                "Glance answered {status} for image {id}: {detail}"
            )),
        })
    }

    pub async fn get_image(&self, id: &str, token: Option<&str>) -> Result<Image> {
        let r = self.req(reqwest::Method::GET, &format!("/v2/images/{id}"), token);
        let resp = self.send(r, "image lookup").await?;
        let resp = self.check(resp, id).await?;
        resp.json::<Image>().await.map_err(|e| {
            ImageError::Unavailable(format!("Glance's answer for image {id} is unreadable: {e}"))
        })
    }

    pub async fn create_image(&self, new: &NewImage, token: Option<&str>) -> Result<Image> {
        let r = self
            .req(reqwest::Method::POST, "/v2/images", token)
            .json(new);
        let resp = self.send(r, "image create").await?;
        let resp = self.check(resp, "(new)").await?;
        resp.json::<Image>()
            .await
            .map_err(|e| ImageError::Unavailable(format!("Glance's new image is unreadable: {e}")))
    }

    pub async fn delete_image(&self, id: &str, token: Option<&str>) -> Result<()> {
        let r = self.req(reqwest::Method::DELETE, &format!("/v2/images/{id}"), token);
        let resp = self.send(r, "image delete").await?;
        match self.check(resp, id).await {
            Ok(_) | Err(ImageError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Streams the image's data into `dest` (created or truncated), writing
    /// all-zero blocks as holes and checking the checksum on a second
    /// thread. Returns the byte count. Call it from a blocking thread: the
    /// file writes are synchronous.
    pub async fn download(&self, img: &Image, token: Option<&str>, dest: &Path) -> Result<u64> {
        let r = self.req(
            reqwest::Method::GET,
            &format!("/v2/images/{}/file", img.id),
            token,
        );
        let resp = self.send(r, "image download").await?;
        let mut resp = self.check(resp, &img.id).await?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Err(ImageError::Invalid(format!("image {} has no data", img.id)));
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(dest)
            .map_err(|e| ImageError::io(format!("create {}", dest.display()), e))?;
        let expected = img.expected_hash();
        let hasher = expected
            .as_ref()
            .map(|(algo, _)| Hasher::start(algo))
            .transpose()?;
        let mut buf: Vec<u8> = Vec::with_capacity(BLOCK);
        let mut total = 0u64;
        let werr = |e| ImageError::io(format!("write {}", dest.display()), e);
        loop {
            let chunk = resp.chunk().await.map_err(|e| {
                ImageError::Unavailable(format!(
                    "download of image {} broke off after {total} bytes: {}",
                    img.id,
                    crate::service::reason(&e)
                ))
            })?;
            let Some(chunk) = chunk else { break };
            total += chunk.len() as u64;
            if let Some(h) = &hasher {
                h.feed(chunk.clone());
            }
            let mut rest: &[u8] = &chunk;
            while !rest.is_empty() {
                let take = (BLOCK - buf.len()).min(rest.len());
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if buf.len() == BLOCK {
                    write_block(&mut f, &buf).map_err(werr)?;
                    buf.clear();
                }
            }
        }
        write_block(&mut f, &buf).map_err(werr)?;
        f.set_len(total).map_err(werr)?;
        if let (Some(h), Some((algo, want))) = (hasher, expected) {
            let got = h.finish()?;
            if !got.eq_ignore_ascii_case(&want) {
                return Err(ImageError::Checksum {
                    algo,
                    expected: want,
                    got,
                });
            }
        }
        if let Some(size) = img.size
            && size != total
        {
            return Err(ImageError::Invalid(format!(
                "image {} should have {size} bytes, Glance sent {total}",
                img.id
            )));
        }
        Ok(total)
    }

    /// Uploads `path` as the image's data, streamed from the file.
    pub async fn upload(&self, id: &str, token: Option<&str>, path: &Path) -> Result<()> {
        let f = std::fs::File::open(path)
            .map_err(|e| ImageError::io(format!("open {}", path.display()), e))?;
        let len = f
            .metadata()
            .map_err(|e| ImageError::io(format!("stat {}", path.display()), e))?
            .len();
        let body = reqwest::Body::wrap(FileBody::start(f));
        let mut r = self
            .upload_http
            .put(format!("{}/v2/images/{id}/file", self.base));
        if let Some(t) = token {
            r = r.header("X-Auth-Token", t);
        }
        let r = r
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", len)
            .body(body);
        let resp = self.send(r, "image upload").await?;
        self.check(resp, id).await?;
        Ok(())
    }
}

fn write_block(f: &mut std::fs::File, b: &[u8]) -> std::io::Result<()> {
    if b.is_empty() {
        return Ok(());
    }
    if is_zero(b) {
        f.seek(SeekFrom::Current(b.len() as i64))?;
        Ok(())
    } else {
        f.write_all(b)
    }
}

fn is_zero(b: &[u8]) -> bool {
    let (pre, mid, post) = {
        // SAFETY: u8 to u64 reinterpretation is valid for any bit pattern;
        // align_to gives the aligned middle part only.
        unsafe { b.align_to::<u64>() }
    };
    pre.iter().all(|x| *x == 0) && mid.iter().all(|x| *x == 0) && post.iter().all(|x| *x == 0)
}

/// Feeds a digest (Some) or finishes it, answering the hex digest (None).
type DigestFn = Box<dyn FnMut(Option<&[u8]>) -> Option<String> + Send>;

/// A checksum computed on its own thread, fed the chunks as they arrive.
struct Hasher {
    tx: std::sync::mpsc::SyncSender<Bytes>,
    done: std::thread::JoinHandle<String>,
}

impl Hasher {
    fn start(algo: &str) -> Result<Hasher> {
        use md5::Digest;
        let algo = algo.to_ascii_lowercase();
        let mut d: DigestFn = match algo.as_str() {
            "md5" => digest_fn(md5::Md5::new()),
            "sha256" => digest_fn(sha2::Sha256::new()),
            "sha384" => digest_fn(sha2::Sha384::new()),
            "sha512" => digest_fn(sha2::Sha512::new()),
            other => {
                return Err(ImageError::Invalid(format!(
                    "image checksum algorithm {other:?} is not supported (md5, sha256, sha384, sha512)"
                )));
            }
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(64);
        let done = std::thread::Builder::new()
            .name("image-hash".into())
            .spawn(move || {
                for b in rx {
                    d(Some(&b));
                }
                d(None).unwrap_or_default()
            })
            .map_err(|e| ImageError::io("start the hash thread", e))?;
        Ok(Hasher { tx, done })
    }

    fn feed(&self, b: Bytes) {
        let _ = self.tx.send(b);
    }

    fn finish(self) -> Result<String> {
        drop(self.tx);
        self.done
            .join()
            .map_err(|_| ImageError::Tool("the hash thread panicked".into()))
    }
}

fn digest_fn<D: md5::Digest + Send + 'static>(d: D) -> DigestFn {
    let mut d = Some(d);
    Box::new(move |b| match b {
        Some(b) => {
            if let Some(d) = d.as_mut() {
                d.update(b);
            }
            None
        }
        None => d.take().map(|d| hex(&d.finalize())),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An HTTP body read from a file on a blocking thread, 1 MiB at a time.
struct FileBody {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
}

impl FileBody {
    fn start(mut f: std::fs::File) -> FileBody {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        std::thread::spawn(move || {
            loop {
                let mut buf = vec![0u8; BLOCK];
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        break;
                    }
                }
            }
        });
        FileBody { rx }
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|o| o.map(|r| r.map(http_body::Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_metadata_keeps_properties_as_strings() {
        let img: Image = serde_json::from_str(
            r#"{"id": "i1", "name": "deb", "status": "active", "visibility": "public",
                "disk_format": "qcow2", "container_format": "bare", "size": 10,
                "checksum": "abc", "os_hash_algo": "sha512", "os_hash_value": "def",
                "min_disk": 1, "min_ram": 512, "os_distro": "debian", "hw_x": 3,
                "self": "/v2/images/i1", "tags": [], "virtual_size": null}"#,
        )
        .unwrap();
        let m = img.volume_metadata();
        assert_eq!(m["image_id"], "i1");
        assert_eq!(m["image_name"], "deb");
        assert_eq!(m["os_distro"], "debian");
        assert_eq!(m["hw_x"], "3");
        assert_eq!(m["min_ram"], "512");
        assert!(!m.contains_key("self") && !m.contains_key("tags"));
        assert_eq!(img.expected_hash(), Some(("sha512".into(), "def".into())));
        assert_eq!(img.fingerprint(), "sha512:def");
    }

    #[test]
    fn zero_blocks_are_seen() {
        assert!(is_zero(&[0u8; 4099]));
        let mut b = vec![0u8; 4099];
        b[4098] = 1;
        assert!(!is_zero(&b));
    }
}
