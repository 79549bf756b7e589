//! Stack files: the seeds' examples load as written; bad stacks are refused with file, line
//! and field; names always make valid, distinct env prefixes.
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use viking::stack::{Format, Link, Stack};

fn example(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(p)
}

#[test]
fn seed_000_stacks_load_as_written_with_tabs() {
    let shared = Stack::load(&example("shared"), None).unwrap();
    assert_eq!(shared.name, "shared");
    assert_eq!(shared.format, Format::Viking);
    let mongo = shared.job("mongo").unwrap();
    assert_eq!(mongo.ports[0].port, 27017);
    assert!(mongo.daemonize, "a job with ports is daemonized");
    assert!(mongo.fixed, "a job with volumes is fixed");

    let web = Stack::load(&example("web"), None).unwrap();
    let w = web.job("web").unwrap();
    let links: Vec<String> = w.links.iter().map(ToString::to_string).collect();
    assert_eq!(links, ["shared/mongo", "shared/auth", "middleware"]);
    assert_eq!(web.order().unwrap(), ["middleware", "web"]);
}

#[test]
fn seed_001_fig_file_orders_linked_to_services_first() {
    let fig = Stack::load(&example("fig"), Some("shop")).unwrap();
    assert_eq!(fig.format, Format::Fig);
    let order = fig.order().unwrap();
    let pos = |j: &str| order.iter().position(|x| x == j).unwrap();
    assert!(pos("redis") < pos("auth") && pos("redis") < pos("catalogue"));
    assert!(pos("pricing") < pos("catalogue"));
    assert!(pos("auth") < pos("web") && pos("catalogue") < pos("web"));
    assert_eq!(fig.job("web").unwrap().build.as_deref(), Some("web"));
    assert!(!fig.warnings(&viking::stack::NothingDeployed).is_empty(), "redis has no ports: said");
}

#[test]
fn compose_format_is_detected() {
    let text = "version: '3'\nservices:\n  db:\n    image: redis\n    ports: ['6379']\n    restart: always\n  app:\n    image: app\n    environment:\n      - MODE=prod\n    links: [db]\n    deploy:\n      replicas: 3\n";
    let s = Stack::from_text(Path::new("compose.yml"), text, "shop").unwrap();
    assert_eq!(s.format, Format::Compose);
    let app = s.job("app").unwrap();
    assert_eq!(app.scale, 3);
    assert_eq!(app.env["MODE"], "prod");
    assert!(!app.daemonize, "no ports: not daemonized");
}

fn refused(text: &str) -> String {
    let e = Stack::from_text(Path::new("bad.yml"), text, "bad").expect_err("refused");
    e.to_string()
}

#[test]
fn bad_stacks_name_file_line_and_field() {
    let cases = [
        (
            "web:\n  image: a\n  links:\n    - nosuch\n",
            "bad.yml:4: web.links[0]: links to nosuch, but this stack has no job nosuch",
        ),
        (
            "a:\n  ports: [1]\n  links: [b]\nb:\n  ports: [2]\n  links: [a]\n",
            "link cycle: a -> b -> a",
        ),
        (
            "web:\n  image: a\nweb:\n  image: b\n",
            "bad.yml:3: web: duplicate job (first defined at line 1)",
        ),
        (
            "web:\n  image: a\n  ports:\n    - 80\n    - http\n",
            "bad.yml:5: web.ports[1]: \"http\" is not a port",
        ),
        ("My_Web:\n  image: a\n", "bad.yml:2: My_Web: \"My_Web\" has 'M'"),
        ("web:\n  image: [a\n", "bad.yml:"),
        ("web:\n  imagee: a\n", "bad.yml:2: web.imagee: unknown field"),
    ];
    for (text, want) in cases {
        let got = refused(text);
        assert!(got.contains(want), "for {text:?}\n  got:  {got}\n  want: {want}");
    }
    assert!(refused("web:\n  image: [a\n").contains("invalid YAML"));
}

#[test]
fn links_that_would_share_env_names_are_refused() {
    let text =
        "shared-mongo:\n  ports: [1]\nweb:\n  links:\n    - shared/mongo\n    - shared-mongo\n";
    let got = refused(text);
    assert!(got.contains("SHARED_MONGO"), "{got}");
}

static ACCEPTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[test]
fn the_property_test_exercises_accepted_stacks() {
    // Runs the property on its own inputs, then checks it did not pass vacuously.
    accepted_names_make_distinct_env_prefixes();
    assert!(ACCEPTED.load(std::sync::atomic::Ordering::Relaxed) > 50);
}

proptest! {
    #[test]
    fn accepted_names_make_distinct_env_prefixes(
        stack in "[a-z0-9-]{1,12}",
        own in "[a-z0-9-]{1,12}",
        targets in proptest::collection::vec(
            (proptest::option::of("[a-z][a-z-]{0,4}[a-z]"), "[a-z][a-z-]{0,4}[a-z]"),
            1..6,
        ),
    ) {
        // Hyphens and slashes both become '_', so collisions like a/b-c vs a-b/c come up.
        let links: Vec<Link> = targets
            .iter()
            .filter_map(|(st, j)| Link::parse(&st.as_ref().map_or(j.clone(), |st| format!("{st}/{j}"))).ok())
            .collect();
        if viking::stack::check_name(&stack).is_err() || viking::stack::check_name(&own).is_err() || links.is_empty() {
            return Ok(());
        }
        let mut text = format!("{own}:\n  links:\n");
        for l in &links {
            text.push_str(&format!("    - \"{l}\"\n"));
        }
        // Same-stack link targets must exist: give each a job.
        for l in &links {
            if l.stack.as_deref().unwrap_or(&stack) == stack && l.job != own {
                text.push_str(&format!("{}:\n  ports: [80]\n", l.job));
            }
        }
        if let Ok(s) = Stack::from_text(Path::new("p.yml"), &text, &stack) {
            ACCEPTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let job = s.job(&own).unwrap();
            let prefixes: Vec<String> = job.links.iter().map(|l| l.env_prefix(&stack)).collect();
            for p in &prefixes {
                prop_assert!(p.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'), "{p}");
            }
            let mut uniq = prefixes.clone();
            uniq.sort();
            uniq.dedup();
            prop_assert_eq!(uniq.len(), prefixes.len(), "{:?}", prefixes);
        }
    }
}
