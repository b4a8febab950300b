//! The SCP OpenAPI document: served unsigned at /openapi.json, every path
//! it lists is a real route of the router, and its volume schemas follow
//! the view types of each version. `BLOCKD_OPENAPI_OUT` saves the document
//! for the validator CI runs.

mod common;

use common::*;
use reqwest::StatusCode;

#[tokio::test]
async fn scp_document_matches_the_router() {
    let d = TestDaemon::start().await;
    let base = format!("http://{}", d.addr);
    let r = reqwest::get(format!("{base}/openapi.json")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let doc: serde_json::Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    if let Ok(out) = std::env::var("BLOCKD_OPENAPI_OUT") {
        std::fs::write(out, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    }

    // Each listed operation exists: unsigned, a signed route answers 401,
    // while an unknown path would answer 404 and a wrong method 405.
    let http = reqwest::Client::new();
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(
        paths
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum::<usize>(),
        blockd::api::scp::openapi::ROUTES.len()
    );
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let url = format!(
                "{base}{}",
                path.replace("{server_id}", "s1")
                    .replace("{id}", "00000000-0000-0000-0000-000000000000")
            );
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = http.request(m, &url).send().await.unwrap();
            let want = if path == "/" {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            assert_eq!(r.status(), want, "{method} {path}");
        }
    }
    let r = http.get(format!("{base}/v1/nothing")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "the check can fail");

    // Version schemas: QoS only from 1.2 on.
    let s = &doc["components"]["schemas"];
    assert!(s["VolumeShow"]["properties"]["size"].is_object(), "{s}");
    assert!(s["VolumeShow"]["properties"].get("max_iops").is_none());
    assert!(
        s["VolumeShowV1Dot2"].to_string().contains("max_iops"),
        "{s}"
    );
    assert_eq!(doc["x-scp-versions"]["1.1"]["volume"], "VolumeShow");
    assert_eq!(doc["x-scp-versions"]["1.3"]["volume"], "VolumeShowV1Dot2");
}
