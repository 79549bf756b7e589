//! `viking dig NAME --stack S`: asks the host's DNS responder as an instance of S would (its
//! search path and ndots, `names::zone::Zone::candidates`), and prints each name tried.
use std::{
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    str::FromStr as _,
    time::Duration,
};

use anyhow::{bail, Context as _};
use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, RecordType},
};
use serde::Serialize;
use viking::names::Zone;

/// One name tried, and what the responder said.
#[derive(Debug, Serialize)]
pub struct Tried {
    pub name: String,
    pub status: String,
    pub answers: Vec<String>,
}

fn ask(sock: &UdpSocket, server: SocketAddr, name: &str, t: RecordType) -> anyhow::Result<Tried> {
    let mut m = Message::new();
    let id: u16 = rand::random();
    m.set_id(id).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).with_context(|| format!("{name:?}"))?, t));
    let bytes = m.to_vec()?;
    let mut buf = [0u8; 4096];
    for _ in 0..3 {
        sock.send_to(&bytes, server).with_context(|| format!("asking {server}"))?;
        loop {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == server => {
                    let r = Message::from_vec(&buf[..n])?;
                    if r.id() != id {
                        continue;
                    }
                    return Ok(Tried {
                        name: name.to_owned(),
                        status: r.response_code().to_str().to_owned(),
                        answers: r
                            .answers()
                            .iter()
                            .map(|a| format!("{} {}", a.record_type(), a.data()))
                            .collect(),
                    });
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    }
    bail!("no answer from the DNS responder at {server} (is the agent running with --dns-listen {server}?)")
}

#[allow(clippy::too_many_arguments)]
pub async fn dig(
    name: &str,
    stack: Option<&str>,
    qtype: &str,
    server: SocketAddr,
    domain: &str,
    host_netns: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let t = RecordType::from_str(&qtype.to_uppercase())
        .map_err(|_| anyhow::anyhow!("--type {qtype:?}: not a record type (A, AAAA, SRV, ...)"))?;
    let zone = Zone::new(domain).map_err(|e| anyhow::anyhow!("--domain: {e}"))?;
    let candidates = zone.candidates(name, stack);
    let tried =
        viking::netns::run_in(host_netns.as_deref(), move || -> anyhow::Result<Vec<Tried>> {
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            sock.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut out = Vec::new();
            for c in candidates {
                let r = ask(&sock, server, &c, t)?;
                let found = r.status == ResponseCode::NoError.to_str() && !r.answers.is_empty();
                out.push(r);
                if found {
                    break;
                }
            }
            Ok(out)
        })
        .await??;
    let found = tried.last().filter(|r| !r.answers.is_empty());
    if json {
        println!("{}", serde_json::to_string_pretty(&tried)?);
    } else {
        let rows: Vec<Vec<String>> = tried
            .iter()
            .map(|r| vec![r.name.clone(), r.status.clone(), r.answers.join(", ")])
            .collect();
        print!("{}", super::table::render(&["NAME", "STATUS", "ANSWERS"], &rows));
    }
    match found {
        Some(_) => Ok(()),
        None => bail!(
            "{name}: no {t} record{}",
            stack.map(|s| format!(" from stack {s}")).unwrap_or_default()
        ),
    }
}
