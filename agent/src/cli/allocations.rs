//! `viking allocations`: ambassador ports, stack subnets and container addresses.
use serde::Serialize;
use viking::cluster::{
    addresses::{gateway, AddressTable},
    ports::PortTable,
    Addresses, AmbassadorPorts, DEFAULT_PORT_RANGE,
};

use super::{
    out::{out, outln},
    store_args::StoreArgs,
    table::render,
};

#[derive(Serialize)]
struct Allocations {
    ports: PortTable,
    #[serde(flatten)]
    addresses: AddressTable,
}

pub async fn list(args: &StoreArgs, json: bool) -> anyhow::Result<()> {
    let store = args.open_for_reading().await?;
    // NB: the range and pool only matter when allocating; listing shows what is stored.
    let ports = AmbassadorPorts::new(store.clone(), DEFAULT_PORT_RANGE).list().await?;
    let addresses =
        Addresses::new(store, viking::cluster::addresses::default_pool()).list().await?;
    let all = Allocations { ports, addresses };
    if json {
        outln!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        out!("{}", format_tables(&all));
    }
    Ok(())
}

fn format_tables(a: &Allocations) -> String {
    let next = a.ports.next.map_or("-".into(), |n| n.to_string());
    let mut out = format!("Ambassador ports (next: {next})\n");
    let rows: Vec<Vec<String>> = a
        .ports
        .ports
        .iter()
        .map(|p| vec![p.service.clone(), p.port.to_string(), p.ambassador_port.to_string()])
        .collect();
    out.push_str(&render(&["SERVICE", "PORT", "AMBASSADOR_PORT"], &rows));
    out.push_str("\nSubnets\n");
    let rows: Vec<Vec<String>> = a
        .addresses
        .subnets
        .iter()
        .map(|s| {
            vec![
                s.stack.clone(),
                s.subnet.to_string(),
                gateway(s.subnet).to_string(),
                format!("{}/{}", s.used, s.capacity),
            ]
        })
        .collect();
    out.push_str(&render(&["STACK", "SUBNET", "GATEWAY", "USED"], &rows));
    out.push_str("\nAddresses\n");
    let rows: Vec<Vec<String>> = a
        .addresses
        .ips
        .iter()
        .map(|i| vec![i.stack.clone(), i.ip.to_string(), i.owner.clone()])
        .collect();
    out.push_str(&render(&["STACK", "ADDRESS", "OWNER"], &rows));
    out
}
