//! The `hetzner` provider against a local fake of the Hetzner Cloud API (`hetzner_fake`):
//! the documented request bodies, idempotent creates by lease label, lookups after a lost
//! race, pagination, destroys, prices, labels and addresses, and installations sharing a
//! project. Failures, rate limits and secrets are in `hetzner_faults.rs`.

// The fake server's helpers are test code too: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

mod fixtures;
mod hetzner_fake;

use std::net::Ipv6Addr;

use fixtures::by_lease;
use hetzner_fake::{cpx, hetzner, hetzner_as, insert_server, requests_to, server_json, start};
use providers::{Error, RunnerRef};
use serde_json::json;

/// Create posts the documented body (name, type, image, location, labels, user data, keys,
/// firewalls) and returns the server as a not-yet-ready runner at its IPv4.
#[tokio::test]
async fn create_posts_the_documented_body() {
    let (addr, shared) = start().await;
    let provider = hetzner(
        addr,
        json!({
            "ssh_keys": [4711, "ops"], "firewall_ids": [9],
            "user_data": "#cloud-config\nruncmd: [agent --lease {{BERTH_LEASE_ID}} --url {{BERTH_CALLBACK_URL}} --token {{BERTH_RUNNER_TOKEN}}]"
        }),
    );
    let mut spec = cpx("acme", "lease_01JD0Z");
    spec.labels.insert("team".into(), "infra".into());
    spec.region = Some("hel1".into());
    let runner = provider.create(&spec).await.unwrap();

    assert!(!runner.ready);
    assert_eq!(
        (runner.tenant.as_str(), runner.lease_id.as_str()),
        ("acme", "lease_01JD0Z")
    );
    assert_eq!(runner.address.as_deref(), Some("203.0.113.1"));
    assert_eq!(runner.id, "1");
    assert_eq!(runner.metadata["status"], "initializing");
    assert_eq!(runner.metadata["location"], "hel1");

    let body = shared.lock().unwrap().create_bodies[0].clone();
    assert_eq!(body["name"], "berth-lease-01jd0z");
    assert_eq!(body["server_type"], "cpx22");
    assert_eq!(body["image"], "ubuntu-24.04");
    assert_eq!(body["location"], "hel1");
    assert_eq!(
        body["labels"],
        json!({"managed-by": "berth", "berth-tenant": "acme", "berth-lease": "lease_01JD0Z", "team": "infra"})
    );
    assert_eq!(body["ssh_keys"], json!([4711, "ops"]));
    assert_eq!(body["firewalls"], json!([{"firewall": 9}]));
    assert_eq!(
        body["user_data"],
        "#cloud-config\nruncmd: [agent --lease lease_01JD0Z --url http://127.0.0.1:9/v1/runners --token rt_secret_token]"
    );
    assert!(body.get("datacenter").is_none());
}

/// `{{BERTH_GITHUB_JITCONFIG}}` in the user data is the lease's GitHub JIT config (empty when
/// the lease has none).
#[tokio::test]
async fn user_data_carries_the_github_jit_config() {
    let (addr, shared) = start().await;
    let provider = hetzner(
        addr,
        json!({ "user_data": "#cloud-config\nruncmd: [./run.sh --jitconfig '{{BERTH_GITHUB_JITCONFIG}}']" }),
    );
    let mut spec = cpx("acme", "lease_jit");
    spec.env
        .insert("BERTH_GITHUB_JITCONFIG".into(), "eyJjaXRjb25maWci".into());
    provider.create(&spec).await.unwrap();
    provider.create(&cpx("acme", "lease_nojit")).await.unwrap();
    let bodies = shared.lock().unwrap().create_bodies.clone();
    assert_eq!(
        bodies[0]["user_data"],
        "#cloud-config\nruncmd: [./run.sh --jitconfig 'eyJjaXRjb25maWci']"
    );
    assert_eq!(
        bodies[1]["user_data"],
        "#cloud-config\nruncmd: [./run.sh --jitconfig '']"
    );
}

/// A lease that already has a server gets that server back; no second POST.
#[tokio::test]
async fn create_is_idempotent_by_lease_label() {
    let (addr, shared) = start().await;
    let existing = insert_server(&shared, "acme", "lease_again", true);
    let provider = hetzner(addr, json!({}));
    let runner = provider.create(&cpx("acme", "lease_again")).await.unwrap();
    assert_eq!(runner.id, existing.to_string());
    let again = provider.create(&cpx("acme", "lease_again")).await.unwrap();
    assert_eq!(again, runner);
    assert_eq!(requests_to(&shared, "POST /servers"), 0);
    let lookup = shared.lock().unwrap().requests[0].clone();
    assert!(lookup.contains("label_selector=berth-tenant%3D%3Dacme%2Cberth-lease%3D%3Dlease_again%2Cmanaged-by%3D%3Dberth"), "{lookup}");
}

/// A create that loses a race (409 `uniqueness_error`) returns the winner's server, found
/// by its exact name.
#[tokio::test]
async fn create_after_uniqueness_error_finds_the_server() {
    let (addr, shared) = start().await;
    shared.lock().unwrap().lose_create_race = true;
    let provider = hetzner(addr, json!({}));
    let runner = provider.create(&cpx("acme", "lease_race")).await.unwrap();
    assert_eq!(runner.lease_id, "lease_race");
    assert_eq!(shared.lock().unwrap().servers.len(), 1);
    assert_eq!(requests_to(&shared, "POST /servers"), 1);
    assert_eq!(requests_to(&shared, "GET /servers?"), 2);
}

/// After `uniqueness_error` the server is looked up by its exact name, so a create finds the
/// winner's server even while the label index does not show it yet; a server of that name
/// that is not this lease's is never adopted (nor deleted).
#[tokio::test]
async fn the_exact_name_lookup_finds_the_server_after_uniqueness_error() {
    let (addr, shared) = start().await;
    {
        let mut cloud = shared.lock().unwrap();
        cloud.lose_create_race = true;
        cloud.race_winner_unindexed = true;
    }
    let provider = hetzner(addr, json!({}));
    let runner = provider
        .create(&cpx("acme", "lease_unindexed"))
        .await
        .unwrap();
    let winner = *shared.lock().unwrap().servers.keys().next().unwrap();
    assert_eq!(runner.id, winner.to_string());
    assert_eq!(runner.lease_id, "lease_unindexed");
    assert_eq!(shared.lock().unwrap().servers.len(), 1, "a second server");
    let lookups = shared.lock().unwrap().requests.clone();
    assert!(
        lookups
            .iter()
            .any(|r| r.starts_with("GET /servers?") && r.contains("name=berth-lease-unindexed")),
        "{lookups:?}"
    );

    // A hand-made server that took the name is nobody's runner.
    let stranger = {
        let mut cloud = shared.lock().unwrap();
        cloud.next_id += 1;
        let id = cloud.next_id;
        let server = server_json(id, "berth-lease-taken", "cpx22", "fsn1", &json!({}));
        cloud.servers.insert(id, server);
        id
    };
    match provider.create(&cpx("acme", "lease_taken")).await {
        Err(Error::Permanent(message)) => {
            assert!(message.contains("not this lease's"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(shared.lock().unwrap().servers.contains_key(&stranger));
}

/// List follows `next_page` over three pages and keeps to the tenant's berth servers.
#[tokio::test]
async fn list_follows_pagination() {
    let (addr, shared) = start().await;
    for i in 0..120 {
        insert_server(&shared, "acme", &format!("lease_{i}"), true);
    }
    insert_server(&shared, "other", "lease_x", true);
    insert_server(&shared, "acme", "lease_hand_made", false);
    let provider = hetzner(addr, json!({}));
    let runners = provider.list("acme").await.unwrap();
    assert_eq!(runners.len(), 120);
    assert!(
        runners
            .iter()
            .all(|runner| runner.tenant == "acme" && runner.lease_id.starts_with("lease_"))
    );
    let pages: Vec<String> = shared.lock().unwrap().requests.clone();
    assert_eq!(pages.len(), 3);
    for (i, request) in pages.iter().enumerate() {
        assert!(
            request.contains("per_page=50") && request.contains(&format!("page={}", i + 1)),
            "{request}"
        );
    }
    assert!(provider.list("nobody").await.unwrap().is_empty());
}

/// Destroy by id re-reads the server, then deletes it; a repeat finds it gone (404): both
/// are success.
#[tokio::test]
async fn destroy_by_id_is_idempotent() {
    let (addr, shared) = start().await;
    let provider = hetzner(addr, json!({}));
    let runner = provider.create(&cpx("acme", "lease_del")).await.unwrap();
    let reference = RunnerRef {
        id: Some(runner.id.clone()),
        ..by_lease("acme", "lease_del")
    };
    provider.destroy(&reference).await.unwrap();
    provider.destroy(&reference).await.unwrap();
    assert!(shared.lock().unwrap().servers.is_empty());
    assert_eq!(requests_to(&shared, "GET /servers/"), 2);
    assert_eq!(requests_to(&shared, "DELETE /servers"), 1);
}

/// Without an id, destroy finds the lease's server by its labels; nothing found is success.
#[tokio::test]
async fn destroy_by_lease_labels() {
    let (addr, shared) = start().await;
    insert_server(&shared, "acme", "lease_lost", true);
    let keep = insert_server(&shared, "acme", "lease_keep", true);
    let provider = hetzner(addr, json!({}));
    provider
        .destroy(&by_lease("acme", "lease_lost"))
        .await
        .unwrap();
    provider
        .destroy(&by_lease("acme", "lease_lost"))
        .await
        .unwrap();
    let left: Vec<u64> = shared.lock().unwrap().servers.keys().copied().collect();
    assert_eq!(left, vec![keep]);
}

/// Prices: decimal strings to exact micros, gross or net, per location, rounding up.
#[tokio::test]
async fn prices_are_exact_micros() {
    let (addr, _shared) = start().await;
    let gross = hetzner(addr, json!({}));
    assert_eq!(gross.price("cpx22", None).await.unwrap(), Some(7_140));
    assert_eq!(
        gross.price("cpx22", Some("hel1")).await.unwrap(),
        Some(7_736)
    );
    assert_eq!(gross.price("cpx22", Some("ash")).await.unwrap(), None);
    assert_eq!(gross.price("cx99", None).await.unwrap(), None);
    let net = hetzner(addr, json!({"price": "net", "location": null}));
    assert_eq!(net.price("cpx22", None).await.unwrap(), Some(6_000));
    assert_eq!(net.price("cpx22", Some("hel1")).await.unwrap(), Some(6_501));
}

/// A second berth installation sharing the project (and the tenant name) lists none of the
/// first's servers, and destroying what it lists — or the first's servers by lease or by id
/// — deletes none of them; servers made before installation ids (no label) both may see.
#[tokio::test]
async fn a_second_installation_sharing_the_project_sees_none_of_the_first_servers() {
    let (addr, shared) = start().await;
    let first = hetzner_as(addr, "1111aaaa");
    let second = hetzner_as(addr, "2222bbbb");
    let one = first.create(&cpx("acme", "lease_first_1")).await.unwrap();
    let two = first.create(&cpx("acme", "lease_first_2")).await.unwrap();
    let legacy = insert_server(&shared, "acme", "lease_legacy", true);
    let labels = shared.lock().unwrap().create_bodies[0]["labels"].clone();
    assert_eq!(labels["berth-installation"], "1111aaaa", "{labels}");

    let seen = second.list("acme").await.unwrap();
    assert_eq!(
        seen.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![legacy.to_string()],
        "the second installation lists the first's servers"
    );
    for runner in &seen {
        if runner.id != legacy.to_string() {
            second
                .destroy(&RunnerRef {
                    id: Some(runner.id.clone()),
                    ..by_lease("acme", &runner.lease_id)
                })
                .await
                .unwrap();
        }
    }
    for (runner, lease) in [(&one, "lease_first_1"), (&two, "lease_first_2")] {
        second.destroy(&by_lease("acme", lease)).await.unwrap();
        second
            .destroy(&RunnerRef {
                id: Some(runner.id.clone()),
                ..by_lease("acme", lease)
            })
            .await
            .unwrap();
    }
    assert_eq!(
        shared.lock().unwrap().servers.len(),
        3,
        "a server was deleted"
    );
    assert_eq!(requests_to(&shared, "DELETE"), 0);
    let mut mine: Vec<String> = first
        .list("acme")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    mine.sort();
    let mut want = vec![one.id.clone(), two.id.clone(), legacy.to_string()];
    want.sort();
    assert_eq!(mine, want);
}

/// Tenant and pool names ending in `-` (valid in berth) become valid Hetzner label values,
/// and the server is found again by them.
#[tokio::test]
async fn label_values_from_names_ending_in_a_dash_are_valid() {
    let (addr, shared) = start().await;
    let provider = hetzner(addr, json!({}));
    let mut spec = cpx("acme-", "lease_dash");
    spec.labels.insert("berth-pool".into(), "linux-".into());
    let runner = provider.create(&spec).await.unwrap();
    assert_eq!(runner.tenant, "acme-");
    let labels = shared.lock().unwrap().create_bodies[0]["labels"].clone();
    for (key, value) in labels.as_object().unwrap() {
        let value = value.as_str().unwrap();
        assert!(
            providers::hetzner::valid_label_value(value),
            "{key}={value} is not a valid label value"
        );
    }
    assert_ne!(labels["berth-tenant"], labels["berth-pool"]);
    assert_eq!(provider.list("acme-").await.unwrap(), vec![runner.clone()]);
    assert!(provider.list("acme").await.unwrap().is_empty());
    provider
        .destroy(&by_lease("acme-", "lease_dash"))
        .await
        .unwrap();
    assert!(shared.lock().unwrap().servers.is_empty());
}

/// A server without a public IPv4 is reported at a concrete IPv6 address (`<prefix>::1` of
/// its /64), not at the network.
#[tokio::test]
async fn an_ipv6_only_server_has_a_concrete_address() {
    let (addr, shared) = start().await;
    shared.lock().unwrap().no_ipv4 = true;
    let provider = hetzner(addr, json!({}));
    let runner = provider.create(&cpx("acme", "lease_v6")).await.unwrap();
    let address = runner.address.expect("an address");
    let parsed: Ipv6Addr = address.parse().expect("a concrete IPv6 address");
    assert_eq!(parsed, "2001:db8:0:1::1".parse::<Ipv6Addr>().unwrap());
    assert_eq!(runner.metadata["ipv6"], "2001:db8:0:1::/64");
}
