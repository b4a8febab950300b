//! Security checks against the real daemon: the whole SCP signature
//! matrix, project isolation in and across both dialects (a foreign id
//! answers exactly as an unknown one), secrets kept out of the logs of the
//! real binary at trace level in text and JSON, and the modes of every
//! file and directory the daemon makes.

mod common;

use blockd::clock::OffsetClock;
use common::cinder::{Cinder, TOKENS, expect_fault};
use common::proc::{Proc, free_port, wait_up};
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn daemon() -> TestDaemon {
    TestDaemon::start_with(TOKENS, Arc::new(OffsetClock(chrono::Duration::zero()))).await
}

fn member(d: &TestDaemon, who: &str) -> Cinder {
    Cinder::new(
        d.cinder_addr,
        &format!("tok-member-{who}01"),
        &format!("project-{who}"),
    )
    .mv("3.67")
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn have_loops() -> bool {
    if !Path::new("/dev/loop-control").exists() {
        eprintln!("SKIP: /dev/loop-control is missing; attach probes are left out");
        return false;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: not root; attach probes are left out");
        return false;
    }
    true
}

// ---------------------------------------------------------------------------
// Signatures

/// A signed request with `change` applied after signing.
async fn tampered(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
    change: impl FnOnce(&mut reqwest::Request),
) -> Answer {
    let mut req = c.signed(method, path, body).build().unwrap();
    change(&mut req);
    c.exec(req).await
}

fn set_header(req: &mut reqwest::Request, name: &'static str, value: &str) {
    req.headers_mut().insert(name, value.parse().unwrap());
}

fn unauthorised(a: &Answer, why: &str) -> String {
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{why}: {}", a.text);
    assert_eq!(
        a.body["errors"][0]["code"], "Unauthorized",
        "{why}: {}",
        a.text
    );
    detail(a)
}

#[tokio::test]
async fn every_signature_fault_gets_401_and_changes_nothing() {
    let d = TestDaemon::start().await;
    let c = d.client("a");
    assert_eq!(c.get("/v1/volumes").await.status, StatusCode::OK);
    let vol = json!({"name": "signed", "size": 8});

    // The versions document is open; everything else needs all three headers.
    let open = Client::send(c.http.get(format!("{}/", c.base))).await;
    assert_eq!(open.status, StatusCode::OK);
    let a = Client::send(c.http.get(format!("{}/v1/volumes", c.base))).await;
    assert!(unauthorised(&a, "no headers").contains("Scp-AccessKey"));
    for missing in ["Scp-AccessKey", "Scp-Signature", "Scp-Timestamp"] {
        let a = tampered(&c, Method::GET, "/v1/volumes", None, |r| {
            r.headers_mut().remove(missing);
        })
        .await;
        assert!(unauthorised(&a, missing).contains(missing), "{}", a.text);
    }

    // A bad signature, one that is not base64, and two signature headers.
    let bad_sig = tampered(&c, Method::GET, "/v1/volumes", None, |r| {
        set_header(
            r,
            "Scp-Signature",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
    })
    .await;
    let bad_sig_detail = unauthorised(&bad_sig, "bad signature");
    let a = tampered(&c, Method::GET, "/v1/volumes", None, |r| {
        set_header(r, "Scp-Signature", "%%% not base64")
    })
    .await;
    unauthorised(&a, "not base64");
    let a = tampered(&c, Method::GET, "/v1/volumes", None, |r| {
        let good = r.headers()["Scp-Signature"].clone();
        r.headers_mut().append("Scp-Signature", good);
    })
    .await;
    assert!(unauthorised(&a, "two signatures").contains("once"));

    // An unknown key and a wrong secret read exactly as a bad signature,
    // so keys cannot be probed.
    let mut stranger = c.clone();
    stranger.cred.access_key = "ak-nobody".into();
    let a = stranger.get("/v1/volumes").await;
    assert_eq!(unauthorised(&a, "unknown key"), bad_sig_detail);
    let mut wrong = c.clone();
    wrong.cred.secret_key = "not-the-secret-at-all".into();
    let a = wrong.get("/v1/volumes").await;
    assert_eq!(unauthorised(&a, "wrong secret"), bad_sig_detail);
    assert_eq!(a.text, bad_sig.text);
    // Another project's key with this project's signature.
    let a = tampered(&c, Method::GET, "/v1/volumes", None, |r| {
        set_header(r, "Scp-AccessKey", &cred("b").access_key)
    })
    .await;
    unauthorised(&a, "swapped access key");

    // Clock skew: outside the window either way is refused, inside is fine.
    for skew in [-6 * 60, 6 * 60, -301, 301] {
        let mut skewed = c.clone();
        skewed.clock = Arc::new(OffsetClock(chrono::Duration::seconds(skew)));
        let a = skewed.get("/v1/volumes").await;
        assert!(unauthorised(&a, "skew").contains("window"), "skew {skew}");
    }
    for skew in [-290, 290] {
        let mut slight = c.clone();
        slight.clock = Arc::new(OffsetClock(chrono::Duration::seconds(skew)));
        assert_eq!(
            slight.get("/v1/volumes").await.status,
            StatusCode::OK,
            "skew {skew}"
        );
    }
    // Seconds instead of milliseconds, and a timestamp that is no number.
    let secs = (chrono::Utc::now().timestamp()).to_string();
    let a = tampered(&c, Method::GET, "/v1/volumes", None, |r| {
        set_header(r, "Scp-Timestamp", &secs)
    })
    .await;
    unauthorised(&a, "seconds");
    let a = tampered(&c, Method::GET, "/v1/volumes", None, |r| {
        set_header(r, "Scp-Timestamp", "yesterday")
    })
    .await;
    assert!(unauthorised(&a, "not a number").contains("milliseconds"));
    // A timestamp moved by a millisecond no longer matches its signature.
    let a = tampered(&c, Method::GET, "/v1/volumes", None, |r| {
        let ts: i64 = r.headers()["Scp-Timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        set_header(r, "Scp-Timestamp", &(ts + 1).to_string())
    })
    .await;
    assert_eq!(unauthorised(&a, "moved timestamp"), bad_sig_detail);

    // A replay inside the window, of a read and of a create.
    let rb = c.signed(Method::GET, "/v1/volumes?limit=5", None);
    let again = rb.try_clone().unwrap();
    assert_eq!(Client::send(rb).await.status, StatusCode::OK);
    let a = Client::send(again).await;
    assert!(unauthorised(&a, "replay").contains("already used"));
    let rb = c.signed(Method::POST, "/v1/volumes", Some(&vol));
    let again = rb.try_clone().unwrap();
    let first = Client::send(rb).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    unauthorised(&Client::send(again).await, "replayed create");
    let id = first.body["id"].as_str().unwrap().to_string();
    c.wait(&id, &["available"]).await;

    // Every signed part, changed after signing.
    let a = tampered(&c, Method::GET, "/v1/volumes?limit=5", None, |r| {
        r.url_mut().set_query(Some("limit=6"))
    })
    .await;
    unauthorised(&a, "tampered query");
    let a = tampered(&c, Method::GET, "/v1/volumes?limit=5", None, |r| {
        r.url_mut().set_query(Some("limit=5&name=x"))
    })
    .await;
    unauthorised(&a, "added query parameter");
    let a = tampered(&c, Method::GET, "/v1/volumes?limit=5", None, |r| {
        r.url_mut().set_query(None)
    })
    .await;
    unauthorised(&a, "dropped query");
    let a = tampered(&c, Method::GET, &format!("/v1/volumes/{id}"), None, |r| {
        r.url_mut().set_path("/blockd/v1/volumes/x")
    })
    .await;
    unauthorised(&a, "tampered path");
    let a = tampered(&c, Method::GET, &format!("/v1/volumes/{id}"), None, |r| {
        *r.method_mut() = Method::DELETE
    })
    .await;
    unauthorised(&a, "tampered method");
    let a = tampered(&c, Method::GET, "/v1/volumes", None, |r| {
        set_header(r, "Host", "blockd.example:8780")
    })
    .await;
    unauthorised(&a, "tampered host");
    let a = tampered(&c, Method::GET, "/v1/volumes", None, |r| {
        set_header(r, "Scp-AccountId", "another-account")
    })
    .await;
    unauthorised(&a, "tampered account id");
    let a = tampered(&c, Method::GET, "/v1/volumes", None, |r| {
        set_header(r, "Scp-ClientType", "Console")
    })
    .await;
    unauthorised(&a, "tampered client type");

    // The body is not signed (README, "API (SCP dialect)"): a request signed
    // with one body and sent with another is served with the body it
    // carries. Integrity of bodies rests on the transport (TLS).
    let a = tampered(
        &c,
        Method::PUT,
        &format!("/v1/volumes/{id}"),
        Some(&json!({"name": "signed-name"})),
        |r| {
            *r.body_mut() = Some(reqwest::Body::from("{\"name\":\"swapped-name\"}\n"));
            r.headers_mut().remove("content-length");
        },
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "tampered body: {}", a.text);
    assert_eq!(
        c.get(&format!("/v1/volumes/{id}")).await.body["name"],
        "swapped-name"
    );

    // Header names in any case are the same headers (HTTP says so), and so
    // is the version header.
    for case in [
        str::to_lowercase as fn(&str) -> String,
        str::to_uppercase,
        |s: &str| {
            s.chars()
                .enumerate()
                .map(|(i, ch)| {
                    if i % 2 == 0 {
                        ch.to_ascii_lowercase()
                    } else {
                        ch.to_ascii_uppercase()
                    }
                })
                .collect()
        },
    ] {
        let req = c.signed(Method::GET, "/v1/volumes", None).build().unwrap();
        let mut rb = c.http.get(format!("{}/v1/volumes", c.base));
        for (k, v) in req.headers() {
            rb = rb.header(case(k.as_str()), v);
        }
        let a = Client::send(rb).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{}: {}",
            case("Scp-AccessKey"),
            a.text
        );
    }
    for name in ["scp-api-version", "SCP-API-VERSION", "Scp-Api-Version"] {
        let a = tampered(&c, Method::GET, &format!("/v1/volumes/{id}"), None, |r| {
            r.headers_mut().remove("Scp-API-Version");
            r.headers_mut().insert(
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "virtualserver 1.1".parse().unwrap(),
            );
        })
        .await;
        assert_eq!(
            a.status,
            StatusCode::NOT_ACCEPTABLE,
            "{name} is read: {}",
            a.text
        );
    }

    // None of the refused requests changed anything: one volume, renamed
    // once by the unsigned body.
    let l = c.get("/v1/volumes").await.body;
    assert_eq!(l["count"], 1, "{l}");
    assert_eq!(l["volumes"][0]["name"], "swapped-name");
    assert_eq!(l["volumes"][0]["size"], 8);
}

// ---------------------------------------------------------------------------
// Project isolation

/// The ids a probe names: a volume, a snapshot of it, a pending transfer
/// and a server the volume is attached to.
#[derive(Clone)]
struct Ids {
    volume: String,
    snapshot: String,
    transfer: String,
    server: String,
}

impl Ids {
    fn unknown() -> Ids {
        Ids {
            volume: new_id(),
            snapshot: new_id(),
            transfer: new_id(),
            server: new_id(),
        }
    }

    /// `text` with these ids replaced by their names.
    fn normalise(&self, text: &str) -> String {
        text.replace(&self.volume, "VOLUME")
            .replace(&self.snapshot, "SNAPSHOT")
            .replace(&self.transfer, "TRANSFER")
            .replace(&self.server, "SERVER")
    }
}

type Probe = (Method, String, Option<Value>);

/// Every SCP request that names another project's volume, snapshot,
/// transfer or attachment.
fn scp_probes(i: &Ids) -> Vec<Probe> {
    let (v, s, t, srv) = (&i.volume, &i.snapshot, &i.transfer, &i.server);
    let mine = "6d1c8a4e-0000-4000-8000-00000000beef";
    vec![
        (Method::GET, format!("/v1/volumes/{v}"), None),
        (
            Method::PUT,
            format!("/v1/volumes/{v}"),
            Some(json!({"name": "theirs"})),
        ),
        (
            Method::PUT,
            format!("/v1/volumes/{v}/size"),
            Some(json!({"size": 16})),
        ),
        (
            Method::PUT,
            format!("/v1/volumes/{v}/qos"),
            Some(json!({"max_iops": 100})),
        ),
        (Method::DELETE, format!("/v1/volumes/{v}"), None),
        (
            Method::DELETE,
            format!("/v1/volumes/{v}?cascade=true"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/volumes/{v}/servers"),
            Some(json!({"server_id": mine})),
        ),
        (
            Method::DELETE,
            format!("/v1/volumes/{v}/servers/{srv}"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/volumes/{v}/revert"),
            Some(json!({"snapshot_id": s})),
        ),
        (Method::GET, format!("/blockd/v1/volumes/{v}"), None),
        (Method::GET, format!("/v1/servers/{srv}/volumes"), None),
        (Method::GET, format!("/v1/servers/{srv}/volumes/{v}"), None),
        (
            Method::PUT,
            format!("/v1/servers/{srv}/volumes/{v}"),
            Some(json!({"delete_on_termination": true})),
        ),
        (
            Method::DELETE,
            format!("/v1/servers/{srv}/volumes/{v}"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/servers/{mine}/volumes"),
            Some(json!({"volume_id": v})),
        ),
        (
            Method::POST,
            "/v1/snapshots".into(),
            Some(json!({"name": "s", "volume_id": v})),
        ),
        (
            Method::POST,
            "/v1/snapshots".into(),
            Some(json!({"name": "s", "volume_id": v, "force": true})),
        ),
        (Method::GET, format!("/v1/snapshots?volume_id={v}"), None),
        (Method::GET, format!("/v1/snapshots/{s}"), None),
        (
            Method::PUT,
            format!("/v1/snapshots/{s}"),
            Some(json!({"name": "theirs"})),
        ),
        (Method::DELETE, format!("/v1/snapshots/{s}"), None),
        (Method::GET, format!("/blockd/v1/snapshots/{s}"), None),
        (
            Method::POST,
            format!("/blockd/v1/snapshots/{s}/verify"),
            None,
        ),
        (
            Method::POST,
            "/v1/volumes".into(),
            Some(json!({"name": "copy", "size": 16, "snapshot_id": s})),
        ),
        (
            Method::POST,
            "/v1/volume-transfer".into(),
            Some(json!({"volume_id": v})),
        ),
        (Method::GET, format!("/v1/volume-transfer/{t}"), None),
        (Method::DELETE, format!("/v1/volume-transfer/{t}"), None),
    ]
}

/// The same for the Cinder dialect (paths below `/v3/{project}`).
fn cinder_probes(i: &Ids) -> Vec<Probe> {
    let (v, s, t) = (&i.volume, &i.snapshot, &i.transfer);
    let connector = json!({"host": "node-b", "initiator": "iqn.b"});
    let mut p: Vec<Probe> = vec![
        (Method::GET, format!("/volumes/{v}"), None),
        (
            Method::PUT,
            format!("/volumes/{v}"),
            Some(json!({"volume": {"name": "theirs"}})),
        ),
        (Method::DELETE, format!("/volumes/{v}"), None),
        (Method::DELETE, format!("/volumes/{v}?cascade=True"), None),
        (Method::GET, format!("/volumes/{v}/metadata"), None),
        (
            Method::POST,
            format!("/volumes/{v}/metadata"),
            Some(json!({"metadata": {"k": "v"}})),
        ),
        (
            Method::PUT,
            format!("/volumes/{v}/metadata"),
            Some(json!({"metadata": {"k": "v"}})),
        ),
        (Method::GET, format!("/volumes/{v}/metadata/env"), None),
        (
            Method::PUT,
            format!("/volumes/{v}/metadata/env"),
            Some(json!({"meta": {"env": "x"}})),
        ),
        (Method::DELETE, format!("/volumes/{v}/metadata/env"), None),
        (
            Method::POST,
            "/snapshots".into(),
            Some(json!({"snapshot": {"volume_id": v, "name": "s"}})),
        ),
        (Method::GET, format!("/snapshots/{s}"), None),
        (
            Method::PUT,
            format!("/snapshots/{s}"),
            Some(json!({"snapshot": {"name": "theirs"}})),
        ),
        (Method::DELETE, format!("/snapshots/{s}"), None),
        (Method::GET, format!("/snapshots/{s}/metadata"), None),
        (
            Method::PUT,
            format!("/snapshots/{s}/metadata"),
            Some(json!({"metadata": {"k": "v"}})),
        ),
        (
            Method::POST,
            "/volumes".into(),
            Some(json!({"volume": {"size": 16, "snapshot_id": s}})),
        ),
        (
            Method::POST,
            "/volumes".into(),
            Some(json!({"volume": {"size": 16, "source_volid": v}})),
        ),
        (
            Method::POST,
            "/os-volume-transfer".into(),
            Some(json!({"transfer": {"volume_id": v}})),
        ),
        (Method::GET, format!("/os-volume-transfer/{t}"), None),
        (Method::DELETE, format!("/os-volume-transfer/{t}"), None),
        (
            Method::POST,
            "/volume-transfers".into(),
            Some(json!({"transfer": {"volume_id": v}})),
        ),
        (Method::GET, format!("/volume-transfers/{t}"), None),
        (Method::DELETE, format!("/volume-transfers/{t}"), None),
    ];
    for action in [
        json!({"os-extend": {"new_size": 16}}),
        json!({"os-reserve": {}}),
        json!({"os-unreserve": {}}),
        json!({"os-initialize_connection": {"connector": connector}}),
        json!({"os-attach": {"instance_uuid": "5f2d1e7c-0000-4000-8000-0000000000bb", "mountpoint": "/dev/vdb", "mode": "rw"}}),
        json!({"os-begin_detaching": {}}),
        json!({"os-roll_detaching": {}}),
        json!({"os-terminate_connection": {"connector": connector}}),
        json!({"os-detach": {}}),
        json!({"os-update_readonly_flag": {"readonly": true}}),
        json!({"os-set_bootable": {"bootable": true}}),
        json!({"os-reset_status": {"status": "error"}}),
        json!({"revert": {"snapshot_id": s}}),
    ] {
        p.push((Method::POST, format!("/volumes/{v}/action"), Some(action)));
    }
    p
}

enum Prober<'a> {
    Scp(&'a Client),
    Cinder(&'a Cinder),
}

impl Prober<'_> {
    async fn send(&self, (m, path, body): Probe) -> Answer {
        match self {
            Prober::Scp(c) => c.call(m, &path, body).await,
            Prober::Cinder(c) => c.call(m, &path, body).await,
        }
    }

    fn probes(&self, ids: &Ids) -> Vec<Probe> {
        match self {
            Prober::Scp(_) => scp_probes(ids),
            Prober::Cinder(_) => cinder_probes(ids),
        }
    }
}

/// Sends every probe for `foreign` ids and for unknown ones and checks
/// that each pair answers the same status and body (ids aside), that no
/// answer is a success but a list's, and none a 5xx.
async fn probe_all(who: &str, p: &Prober<'_>, foreign: &Ids) {
    let unknown = Ids::unknown();
    let theirs = p.probes(foreign);
    let nobody = p.probes(&unknown);
    for (f, u) in theirs.into_iter().zip(nobody) {
        let what = format!("{who}: {} {}", f.0, foreign.normalise(&f.1));
        let list = f.0 == Method::GET && (f.1.contains('?') || f.1.ends_with("/volumes"));
        let fa = p.send(f).await;
        let ua = p.send(u).await;
        assert!(
            !fa.status.is_server_error(),
            "{what}: {} {}",
            fa.status,
            fa.text
        );
        if !list {
            assert!(
                fa.status.is_client_error(),
                "{what} must be refused: {} {}",
                fa.status,
                fa.text
            );
        }
        assert_eq!(
            (fa.status, foreign.normalise(&fa.text)),
            (ua.status, unknown.normalise(&ua.text)),
            "{what}: a foreign id and an unknown id must answer alike"
        );
    }
}

/// What project a owns, checked before and after b's probes.
async fn project_a_state(scp: &Client, cinder: &Cinder) -> Value {
    let mut vols: Vec<Value> = scp.get("/v1/volumes?limit=100").await.body["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            json!([
                v["id"],
                v["name"],
                v["size"],
                v["state"],
                v["servers"].as_array().map(|s| s.len())
            ])
        })
        .collect();
    vols.sort_by_key(|v| v.to_string());
    let mut snaps: Vec<Value> = scp.get("/v1/snapshots?limit=100").await.body["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| json!([s["id"], s["name"], s["status"], s["volume_id"]]))
        .collect();
    snaps.sort_by_key(|v| v.to_string());
    let transfers = scp.get("/v1/volume-transfer").await.body["count"].clone();
    let mut meta = Vec::new();
    let detail = cinder.get("/volumes/detail").await.body;
    for v in detail["volumes"].as_array().unwrap() {
        meta.push(json!([v["id"], v["metadata"], v["bootable"], v["status"]]));
    }
    meta.sort_by_key(|v| v.to_string());
    json!({"volumes": vols, "snapshots": snaps, "transfers": transfers, "cinder": meta})
}

async fn scp_snapshot(c: &Client, volume: &str) -> String {
    let a = c
        .call(
            Method::POST,
            "/v1/snapshots",
            Some(json!({"name": "s1", "volume_id": volume})),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let id = a.body["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.get(&format!("/v1/snapshots/{id}")).await.body["status"] != "available" {
        assert!(
            Instant::now() < deadline,
            "snapshot {id} never became available"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    id
}

#[tokio::test]
async fn projects_are_isolated_in_and_across_dialects() {
    let d = daemon().await;
    let (scp_a, scp_b) = (d.client("a"), d.client("b"));
    let (cin_a, cin_b) = (member(&d, "a"), member(&d, "b"));

    // Project a's things, made through SCP.
    let v = scp_a.create("scp-one", 8, None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    scp_a.wait(&v, &["available"]).await;
    let snap = scp_snapshot(&scp_a, &v).await;
    let server = new_id();
    if have_loops() {
        let a = scp_a
            .call(
                Method::POST,
                &format!("/v1/volumes/{v}/servers"),
                Some(json!({"server_id": server})),
            )
            .await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
        scp_a.wait(&v, &["in-use"]).await;
    }
    let gift = scp_a.create("scp-gift", 8, None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    scp_a.wait(&gift, &["available"]).await;
    let t = scp_a
        .call(
            Method::POST,
            "/v1/volume-transfer",
            Some(json!({"volume_id": gift})),
        )
        .await;
    assert_eq!(t.status, StatusCode::ACCEPTED, "{}", t.text);
    let scp_ids = Ids {
        volume: v.clone(),
        snapshot: snap,
        transfer: t.body["id"].as_str().unwrap().to_string(),
        server: server.clone(),
    };

    // And through Cinder.
    let cv = cin_a
        .create(json!({"size": 1, "name": "cinder-one", "metadata": {"env": "prod"}}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let s = cin_a
        .post(
            "/snapshots",
            json!({"snapshot": {"volume_id": cv, "name": "cs"}}),
        )
        .await;
    assert_eq!(s.status, StatusCode::ACCEPTED, "{}", s.text);
    let cs = s.body["snapshot"]["id"].as_str().unwrap().to_string();
    cin_a.wait_snapshot(&cs, "available").await;
    let cgift = cin_a
        .create(json!({"size": 1, "name": "cinder-gift"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ct = cin_a
        .post(
            "/os-volume-transfer",
            json!({"transfer": {"volume_id": cgift}}),
        )
        .await;
    assert_eq!(ct.status, StatusCode::ACCEPTED, "{}", ct.text);
    let cinder_ids = Ids {
        volume: cv.clone(),
        snapshot: cs,
        transfer: ct.body["transfer"]["id"].as_str().unwrap().to_string(),
        server,
    };

    let before = project_a_state(&scp_a, &cin_a).await;
    probe_all("SCP -> SCP", &Prober::Scp(&scp_b), &scp_ids).await;
    probe_all("Cinder -> Cinder", &Prober::Cinder(&cin_b), &cinder_ids).await;
    probe_all("Cinder -> SCP-made", &Prober::Cinder(&cin_b), &scp_ids).await;
    probe_all("SCP -> Cinder-made", &Prober::Scp(&scp_b), &cinder_ids).await;

    // Project a's URL with project b's token.
    let mut wrong = cin_b.clone();
    wrong.project = Some("project-a".into());
    expect_fault(
        &wrong.get(&format!("/volumes/{cv}")).await,
        404,
        "itemNotFound",
    );
    expect_fault(&wrong.get("/volumes").await, 404, "itemNotFound");

    // Another project's quota and usage (which would count its volumes).
    let theirs = cin_b.get("/os-quota-sets/project-a?usage=True").await;
    let nobody = cin_b.get("/os-quota-sets/project-nobody?usage=True").await;
    assert!(theirs.status.is_client_error(), "{}", theirs.text);
    assert_eq!(
        (theirs.status, theirs.text.replace("project-a", "P")),
        (nobody.status, nobody.text.replace("project-nobody", "P"))
    );

    // Accepting a transfer is the one call meant to cross projects; it
    // needs the key, and a wrong key changes nothing (400, as Cinder).
    let a = scp_b
        .call(
            Method::POST,
            &format!("/v1/volume-transfer/{}/accept", scp_ids.transfer),
            Some(json!({"auth_key": "0123456789abcdef"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    let a = cin_b
        .post(
            &format!("/os-volume-transfer/{}/accept", cinder_ids.transfer),
            json!({"accept": {"auth_key": "0123456789abcdef"}}),
        )
        .await;
    expect_fault(&a, 400, "badRequest");

    // Nothing of a's changed, and b has nothing.
    assert_eq!(project_a_state(&scp_a, &cin_a).await, before);
    assert_eq!(scp_b.get("/v1/volumes").await.body["count"], 0);
    assert_eq!(
        scp_b.get("/v1/snapshots").await.body["snapshots"],
        json!([])
    );
    assert_eq!(scp_b.get("/v1/volume-transfer").await.body["count"], 0);
    assert_eq!(cin_b.get("/volumes").await.body["volumes"], json!([]));
    assert_eq!(cin_b.get("/snapshots").await.body["snapshots"], json!([]));
    assert!(d.volume_path(&v).exists() && d.volume_path(&cv).exists());
}

// ---------------------------------------------------------------------------
// Secrets in logs

/// Runs the binary with `args`, its output in `log`, until it answers.
async fn spawn_logged(cfg: &Path, port: u16, args: &[&str], level: &str, log: &Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_blockd"));
    cmd.args(["serve", "--config"])
        .arg(cfg)
        .args(args)
        .env("RUST_LOG", level)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    wait_up(Proc(cmd.spawn().expect("daemon starts")), port).await
}

/// SIGTERM and wait, so every log line is written.
fn stop(mut p: Proc) {
    let pid = nix::unistd::Pid::from_raw(p.0.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = p.0.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = p.0.kill();
    let _ = p.0.wait();
}

/// Does signed, token and failing requests; returns every secret that
/// went over the wire.
async fn secret_traffic(scp_port: u16, cinder_port: u16) -> Vec<String> {
    let clock: blockd::clock::SharedClock = Arc::new(OffsetClock(chrono::Duration::zero()));
    let base = format!("http://127.0.0.1:{scp_port}");
    let a = Client::new(&base, cred("a"), clock.clone());
    let b = Client::new(&base, cred("b"), clock.clone());
    let mut secrets = vec![cred("a").secret_key, cred("b").secret_key];
    let sign_and_send = async |c: &Client, m: Method, path: &str, body: Option<Value>| {
        let req = c.signed(m, path, body.as_ref()).build().unwrap();
        let sig = req.headers()["Scp-Signature"].to_str().unwrap().to_string();
        let ans = c.exec(req).await;
        (sig, ans)
    };

    let (s1, _) = sign_and_send(&a, Method::GET, "/v1/volumes", None).await;
    let (s2, made) = sign_and_send(
        &a,
        Method::POST,
        "/v1/volumes",
        Some(json!({"name": "v", "size": 8})),
    )
    .await;
    assert_eq!(made.status, StatusCode::ACCEPTED, "{}", made.text);
    secrets.extend([s1, s2]);
    let id = made.body["id"].as_str().unwrap().to_string();
    a.wait(&id, &["available"]).await;
    // Failing auth: a wrong secret, a bad signature, an unknown key.
    let mut wrong = a.clone();
    wrong.cred.secret_key = "wrong-secret-0987654321".into();
    secrets.push(wrong.cred.secret_key.clone());
    let (s3, r) = sign_and_send(&wrong, Method::GET, "/v1/volumes", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let mut stranger = a.clone();
    stranger.cred.access_key = "ak-stranger".into();
    let (s4, r) = sign_and_send(&stranger, Method::GET, "/v1/volumes", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let (s5, r) = sign_and_send(&a, Method::GET, "/v1/volumes", None).await;
    assert_eq!(r.status, StatusCode::OK);
    secrets.extend([s3, s4, s5.clone()]);
    // A replay of s5's request.
    let mut req = a.signed(Method::GET, "/v1/volumes", None).build().unwrap();
    req.headers_mut()
        .insert("Scp-Signature", s5.parse().unwrap());
    assert_eq!(a.exec(req).await.status, StatusCode::UNAUTHORIZED);
    // A transfer: the key in the answer, a wrong key, the right key.
    let t = a
        .call(
            Method::POST,
            "/v1/volume-transfer",
            Some(json!({"volume_id": id})),
        )
        .await;
    assert_eq!(t.status, StatusCode::ACCEPTED, "{}", t.text);
    let (tid, key) = (
        t.body["id"].as_str().unwrap(),
        t.body["auth_key"].as_str().unwrap(),
    );
    let guess = "feedfacecafebeef".to_string();
    let accept = |k: &str| json!({"auth_key": k});
    let r = b
        .call(
            Method::POST,
            &format!("/v1/volume-transfer/{tid}/accept"),
            Some(accept(&guess)),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let r = b
        .call(
            Method::POST,
            &format!("/v1/volume-transfer/{tid}/accept"),
            Some(accept(key)),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    secrets.extend([key.to_string(), guess]);

    // Cinder: good tokens, a bad one, and a transfer.
    let cinder = |tok: &str, project: &str| {
        let mut c = Cinder::new(
            format!("127.0.0.1:{cinder_port}").parse().unwrap(),
            tok,
            project,
        );
        c.version = Some("3.55".into());
        c
    };
    let ca = cinder("tok-member-a01", "project-a");
    let cb = cinder("tok-member-b01", "project-b");
    let admin = cinder("tok-admin-0001", "project-a");
    secrets.extend(["tok-member-a01", "tok-member-b01", "tok-admin-0001"].map(String::from));
    assert_eq!(
        admin.get("/volumes?all_tenants=1").await.status,
        StatusCode::OK
    );
    let cv = ca.create(json!({"size": 1, "name": "c"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bad = cinder("tok-not-a-real-token-42", "project-a");
    secrets.push("tok-not-a-real-token-42".into());
    expect_fault(&bad.get("/volumes").await, 401, "unauthorized");
    let t = ca
        .post("/volume-transfers", json!({"transfer": {"volume_id": cv}}))
        .await;
    assert_eq!(t.status, StatusCode::ACCEPTED, "{}", t.text);
    let tid = t.body["transfer"]["id"].as_str().unwrap();
    let key = t.body["transfer"]["auth_key"].as_str().unwrap();
    let guess = "0badc0de0badc0de".to_string();
    let r = cb
        .post(
            &format!("/volume-transfers/{tid}/accept"),
            json!({"accept": {"auth_key": guess}}),
        )
        .await;
    expect_fault(&r, 400, "badRequest");
    let r = cb
        .post(
            &format!("/volume-transfers/{tid}/accept"),
            json!({"accept": {"auth_key": key}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    secrets.extend([key.to_string(), guess]);
    secrets
}

#[tokio::test]
async fn secrets_never_reach_the_logs_at_trace_level() {
    for format in ["text", "json"] {
        let dir = tempfile::Builder::new()
            .prefix("blockd-sec-log")
            .tempdir_in("/var/tmp")
            .unwrap();
        let (port, cport) = (free_port(), free_port());
        let tokens = TOKENS.replace(
            "[cinder]\n",
            &format!("[cinder]\nlisten = \"127.0.0.1:{cport}\"\n"),
        );
        let cfg = common::proc::write_config(dir.path(), port, &tokens);
        let log = dir.path().join("daemon.log");
        let p = spawn_logged(&cfg, port, &["--log-format", format], "trace", &log).await;
        let mut secrets = secret_traffic(port, cport).await;
        // A reload that adds a key logs the change, not the secret.
        let added = "secret-added-by-reload-55";
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        text += &format!(
            "\n[[scp.credentials]]\naccess_key = \"ak-c\"\nsecret_key = \"{added}\"\nuser_id = \"user-c\"\nproject_id = \"project-c\"\n"
        );
        std::fs::write(&cfg, text).unwrap();
        secrets.push(added.to_string());
        let pid = nix::unistd::Pid::from_raw(p.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log)
            .unwrap()
            .contains("SIGHUP: applied")
        {
            assert!(
                Instant::now() < deadline,
                "{format}: the reload was not logged"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop(p);
        let text = std::fs::read_to_string(&log).unwrap();
        // The log is the one asked for, with the refusals in it.
        assert!(
            text.contains("authentication refused"),
            "{format}: no auth refusal logged"
        );
        assert!(
            text.contains("token refused"),
            "{format}: no token refusal logged"
        );
        assert!(
            text.lines().count() > 20,
            "{format}: suspiciously short log: {text}"
        );
        if format == "json" {
            let bad = text
                .lines()
                .filter(|l| serde_json::from_str::<Value>(l).is_err())
                .count();
            assert_eq!(bad, 0, "every line of the JSON log is JSON");
        }
        for s in &secrets {
            assert!(s.len() >= 12, "{s} is too short to look for");
            if let Some(line) = text.lines().find(|l| l.contains(s.as_str())) {
                panic!("{format} log holds a secret {s:?}: {line}");
            }
        }
        eprintln!(
            "{format}: {} log lines, {} secrets absent",
            text.lines().count(),
            secrets.len()
        );
    }
}

// ---------------------------------------------------------------------------
// File modes

/// Every file below `dir` is 0600 or stricter and every dir 0700; returns
/// how many files were checked and their names.
fn check_modes(dir: &Path) -> Vec<String> {
    let mut seen = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", d.display());
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            let name = e.path().strip_prefix(dir).unwrap().display().to_string();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                let mode = meta.permissions().mode() & 0o777;
                assert_eq!(mode & 0o177, 0, "{name} is {mode:o}");
                seen.push(name);
            }
        }
    }
    seen.sort();
    seen
}

#[tokio::test]
async fn every_file_the_daemon_makes_is_private() {
    // The library alone (tests run with the usual 022 umask), through
    // volumes, provisioned volumes, snapshots, volumes from snapshots,
    // extends, transfers and exports.
    let d = daemon().await;
    let c = d.client("a");
    let v = c.create("plain", 8, None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let full = c.create("full", 8, Some("SSD_Provisioned")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.wait(&v, &["available"]).await;
    c.wait(&full, &["available"]).await;
    let snap = scp_snapshot(&c, &v).await;
    let a = c
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "copy", "size": 8, "snapshot_id": snap})),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    c.wait(a.body["id"].as_str().unwrap(), &["available"]).await;
    let a = c
        .call(
            Method::PUT,
            &format!("/v1/volumes/{v}/size"),
            Some(json!({"size": 16})),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    c.wait(&v, &["available"]).await;
    if have_loops() {
        let a = c
            .call(
                Method::POST,
                &format!("/v1/volumes/{full}/servers"),
                Some(json!({"server_id": new_id()})),
            )
            .await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
        c.wait(&full, &["in-use"]).await;
    }
    let files = check_modes(&d.dir.path().join("data"));
    for want in ["blockd.db", "blockd.db-wal", "blockd.db-shm"] {
        assert!(
            files.contains(&want.to_string()),
            "{want} missing from {files:?}"
        );
    }
    assert!(
        files.iter().any(|f| f.starts_with("snapshots/")),
        "{files:?}"
    );
    assert!(
        files.iter().filter(|f| f.starts_with("volumes/")).count() >= 3,
        "{files:?}"
    );
    eprintln!("checked {} files: {files:?}", files.len());

    // The binary with generated credentials.
    let dir = tempfile::Builder::new()
        .prefix("blockd-sec-mode")
        .tempdir_in("/var/tmp")
        .unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    let cfg = dir.path().join("blockd.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\n[scp]\nlisten = \"127.0.0.1:{port}\"\n[cinder]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let p = common::proc::spawn(&cfg, port).await;
    let text = std::fs::read_to_string(data.join("credentials.toml")).unwrap();
    let generated: toml::Table = text.parse().unwrap();
    let g = &generated["credentials"][0];
    let gc = blockd::config::Credential {
        access_key: g["access_key"].as_str().unwrap().into(),
        secret_key: g["secret_key"].as_str().unwrap().into(),
        user_id: g["user_id"].as_str().unwrap().into(),
        project_id: g["project_id"].as_str().unwrap().into(),
    };
    let c = Client::new(
        &format!("http://127.0.0.1:{port}"),
        gc,
        Arc::new(OffsetClock(chrono::Duration::zero())),
    );
    let v = c.create("bin", 8, None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.wait(&v, &["available"]).await;
    scp_snapshot(&c, &v).await;
    stop(p);
    let files = check_modes(&data);
    assert!(files.contains(&"credentials.toml".to_string()), "{files:?}");
    assert!(files.contains(&"blockd.db".to_string()), "{files:?}");
}

#[tokio::test]
async fn start_up_refuses_a_data_dir_others_can_write() {
    for mode in [0o770, 0o707, 0o777, 0o720] {
        let dir = tempfile::Builder::new()
            .prefix("blockd-sec-dir")
            .tempdir_in("/var/tmp")
            .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(mode)).unwrap();
        let cfg = common::proc::write_config(dir.path(), free_port(), "");
        let out = Command::new(env!("CARGO_BIN_EXE_blockd"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "mode {mode:o} was accepted");
        assert!(
            err.contains(&data.display().to_string())
                && err.contains(&format!("mode {mode:o}"))
                && err.contains("use 0700"),
            "mode {mode:o}: unclear message: {err}"
        );
        assert!(
            !data.join("blockd.db").exists(),
            "nothing is created in a refused dir"
        );
    }
    // A dir only others can read starts, with a warning.
    let dir = tempfile::Builder::new()
        .prefix("blockd-sec-dir")
        .tempdir_in("/var/tmp")
        .unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let cfg = common::proc::write_config(dir.path(), port, "");
    let log = dir.path().join("daemon.log");
    let p = spawn_logged(&cfg, port, &[], "warn", &log).await;
    stop(p);
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("0700 is advised")
    );
}
