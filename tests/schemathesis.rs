//! schemathesis against both OpenAPI documents of the running binary:
//! signed SCP requests and Cinder noauth tokens (hooks in
//! tests/support/schemathesis_hooks.py), bounded in examples and time. No
//! answer may be a 5xx, and every answer must match the document (status,
//! content type and schema). Skips loudly without the CI venv.
//!
//! BLOCKD_SCHEMATHESIS_SECS (default 50 per document),
//! BLOCKD_SCHEMATHESIS_EXAMPLES (default 20) and BLOCKD_SCHEMATHESIS_SEED
//! (printed, to replay a run) tune it; BLOCKD_CI_VENV names the venv.

mod common;

use common::proc::{Proc, free_port, wait_up};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SPARSE_ONLY: &str = r#"
[[volume_types]]
name = "SSD"
provisioning = "sparse"
[[volume_types]]
name = "HDD"
provisioning = "sparse"
[quota]
gigabytes = 4096
per_volume_gigabytes = 512
"#;

const CHECKS: &str = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn schemathesis_bin() -> Option<PathBuf> {
    let venv = std::env::var("BLOCKD_CI_VENV").unwrap_or_else(|_| "/opt/blockd-ci-venv".into());
    let bin = Path::new(&venv).join("bin/schemathesis");
    if bin.is_file() {
        Some(bin)
    } else {
        eprintln!(
            "SKIP: {} is missing; .ci/run installs schemathesis into {venv}",
            bin.display()
        );
        None
    }
}

/// What one run found: check failures, and errors that are not the
/// daemon's (schemathesis' own trouble generating data).
struct Outcome {
    failures: Vec<String>,
    errors: Vec<String>,
}

/// The `<failure>` and `<error>` elements of a JUnit report, with the
/// test case (operation) each belongs to.
fn parse_junit(xml: &str) -> Outcome {
    let mut out = Outcome {
        failures: Vec::new(),
        errors: Vec::new(),
    };
    for case in xml.split("<testcase").skip(1) {
        let name = case
            .split("name=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("?")
            .to_string();
        for (tag, list) in [("<failure", &mut out.failures), ("<error", &mut out.errors)] {
            for part in case.split(tag).skip(1) {
                let end = part.find("</").unwrap_or(part.len()).min(4000);
                list.push(format!("{name}: {}", unescape(&part[..end])));
            }
        }
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#10;", "\n")
        .replace("&amp;", "&")
}

/// An error that means the daemon did not answer (as opposed to
/// schemathesis failing to generate a case).
fn is_network(e: &str) -> bool {
    [
        "Connection",
        "connection",
        "Network",
        "timed out",
        "Timeout",
        "RemoteDisconnected",
    ]
    .iter()
    .any(|m| e.contains(m))
}

#[allow(clippy::too_many_arguments)]
fn run_schemathesis(
    bin: &Path,
    work: &Path,
    name: &str,
    port: u16,
    env: &[(&str, String)],
    secs: u64,
    examples: u64,
    seed: u64,
) -> Outcome {
    let report = work.join(format!("{name}.xml"));
    let support = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support");
    let mut cmd = Command::new(bin);
    cmd.current_dir(work)
        .arg("run")
        .arg(format!("http://127.0.0.1:{port}/openapi.json"))
        .args(["--checks", CHECKS])
        .args(["--max-examples", &examples.to_string()])
        .args(["--max-time", &secs.to_string()])
        .args(["--workers", "2"])
        .args(["--seed", &seed.to_string()])
        .args(["--request-timeout", "10"])
        .args(["--report", "junit", "--report-junit-path"])
        .arg(&report)
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env("PYTHONPATH", &support)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("schemathesis starts");
    // stdout is read on a thread so a full pipe cannot stall the run.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let limit = Duration::from_secs(secs * 2 + 60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name}: schemathesis ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = out_t.join().unwrap();
    let stderr = err_t.join().unwrap();
    let summary: String = stdout
        .lines()
        .skip_while(|l| !l.contains("SUMMARY"))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!(
        "{name}: schemathesis exited {status} after {:.0?}\n{summary}",
        started.elapsed()
    );
    let xml = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!("{name}: no report ({e}); schemathesis said:\n{stdout}\n{stderr}")
    });
    let out = parse_junit(&xml);
    if !status.success() && out.failures.is_empty() && out.errors.is_empty() {
        panic!("{name}: schemathesis failed without a finding:\n{stdout}\n{stderr}");
    }
    out
}

#[tokio::test]
async fn schemathesis_finds_no_5xx_and_no_schema_mismatch() {
    let Some(bin) = schemathesis_bin() else {
        return;
    };
    let secs = env_or("BLOCKD_SCHEMATHESIS_SECS", 50);
    let examples = env_or("BLOCKD_SCHEMATHESIS_EXAMPLES", 20);
    let seed = env_or(
        "BLOCKD_SCHEMATHESIS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    eprintln!(
        "schemathesis seed {seed} (BLOCKD_SCHEMATHESIS_SEED={seed} replays it), {secs} s and {examples} examples per document"
    );

    let dir = tempfile::Builder::new()
        .prefix("blockd-schemathesis")
        .tempdir_in("/var/tmp")
        .unwrap();
    let (port, cport) = (free_port(), free_port());
    let data = dir.path().join("data");
    let cfg = dir.path().join("blockd.toml");
    // No credentials configured: the daemon generates them, as on a node.
    // Only sparse types, so no generated create can allocate real disk.
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\n[scp]\nlisten = \"127.0.0.1:{port}\"\n[cinder]\nlisten = \"127.0.0.1:{cport}\"\n[metrics]\nlisten = \"\"\n{SPARSE_ONLY}",
            data.display().to_string()
        ),
    )
    .unwrap();
    let log = dir.path().join("daemon.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_blockd"));
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let p: Proc = wait_up(Proc(cmd.spawn().expect("daemon starts")), port).await;
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();

    let creds = data.join("credentials.toml").display().to_string();
    let runs = [
        ("scp", port, vec![("BLOCKD_SCP_CREDENTIALS", creds)]),
        (
            "cinder",
            cport,
            vec![("BLOCKD_CINDER_TOKEN", "fuzz:fuzzproject".to_string())],
        ),
    ];
    let mut findings = Vec::new();
    for (name, port, env) in &runs {
        let bin = bin.clone();
        let work = work.clone();
        let (name, port, env) = (name.to_string(), *port, env.clone());
        let o = tokio::task::spawn_blocking(move || {
            run_schemathesis(&bin, &work, &name, port, &env, secs, examples, seed)
        })
        .await
        .unwrap();
        findings.extend(o.failures);
        for e in o.errors {
            if is_network(&e) {
                findings.push(e);
            } else {
                eprintln!(
                    "WARNING: schemathesis could not run one case (its own error, not the daemon's): {}",
                    e.lines().take(3).collect::<Vec<_>>().join(" | ")
                );
            }
        }
    }

    // The daemon is still up, never panicked, and the hooks got requests
    // through authentication on both listeners.
    let up = reqwest::get(format!("http://127.0.0.1:{port}/")).await;
    assert!(
        up.map(|r| r.status().is_success()).unwrap_or(false),
        "daemon is down"
    );
    drop(p);
    // Attaches the runs made left loop devices; none may outlive the test.
    for dev in blockd::export::list_under(dir.path()) {
        let _ = blockd::export::detach(&dev.device);
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("panicked"), "the daemon panicked:\n{text}");
    let served_ok = |prefix: &str| {
        text.lines()
            .any(|l| l.contains(&format!("\"path\":\"{prefix}")) && l.contains("\"status\":20"))
    };
    assert!(served_ok("/v1/"), "no signed SCP request was served");
    assert!(
        served_ok("/v3/fuzzproject/") || served_ok("/v2/fuzzproject/"),
        "no authenticated Cinder request was served"
    );
    assert!(
        findings.is_empty(),
        "schemathesis found {} problems (seed {seed}):\n{}",
        findings.len(),
        findings.join("\n---\n")
    );
}
