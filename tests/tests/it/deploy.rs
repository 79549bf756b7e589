//! Deploying stacks through a real agent's API: the seeds' stacks, their env, redeploys,
//! refusals that leave the store as it was, tokens, and writes through a non-leader.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use viking::{
    api::{client::ApiClient, DeployRequest},
    deploy::StackSummary,
    stack::plan::Plan,
};
use viking_tests::{agent::AgentProc, etcd::Etcd, unique};

fn example(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(p)
}

fn request(name: &str, file: &Path, dry_run: bool) -> DeployRequest {
    let text = std::fs::read_to_string(file).expect("example file");
    DeployRequest {
        name: name.into(),
        file: file.display().to_string(),
        text,
        dry_run,
        contexts: Default::default(),
    }
}

async fn deploy(api: &ApiClient, name: &str, file: &Path) -> Result<Plan, String> {
    api.post::<_, Plan>("/v1/deploy", &request(name, file, false))
        .await
        .map(|p| p.expect("a plan"))
        .map_err(|e| e.to_string())
}

async fn env_of(api: &ApiClient, stack: &str, job: &str) -> BTreeMap<String, String> {
    api.get(&format!("/v1/env/{stack}/{job}")).await.expect("env").expect("env body")
}

async fn embedded_agent() -> AgentProc {
    AgentProc::embedded().await
}

#[tokio::test]
async fn seed_stacks_deploy_and_web_gets_its_links_env() {
    let agent = embedded_agent().await;
    let api = agent.client();
    deploy(&api, "shared", &example("shared/viking.yml")).await.unwrap();
    let plan = deploy(&api, "web", &example("web/viking.yml")).await.unwrap();
    let order: Vec<&str> = plan.jobs.iter().map(|j| j.job.name.as_str()).collect();
    assert_eq!(order, ["middleware", "web"]);

    let env = env_of(&api, "web", "web").await;
    let port = |k: &str| env.get(k).unwrap_or_else(|| panic!("{k} missing from {env:#?}")).clone();
    let (mongo, auth, mw) = (
        port("SHARED_MONGO_PORT_27017_TCP_PORT"),
        port("SHARED_AUTH_PORT_80_TCP_PORT"),
        port("MIDDLEWARE_PORT_80_TCP_PORT"),
    );
    assert_eq!(BTreeSet::from([&mongo, &auth, &mw]).len(), 3, "distinct ambassador ports");
    assert_eq!(port("SHARED_MONGO_PORT_27017"), format!("127.0.0.1:{mongo}"));
    assert_eq!(port("SHARED_MONGO_PORT_27017_TCP"), format!("tcp://127.0.0.1:{mongo}"));
    assert_eq!(port("SHARED_MONGO_PORT_27017_TCP_PROTO"), "tcp");
    assert_eq!(port("SHARED_MONGO_PORT_27017_TCP_ADDR"), "127.0.0.1");
    assert_eq!(port("MIDDLEWARE_SERVICE_PORT"), mw);
    // middleware links to shared only.
    let mw_env = env_of(&api, "web", "middleware").await;
    assert!(
        mw_env.contains_key("SHARED_AUTH_PORT_80_TCP")
            && !mw_env.keys().any(|k| k.starts_with("MIDDLEWARE"))
    );

    // Seed 001's fig stack, with its build: contexts packed as `viking deploy` does: this
    // host runs exec, which cannot build, so the deploy is refused naming the field (it runs
    // under docker: tests/tests/it/docker_build.rs).
    let file = example("fig-local/fig.yml");
    let mut req = request("shop", &file, false);
    for job in ["web", "auth", "pricing"] {
        use base64::Engine as _;
        let tar = viking::deploy::context::pack(&example("fig-local").join(job), job).unwrap();
        req.contexts.insert(job.into(), base64::engine::general_purpose::STANDARD.encode(tar));
    }
    let err =
        api.post::<_, Plan>("/v1/deploy", &req).await.expect_err("exec cannot build").to_string();
    assert!(
        err.contains("fig.yml") && err.contains(".build: a build needs the docker runtime"),
        "{err}"
    );
    let stacks: Vec<StackSummary> = api.get("/v1/stacks").await.unwrap().unwrap();
    assert!(stacks.iter().all(|s| s.name != "shop"), "nothing stored");
}

#[tokio::test]
async fn redeploying_an_unchanged_stack_changes_nothing() {
    let agent = embedded_agent().await;
    let api = agent.client();
    deploy(&api, "shared", &example("shared/viking.yml")).await.unwrap();
    let first = deploy(&api, "web", &example("web/viking.yml")).await.unwrap();
    let env1 = env_of(&api, "web", "web").await;
    let again = deploy(&api, "web", &example("web/viking.yml")).await.unwrap();
    let env2 = env_of(&api, "web", "web").await;
    assert_eq!(env1, env2);
    let ports = |p: &Plan| {
        p.ports.iter().map(|a| (a.service.clone(), a.ambassador_port)).collect::<Vec<_>>()
    };
    assert_eq!(ports(&first), ports(&again));
}

#[tokio::test]
async fn bad_stacks_are_refused_with_file_line_field_and_nothing_is_stored() {
    let agent = embedded_agent().await;
    let api = agent.client();
    deploy(&api, "shared", &example("shared/viking.yml")).await.unwrap();
    let before: Vec<StackSummary> = api.get("/v1/stacks").await.unwrap().unwrap();
    let dir = std::env::temp_dir().join(unique("vk-bad-"));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("unknown", "web:\n  links: [nosuch]\n", "unknown.yml:2: web.links[0]: links to nosuch"),
        (
            "cycle",
            "a:\n  ports: [1]\n  links: [b]\nb:\n  ports: [2]\n  links: [a]\n",
            "link cycle: a -> b -> a",
        ),
        ("dup", "web:\n  image: a\nweb:\n  image: b\n", "dup.yml:3: web: duplicate job"),
        ("port", "web:\n  ports: [99999]\n", "port.yml:2: web.ports[0]: \"99999\" is not a port"),
        ("name", "web server:\n  image: a\n", "name.yml:2: web server:"),
        ("yaml", "web: [\n", "yaml.yml:"),
        (
            "undeployed",
            "web:\n  links: [other/db]\n",
            "undeployed.yml:2: web.links[0]: links to other/db, but stack other is not deployed",
        ),
        ("nojob", "web:\n  links: [shared/nosuch]\n", "stack shared has no job nosuch"),
    ];
    for (name, text, want) in cases {
        let file = dir.join(format!("{name}.yml"));
        std::fs::write(&file, text).unwrap();
        let got = deploy(&api, name, &file).await.expect_err("refused");
        assert!(got.contains("400"), "{name}: {got}");
        assert!(got.contains(want), "{name}:\n  got:  {got}\n  want: {want}");
    }
    let after: Vec<StackSummary> = api.get("/v1/stacks").await.unwrap().unwrap();
    assert_eq!(
        before.iter().map(|s| &s.name).collect::<Vec<_>>(),
        after.iter().map(|s| &s.name).collect::<Vec<_>>(),
        "nothing stored"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_api_refuses_missing_and_wrong_tokens_and_changes_nothing() {
    let agent = embedded_agent().await;
    for api in [agent.client_with(""), agent.client_with("not-the-token")] {
        let err = deploy(&api, "shared", &example("shared/viking.yml")).await.expect_err("refused");
        assert!(err.starts_with("401"), "{err}");
        let err =
            api.get::<Vec<StackSummary>>("/v1/stacks").await.expect_err("refused").to_string();
        assert!(err.starts_with("401"), "{err}");
    }
    let stacks: Vec<StackSummary> = agent.client().get("/v1/stacks").await.unwrap().unwrap();
    assert!(stacks.is_empty(), "nothing deployed by unauthenticated requests");
}

#[tokio::test]
async fn a_write_sent_to_a_non_leader_lands_once() {
    let etcd = Etcd::start().await;
    let one = AgentProc::start(Some(&etcd.spec())).await;
    let two = AgentProc::start(Some(&etcd.spec())).await;
    let (leader, follower) = if one.is_leader().await { (&one, &two) } else { (&two, &one) };
    assert!(leader.is_leader().await && !follower.is_leader().await, "exactly one leader");
    // Both agents share the cluster's token.
    let api = follower.client();
    deploy(&api, "shared", &example("shared/viking.yml")).await.unwrap();
    let plan = deploy(&api, "web", &example("web/viking.yml")).await.unwrap();
    let stacks: Vec<StackSummary> = leader.client().get("/v1/stacks").await.unwrap().unwrap();
    assert_eq!(stacks.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["shared", "web"]);
    // Three linked service ports, allocated once each: the counter moved by exactly three.
    assert_eq!(plan.ports.len(), 3);
    let mut ports: Vec<u16> = plan.ports.iter().map(|p| p.ambassador_port).collect();
    ports.sort_unstable();
    assert_eq!(ports[2] - ports[0], 2, "consecutive: nothing allocated twice ({ports:?})");
}

#[tokio::test]
async fn job_records_added_by_hand_are_honoured_and_the_folder_round_trips() {
    use viking::{
        api::JobFile,
        store::{EtcdOptions, EtcdStore, Store},
    };
    let etcd = Etcd::start().await;
    let agent = AgentProc::start(Some(&etcd.spec())).await;
    let api = agent.client();
    let store = EtcdStore::connect(&etcd.endpoints(), &EtcdOptions::default()).await.unwrap();
    // An operator drops a YAML job into the deployment config folder.
    store
        .put("/viking/deploy/extra/cache", b"image: redis\nports:\n  - 6379\n".to_vec(), None)
        .await
        .unwrap();
    let stacks: Vec<StackSummary> = api.get("/v1/stacks").await.unwrap().unwrap();
    assert!(stacks.iter().any(|s| s.name == "extra" && s.jobs == ["cache"]), "{stacks:?}");
    // A stack can link to it like to any deployed job.
    let dir = std::env::temp_dir().join(unique("vk-hand-"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("app.yml");
    std::fs::write(&file, "app:\n  image: app\n  links: [extra/cache]\n").unwrap();
    deploy(&api, "app", &file).await.unwrap();
    let env = env_of(&api, "app", "app").await;
    assert!(env.contains_key("EXTRA_CACHE_PORT_6379_TCP_PORT"), "{env:?}");
    // A record that does not parse is not used, and says which key.
    store.put("/viking/deploy/extra/broken", b"ports: [http]\n".to_vec(), None).await.unwrap();
    std::fs::write(&file, "app:\n  image: app\n  links: [extra/broken]\n").unwrap();
    let err = deploy(&api, "app", &file).await.expect_err("refused");
    assert!(err.contains("/viking/deploy/extra/broken") && err.contains("is not a port"), "{err}");
    store.delete("/viking/deploy/extra/broken").await.unwrap();

    // Export, remove, apply: the same records come back.
    let files: Vec<JobFile> = api.get("/v1/config").await.unwrap().unwrap();
    let out = dir.join("export");
    let mut jobs = viking::deploy::DeployedJobs::default();
    for f in &files {
        jobs.jobs.insert((f.stack.clone(), f.job.name.clone()), f.job.clone());
    }
    viking::deploy::folder::export(&jobs, &out).unwrap();
    assert!(out.join("extra/cache.json").is_file() && out.join("app/app.json").is_file());
    // app links to it: removing it takes --force.
    assert!(api.delete("/v1/stacks/extra").await.is_err());
    api.delete("/v1/stacks/extra?force=true").await.unwrap();
    let records = viking::deploy::folder::import(&out).unwrap();
    let back: Vec<JobFile> =
        records.into_iter().map(|r| JobFile { stack: r.stack, job: r.job }).collect();
    let n: usize = api.post("/v1/config", &back).await.unwrap().unwrap();
    assert_eq!(n, 2);
    let again: Vec<JobFile> = api.get("/v1/config").await.unwrap().unwrap();
    let names =
        |v: &[JobFile]| v.iter().map(|f| (f.stack.clone(), f.job.clone())).collect::<Vec<_>>();
    assert_eq!(names(&again), names(&files));
    let _ = std::fs::remove_dir_all(&dir);
}
