//! Signed SCP read throughput of the release daemon on loopback: show one
//! volume and list a page of 20, each request signed afresh (the daemon
//! refuses replays), over C keep-alive connections for a fixed time and
//! request count. Prints req/s and p50/p99/p99.9 latency, and runs `wrk`
//! against unsigned endpoints of the same server as a ceiling.
//!
//! Knobs (environment): BLOCKD_BIN (default target/release/blockd),
//! BLOCKD_BENCH_VOLUMES (default "1000,100000"), BLOCKD_BENCH_CONNS (32),
//! BLOCKD_BENCH_SECS (10 per phase), BLOCKD_BENCH_REQUESTS (cap per
//! phase, 2000000), BLOCKD_BENCH_WRK (1; 0 skips wrk). `benches/api.sh`
//! builds and runs it.

mod common;

use blockd::api::scp::auth::{SignedRequest, sign};
use blockd::store::Store;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PROJECT: &str = "project-bench";

struct Opts {
    bin: PathBuf,
    volumes: Vec<usize>,
    conns: usize,
    secs: f64,
    requests: i64,
    wrk: bool,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
        Err(_) => default,
    }
}

impl Opts {
    fn from_env() -> Opts {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let bin = std::env::var_os("BLOCKD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/release/blockd"));
        let volumes = std::env::var("BLOCKD_BENCH_VOLUMES")
            .unwrap_or_else(|_| "1000,100000".into())
            .split(',')
            .map(|s| s.trim().parse().expect("BLOCKD_BENCH_VOLUMES: numbers"))
            .collect();
        Opts {
            bin,
            volumes,
            conns: env_or("BLOCKD_BENCH_CONNS", 32),
            secs: env_or("BLOCKD_BENCH_SECS", 10.0),
            requests: env_or("BLOCKD_BENCH_REQUESTS", 2_000_000),
            wrk: env_or("BLOCKD_BENCH_WRK", 1) != 0,
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

struct Cred {
    access_key: String,
    secret_key: String,
}

fn cred(i: usize) -> Cred {
    Cred {
        access_key: format!("ak-bench-{i}"),
        secret_key: format!("secret-of-bench-{i}-0123456789abcdef"),
    }
}

/// The daemon under test; SIGTERM and reaped when dropped.
struct Daemon {
    child: Child,
    scp: SocketAddr,
    cinder: SocketAddr,
    ops: SocketAddr,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// A memory figure of the daemon's /proc status (`VmHWM:`, say) in MiB.
    fn memory_mib(&self, key: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(f64::NAN)
    }

    /// CPU seconds (user + system) the daemon has used so far.
    fn cpu_secs(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
        // SAFETY: sysconf reads a constant; no memory is involved.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        // utime and stime are fields 14 and 15; after ")" they are 12 and 13.
        (ticks(11) + ticks(12)) / hz.max(1.0)
    }
}

fn config(data: &Path, scp: u16, cinder: u16, ops: u16, conns: usize) -> String {
    let mut s = format!("data_dir = {:?}\n", data.display().to_string());
    s += "[quota]\nvolumes = 10000000\ngigabytes = 1000000000\n";
    s += &format!("[cinder]\nlisten = \"127.0.0.1:{cinder}\"\nauth = \"noauth\"\n");
    s += &format!("[metrics]\nlisten = \"127.0.0.1:{ops}\"\n");
    s += &format!("[scp]\nlisten = \"127.0.0.1:{scp}\"\n");
    for i in 0..conns {
        let c = cred(i);
        s += &format!(
            "[[scp.credentials]]\naccess_key = {:?}\nsecret_key = {:?}\nuser_id = \"user-bench\"\nproject_id = {PROJECT:?}\n",
            c.access_key, c.secret_key
        );
    }
    s
}

/// Seeds `n` volumes straight into the store, then starts the daemon on it.
async fn start(opts: &Opts, dir: &Path, n: usize) -> (Daemon, Vec<String>) {
    use std::os::unix::fs::DirBuilderExt;
    let data = dir.join("data");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&data)
        .expect("data dir");
    let started = Instant::now();
    let ids = {
        let store = Store::open(&data.join("blockd.db")).expect("store");
        common::seed(&store, PROJECT, n)
    };
    println!("seeded {n} volumes in {:.1?}", started.elapsed());
    let (scp, cinder, ops) = (free_port(), free_port(), free_port());
    let cfg = dir.join("blockd.toml");
    std::fs::write(&cfg, config(&data, scp, cinder, ops, opts.conns)).expect("config");
    let log = std::fs::File::create(dir.join("daemon.log")).expect("log file");
    let child = Command::new(&opts.bin)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); build it with cargo build --release",
                opts.bin.display()
            )
        });
    let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let mut d = Daemon {
        child,
        scp: addr(scp),
        cinder: addr(cinder),
        ops: addr(ops),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = TcpStream::connect(d.scp).await {
            let req = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", d.scp);
            let mut buf = Vec::new();
            if s.write_all(req.as_bytes()).await.is_ok()
                && let Ok((200, _)) = read_response(&mut s, &mut buf).await
            {
                return (d, ids);
            }
        }
        if let Ok(Some(st)) = d.child.try_wait() {
            panic!(
                "daemon exited ({st}); see {}",
                dir.join("daemon.log").display()
            );
        }
        assert!(Instant::now() < deadline, "daemon did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads one HTTP/1.1 answer with a Content-Length; gives the status and
/// the body's length.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<(u16, usize)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    buf.clear();
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("connection closed mid-answer"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("head is not UTF-8"))?;
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| bad("no content-length"))?;
    let need = head_end + len;
    while buf.len() < need {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("connection closed mid-body"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if buf.len() > need {
        return Err(bad("more bytes than one answer"));
    }
    Ok((status, len))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// One keep-alive connection sending signed GETs of `paths` in turn until
/// `until` or until the shared budget runs out; returns latencies in µs.
async fn signed_loop(
    addr: SocketAddr,
    c: Cred,
    paths: Vec<String>,
    until: Instant,
    budget: Arc<AtomicI64>,
) -> Result<Vec<u32>, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let host = addr.to_string();
    let mut buf = Vec::with_capacity(32 * 1024);
    let mut lat = Vec::with_capacity(1 << 16);
    // The daemon refuses a second request with the same method, URL, key
    // and millisecond; wait out the millisecond if a path comes round again.
    let mut last_ts = vec![0i64; paths.len()];
    let mut i = 0usize;
    while Instant::now() < until && budget.fetch_sub(1, Ordering::Relaxed) > 0 {
        let k = i % paths.len();
        i += 1;
        let path = &paths[k];
        let mut ts = now_ms();
        while ts == last_ts[k] {
            std::hint::spin_loop();
            ts = now_ms();
        }
        last_ts[k] = ts;
        let ts = ts.to_string();
        let sig = sign(
            &c.secret_key,
            &SignedRequest {
                method: "GET",
                url: &format!("http://{host}{path}"),
                timestamp: &ts,
                access_key: &c.access_key,
                account_id: "",
                client_type: "Openapi",
            },
        );
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nScp-AccessKey: {}\r\nScp-Signature: {sig}\r\n\
             Scp-Timestamp: {ts}\r\nScp-ClientType: Openapi\r\nScp-Api-Version: virtualserver 1.3\r\n\r\n",
            c.access_key
        );
        let t0 = Instant::now();
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let (status, _) = read_response(&mut s, &mut buf)
            .await
            .map_err(|e| e.to_string())?;
        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if status != 200 {
            return Err(format!(
                "GET {path}: {status} {}",
                String::from_utf8_lossy(&buf)
            ));
        }
    }
    Ok(lat)
}

struct Figures {
    requests: usize,
    secs: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    daemon_cpu: f64,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>8.0} req/s  p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  ({} requests in {:.1} s, daemon CPU {:.2} cores)",
            self.requests as f64 / self.secs,
            self.p50,
            self.p99,
            self.p999,
            self.requests,
            self.secs,
            self.daemon_cpu
        )
    }
}

/// Runs `conns` signed loops; connection `i` gets every path whose index
/// is `i` modulo `conns`, so no two connections ever sign the same URL.
async fn signed_phase(d: &Daemon, opts: &Opts, paths: &[String]) -> Figures {
    let until = Instant::now() + Duration::from_secs_f64(opts.secs);
    let budget = Arc::new(AtomicI64::new(opts.requests));
    let cpu0 = d.cpu_secs();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..opts.conns {
        let mine: Vec<String> = paths.iter().skip(i).step_by(opts.conns).cloned().collect();
        assert!(!mine.is_empty(), "fewer paths than connections");
        tasks.push(tokio::spawn(signed_loop(
            d.scp,
            cred(i),
            mine,
            until,
            budget.clone(),
        )));
    }
    let mut all = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(l) => all.extend(l),
            Err(e) => panic!("request failed: {e}"),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let daemon_cpu = (d.cpu_secs() - cpu0) / secs;
    all.sort_unstable();
    let q = |p: f64| {
        let i = ((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1));
        all.get(i).copied().unwrap_or(0) as f64 / 1000.0
    };
    Figures {
        requests: all.len(),
        secs,
        p50: q(0.50),
        p99: q(0.99),
        p999: q(0.999),
        daemon_cpu,
    }
}

/// Runs wrk with one thread and `conns` connections; prints its req/s and
/// latency percentiles.
fn wrk(opts: &Opts, label: &str, url: &str, header: Option<&str>) {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", &format!("-c{}", opts.conns)])
        .arg(format!("-d{}s", opts.secs.ceil() as u64))
        .arg("--latency");
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    let out = match cmd.arg(url).output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("SKIP wrk {label}: cannot run wrk ({e}); benches/api.sh installs it");
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string()
    };
    let non2xx = text
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .map(|l| format!("  ({})", l.trim()))
        .unwrap_or_default();
    println!(
        "  wrk {label:<22} {:>8} req/s  p50 {}  p99 {}{non2xx}",
        field("Requests/sec:"),
        field("50%"),
        field("99%"),
    );
}

async fn run_size(opts: &Opts, n: usize) {
    let dir = tempfile::Builder::new()
        .prefix("blockd-bench-api")
        .tempdir_in("/var/tmp")
        .expect("temp dir");
    let (d, ids) = start(opts, dir.path(), n).await;
    println!(
        "{n} volumes, {} connections, {} s per phase:",
        opts.conns, opts.secs
    );
    // Show: every volume of a spread of at least 64 per connection.
    let want = (opts.conns * 64).min(ids.len());
    let step = (ids.len() / want).max(1);
    let picked: Vec<String> = ids.iter().step_by(step).take(want).cloned().collect();
    let show: Vec<String> = picked
        .iter()
        .map(|id| format!("/v1/volumes/{id}"))
        .collect();
    println!(
        "  signed show            {}",
        signed_phase(&d, opts, &show).await
    );
    // A page by marker, then the same with the total count, which SCP
    // lists carry by default (with_count=true) and which counts every row.
    let list: Vec<String> = picked
        .iter()
        .map(|id| format!("/v1/volumes?limit=20&with_count=false&marker={id}"))
        .collect();
    println!(
        "  signed list (page 20)  {}",
        signed_phase(&d, opts, &list).await
    );
    let counted: Vec<String> = picked
        .iter()
        .map(|id| format!("/v1/volumes?limit=20&marker={id}"))
        .collect();
    println!(
        "  signed list + count    {}",
        signed_phase(&d, opts, &counted).await
    );
    // The peak counts the mapped database once per connection; the heap
    // (anonymous memory) is what the daemon itself holds.
    println!(
        "  daemon memory          peak RSS {:.1} MiB, heap now {:.1} MiB",
        d.memory_mib("VmHWM:"),
        d.memory_mib("RssAnon:")
    );
    if opts.wrk {
        wrk(
            opts,
            "/healthz (ops)",
            &format!("http://{}/healthz", d.ops),
            None,
        );
        wrk(
            opts,
            "cinder noauth show",
            &format!("http://{}/v3/{PROJECT}/volumes/{}", d.cinder, picked[0]),
            Some(&format!("X-Auth-Token: bench:{PROJECT}")),
        );
        wrk(
            opts,
            "scp GET / (unsigned)",
            &format!("http://{}/", d.scp),
            None,
        );
    }
    drop(d);
}

fn main() {
    // `cargo bench` passes --bench; a filter argument picks nothing here.
    let opts = Opts::from_env();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for &n in &opts.volumes {
        rt.block_on(run_size(&opts, n));
    }
}
