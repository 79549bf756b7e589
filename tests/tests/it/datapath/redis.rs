//! A real client and server: redis-cli talks to redis-server through the ambassador port.
use std::{process::Command, thread::sleep, time::Duration};

use viking::datapath::{Algo, Proto};
use viking_tests::{
    guards::ChildGuard,
    topo::{Topo, SERVER_IPS},
};

#[test]
fn redis_cli_reaches_redis_server_through_the_ambassador() {
    let mut t = Topo::new();
    let dir = std::env::temp_dir().join(viking_tests::unique("vkredis"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = t.server.command("redis-server", None);
    cmd.args([
        "--bind",
        SERVER_IPS[0],
        "--port",
        "6379",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
    ])
    .arg("--dir")
    .arg(&dir)
    .stdout(std::process::Stdio::null());
    let _redis = ChildGuard::spawn(cmd);
    t.service(
        "127.0.0.1:7500",
        Proto::Tcp,
        Algo::Random,
        &[format!("{}:6379", SERVER_IPS[0]).parse().unwrap()],
    );

    let cli = |args: &[&str]| -> String {
        let mut c: Command = t.client.command("redis-cli", Some(&t.cgroup));
        c.args(["-h", "127.0.0.1", "-p", "7500"]).args(args);
        let out = c.output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let mut pong = String::new();
    for _ in 0..100 {
        pong = cli(&["ping"]);
        if pong == "PONG" {
            break;
        }
        sleep(Duration::from_millis(50));
    }
    assert_eq!(pong, "PONG");
    assert_eq!(cli(&["set", "viking", "through-the-kernel"]), "OK");
    assert_eq!(cli(&["get", "viking"]), "through-the-kernel");
    let _ = std::fs::remove_dir_all(&dir);
}
