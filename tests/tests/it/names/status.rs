//! A DNS responder that cannot start shows where an operator looks (`viking status`, the
//! metrics), and everything else on the host goes on.
use std::{net::UdpSocket, os::fd::AsFd as _};

use viking::{api::status::AgentStatus, metrics::NamesState};
use viking_tests::agent::AgentProc;

/// Binds UDP 0.0.0.0:53 inside the network namespace at `ns` (as a resolver of the host's
/// own would), so that the responder's address is taken there.
fn hold_port_53(ns: std::path::PathBuf) -> UdpSocket {
    std::thread::spawn(move || {
        let f = std::fs::File::open(&ns).unwrap();
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        UdpSocket::bind("0.0.0.0:53").unwrap()
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_responder_that_cannot_bind_shows_in_status_and_the_agent_goes_on() {
    let mut held = None;
    let agent = AgentProc::start_with_setup(None, &[], |a| {
        let ns = a.netns.as_ref().unwrap().path();
        held = Some(hold_port_53(ns));
    })
    .await;
    let api = agent.client();
    let mut status: Option<AgentStatus> = None;
    for _ in 0..100 {
        let s: AgentStatus = api.get("/v1/status").await.unwrap().unwrap();
        if s.ready {
            status = Some(s);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let s = status.expect("the agent is ready without its DNS responder");
    match &s.names {
        NamesState::Failed(why) => {
            assert!(why.contains("169.254.1.1:53"), "names the address: {why}");
        }
        other => panic!("names should have failed: {other:?}\n{}", agent.log()),
    }
    assert_eq!(s.datapath.programs_attached, s.datapath.programs, "{s:?}");
    let metrics = agent.http().get(agent.url("/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(text.lines().any(|l| l == "viking_names_up 0"), "{text}");
    drop(held);
}
