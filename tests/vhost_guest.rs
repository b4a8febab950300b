//! The vhost-user-blk export with a real guest: QEMU 7.2 and a Debian
//! kernel unpacked from Debian packages by tests/guest/setup.sh, booted under
//! TCG with a busybox initramfs whose scenario scripts (tests/guest/scenarios)
//! read, write, flush, discard and hash /dev/vda and print the results on the
//! serial console. The daemon is the real binary, so a restart is a SIGKILL.
//! Without root, apt or the packages, every test here prints SKIP and why.

mod common;

use blockd::clock::OffsetClock;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// The unpacked QEMU, kernel and initramfs, or None after a loud SKIP.
pub fn guest_cache(test: &str) -> Option<PathBuf> {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP {test}: needs root (memfd-backed guest, data dir ownership)");
        return None;
    }
    let cache = std::env::var("BLOCKD_GUEST_CACHE")
        .unwrap_or_else(|_| "/var/cache/blockd-guest".to_string());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/setup.sh");
    let out = Command::new("bash").arg(&script).arg(&cache).output();
    match out {
        Ok(o) if o.status.success() => Some(PathBuf::from(cache)),
        Ok(o) => {
            eprintln!(
                "SKIP {test}: the guest harness could not be set up (QEMU or kernel download impossible?):\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("SKIP {test}: cannot run {}: {e}", script.display());
            None
        }
    }
}

pub fn lib_path(cache: &Path) -> String {
    format!(
        "{0}/root/lib/x86_64-linux-gnu:{0}/root/usr/lib/x86_64-linux-gnu",
        cache.display()
    )
}

/// A running guest; its serial console arrives line by line.
pub struct Guest {
    child: Child,
    lines: Receiver<String>,
    pub log: Vec<String>,
}

impl Guest {
    pub fn boot(cache: &Path, socket: &Path, scenario: &str, secs: u64) -> Guest {
        let c = cache.display();
        let mut child = Command::new("timeout")
            .arg(secs.to_string())
            .arg(format!("{c}/root/usr/bin/qemu-system-x86_64"))
            .args([
                "-nodefaults",
                "-no-reboot",
                "-display",
                "none",
                "-serial",
                "stdio",
            ])
            .args([
                "-machine",
                "q35,accel=tcg,memory-backend=mem",
                "-cpu",
                "qemu64",
            ])
            .args(["-m", "256M", "-smp", "2"])
            .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
            .arg("-L")
            .arg(format!("{c}/root/usr/share/qemu"))
            .arg("-L")
            .arg(format!("{c}/root/usr/share/seabios"))
            .arg("-kernel")
            .arg(format!("{c}/vmlinux"))
            .arg("-initrd")
            .arg(format!("{c}/initramfs.gz"))
            .arg("-append")
            .arg(format!("console=ttyS0 quiet blockd.t={scenario}"))
            .arg("-chardev")
            .arg(format!(
                "socket,id=c0,path={},reconnect=1",
                socket.display()
            ))
            .args(["-device", "vhost-user-blk-pci,chardev=c0,num-queues=2"])
            .env("LD_LIBRARY_PATH", lib_path(cache))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu starts");
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("qemu: {l}"));
            }
        });
        Guest {
            child,
            lines: rx,
            log: Vec::new(),
        }
    }

    /// The rest of the first line that starts with `prefix`.
    pub fn expect(&mut self, prefix: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let l = l.trim_end_matches('\r').to_string();
                    eprintln!("guest| {l}");
                    self.log.push(l.clone());
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {prefix:?} from the guest within {secs} s")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the guest ended before {prefix:?}")
                }
            }
        }
    }

    /// Waits for QEMU to exit.
    pub fn wait(mut self, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            while let Ok(l) = self.lines.try_recv() {
                eprintln!("guest| {l}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("qemu did not exit");
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon binary as a process.
pub struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub async fn spawn_daemon(cfg: &Path, port: u16) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_blockd"))
        .args(["serve", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "warn,blockd::export=info")
        .stdin(Stdio::null())
        .spawn()
        .expect("daemon starts");
    let p = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/")).await
            && r.status() == StatusCode::OK
        {
            return p;
        }
        assert!(Instant::now() < deadline, "daemon did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A data dir and run dir in a temp dir, a config, a client.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub cfg: PathBuf,
    pub port: u16,
    pub client: Client,
}

pub fn setup() -> Setup {
    let dir = tempfile::Builder::new()
        .prefix("blockd-vhost")
        .tempdir_in("/var/tmp")
        .unwrap();
    let port = free_port();
    let run = dir.path().join("run");
    let extra = format!(
        "[scp]\nlisten = \"127.0.0.1:{port}\"\n[export]\nrun_dir = {:?}\n",
        run.display().to_string()
    );
    let text = config_text(&dir.path().join("data"), &extra);
    let cfg = dir.path().join("blockd.toml");
    std::fs::write(&cfg, text).unwrap();
    let clock = Arc::new(OffsetClock(chrono::Duration::zero()));
    let client =
        Client::new(&format!("http://127.0.0.1:{port}"), cred("a"), clock).version(Some("1.3"));
    Setup {
        dir,
        cfg,
        port,
        client,
    }
}

impl Setup {
    pub fn volume_file(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("data/volumes/{id}.img"))
    }

    /// Attaches as vhost-user-blk and returns the socket path.
    pub async fn attach_vhost(&self, id: &str, server: &str, read_only: bool) -> PathBuf {
        let r = self
            .client
            .call(
                Method::POST,
                &format!("/v1/volumes/{id}/servers"),
                Some(json!({"server_id": server, "export_kind": "vhost-user-blk", "read_only": read_only})),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        let v = self
            .client
            .wait(id, &["in-use", "available", "error"])
            .await;
        assert_eq!(v["state"], "in-use", "{v}");
        let b = self.client.get(&format!("/blockd/v1/volumes/{id}")).await;
        assert_eq!(b.body["export"]["kind"], "vhost-user-blk", "{}", b.text);
        assert_eq!(b.body["export"]["read_only"], read_only);
        let sock = PathBuf::from(b.body["export"]["host_path"].as_str().unwrap());
        assert_eq!(sock, self.dir.path().join(format!("run/vhost/{id}.sock")));
        assert!(
            sock.exists(),
            "the socket listens once the volume is in-use"
        );
        sock
    }
}

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

pub fn read_at(path: &Path, off: u64, len: u64) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut b = vec![0u8; len as usize];
    f.read_exact(&mut b).unwrap();
    b
}

pub fn write_at(path: &Path, off: u64, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn random_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

/// The next offset at or after `off` that holds data.
fn seek_data(path: &Path, off: u64) -> u64 {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: lseek on an open fd with plain integer arguments.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, libc::SEEK_DATA) };
    if r < 0 { u64::MAX } else { r as u64 }
}

fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_reads_writes_flushes_discards_resizes_is_throttled_and_survives_restart() {
    let Some(cache) = guest_cache("vhost guest round trip") else {
        return;
    };
    let s = setup();
    let mut daemon = spawn_daemon(&s.cfg, s.port).await;
    let c = &s.client;
    let id = c.create("guest", 8, None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.wait(&id, &["available"]).await;
    let file = s.volume_file(&id);
    // Bytes the guest must read; data where discard and write-zeroes go.
    let head = random_bytes(4 * MIB as usize);
    write_at(&file, 0, &head);
    write_at(&file, 16 * MIB, &random_bytes(4 * MIB as usize));
    write_at(&file, 24 * MIB, &random_bytes(4 * MIB as usize));
    let sock = s.attach_vhost(&id, "vm-1", false).await;

    let mut g = Guest::boot(&cache, &sock, "main", 240);
    assert_eq!(g.expect("SIZE", 120), (8 * GIB).to_string());
    assert_eq!(g.expect("RO", 10), "0");
    assert_eq!(
        g.expect("HASH0", 30),
        sha256_hex(&head),
        "guest reads blockd's bytes"
    );
    let whash = g.expect("WHASH", 60);
    assert_eq!(
        sha256_hex(&read_at(&file, 8 * MIB, 4 * MIB)),
        whash,
        "the guest's write landed byte-exact after its flush"
    );
    assert_eq!(g.expect("DISCARD", 30), "ok");
    g.expect("DISCARDED", 30);
    assert!(
        seek_data(&file, 16 * MIB) >= 28 * MIB,
        "discard and write-zeroes punched holes (next data at {})",
        seek_data(&file, 16 * MIB)
    );
    assert!(read_at(&file, 16 * MIB, 12 * MIB).iter().all(|&b| b == 0));

    // Live resize while the guest runs.
    g.expect("WAIT-RESIZE", 30);
    let r = c
        .call(
            Method::PUT,
            &format!("/v1/volumes/{id}/size"),
            Some(json!({"size": 16})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(
        g.expect("RESIZED", 90),
        (16 * GIB).to_string(),
        "the guest saw the new capacity without a reconnect"
    );
    let v = c.wait(&id, &["in-use", "error_extending"]).await;
    assert_eq!(v["state"], "in-use", "{v}");

    // QoS: unlimited, then 2 MB/s and 40 IOPS.
    let free = g.expect("BENCH seqread", 60);
    g.expect("WAIT-QOS", 30);
    let r = c
        .call(
            Method::PUT,
            &format!("/v1/volumes/{id}/qos"),
            Some(json!({"max_iops": 40, "max_throughput": 2})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let slow = g.expect("BENCH seqread", 60);
    let iops = g.expect("BENCH randread", 60);
    eprintln!("unlimited: {free}\nlimited 2 MB/s: {slow}\nlimited 40 IOPS: {iops}");
    assert!(field(&slow, "mbps") <= 2.6, "throughput limit: {slow}");
    assert!(field(&iops, "iops") <= 48.0, "IOPS limit: {iops}");
    assert!(
        field(&free, "mbps") > 3.0 * field(&slow, "mbps"),
        "unlimited is much faster: {free} vs {slow}"
    );
    g.expect("WAIT-UNQOS", 30);
    let r = c
        .call(
            Method::PUT,
            &format!("/v1/volumes/{id}/qos"),
            Some(json!({"max_iops": 1000000, "max_throughput": 100000})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // Restart: SIGKILL the daemon while the guest sleeps, start it again;
    // QEMU reconnects once reconcile serves the socket again.
    g.expect("WAIT-RESTART", 30);
    daemon.0.kill().unwrap();
    daemon.0.wait().unwrap();
    drop(daemon);
    let daemon = spawn_daemon(&s.cfg, s.port).await;
    let r = g.expect("RHASH", 120);
    let parts: Vec<&str> = r.split_whitespace().collect();
    assert_eq!(parts.len(), 3, "{r}");
    assert_eq!(
        parts[0], parts[1],
        "the guest reads back its write after the restart"
    );
    assert_eq!(sha256_hex(&read_at(&file, 32 * MIB, 2 * MIB)), parts[0]);
    assert_eq!(parts[2], whash, "earlier writes are intact");
    assert_eq!(g.expect("GUEST-EXIT", 30), "0");
    g.wait(30);

    // With the guest gone, detach removes the socket.
    let r = c
        .call(
            Method::DELETE,
            &format!("/v1/volumes/{id}/servers/vm-1"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let v = c.wait(&id, &["available", "in-use"]).await;
    assert_eq!(v["state"], "available", "{v}");
    assert!(!sock.exists());
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_attach_refuses_guest_writes_and_a_corrupted_byte_is_caught() {
    let Some(cache) = guest_cache("vhost read-only guest") else {
        return;
    };
    let s = setup();
    let _daemon = spawn_daemon(&s.cfg, s.port).await;
    let c = &s.client;
    let id = c.create("ro", 8, None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.wait(&id, &["available"]).await;
    let file = s.volume_file(&id);
    let head = random_bytes(4 * MIB as usize);
    write_at(&file, 0, &head);
    let original = sha256_hex(&head);
    // Negative control: one byte changes behind the guest's back, so the
    // guest's hash must NOT match what was written first. A harness that
    // compared stale or cached bytes would pass this wrongly.
    let mut bad = head.clone();
    bad[12345] ^= 0x01;
    write_at(&file, 12345, &bad[12345..12346]);
    let sock = s.attach_vhost(&id, "vm-ro", true).await;

    let mut g = Guest::boot(&cache, &sock, "readonly", 180);
    assert_eq!(g.expect("RO", 120), "1", "the guest sees a read-only disk");
    let seen = g.expect("HASH0", 30);
    assert_ne!(
        seen, original,
        "negative control: the corrupted byte must be seen"
    );
    assert_eq!(seen, sha256_hex(&bad));
    let rc = g.expect("WRITE-RC", 30);
    assert_ne!(rc, "0", "a write to a read-only attach must fail");
    g.expect("GUEST-EXIT", 30);
    g.wait(30);
    assert_eq!(read_at(&file, 0, 4 * MIB), bad, "the volume is unchanged");
}
