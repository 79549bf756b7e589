//! TLS for the API (rustls, ring): the agent's certificate and key (`--api-cert`,
//! `--api-key`), and the CA the CLI and the agents verify servers with (`--api-ca`).
//! Only the server is authenticated by TLS; the bearer token still authorises each request.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::ServerConfig;
use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: PathBuf, why: String },
    #[error("--api-cert {cert} and --api-key {key} do not make a TLS server: {source}")]
    Server { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("building the API client: {0}")]
    Client(String),
    #[error(
        "the API would listen on {addr} without TLS: the bearer token would cross the network \
         in clear. Give --api-cert and --api-key, listen on a loopback address, or pass \
         --api-insecure to do it anyway"
    )]
    Cleartext { addr: std::net::SocketAddr },
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |why: String| TlsError::File { path: path.to_owned(), why };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("reading PEM certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()));
    }
    Ok(certs)
}

/// The server side: the certificate chain and key of `--api-cert` / `--api-key`.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let chain = certs(cert)?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        path: key.to_owned(),
        why: format!("not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
    })?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
            .map_err(|source| TlsError::Server {
                cert: cert.to_owned(),
                key: key.to_owned(),
                source,
            })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// An HTTP client that trusts only the CA certificates in `ca` (no system roots: the API's
/// certificates come from the cluster's own CA); plain HTTP only when `ca` is None.
pub fn client(ca: Option<&Path>) -> Result<reqwest::Client, TlsError> {
    let mut b = reqwest::Client::builder().use_rustls_tls().tls_built_in_root_certs(false);
    if let Some(ca) = ca {
        for c in certs(ca)? {
            let cert = reqwest::Certificate::from_der(c.as_ref()).map_err(|e| TlsError::File {
                path: ca.to_owned(),
                why: format!("not a CA certificate: {e}"),
            })?;
            b = b.add_root_certificate(cert);
        }
    }
    b.build().map_err(|e| TlsError::Client(e.to_string()))
}

/// Refuses a cleartext API on anything but loopback unless the operator insists.
pub fn check_cleartext(addr: std::net::SocketAddr, insecure: bool) -> Result<(), TlsError> {
    let loopback = match addr.ip() {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    };
    if loopback || insecure {
        Ok(())
    } else {
        Err(TlsError::Cleartext { addr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleartext_only_on_loopback() {
        assert!(check_cleartext("127.0.0.1:7700".parse().unwrap(), false).is_ok());
        assert!(check_cleartext("127.0.3.4:7700".parse().unwrap(), false).is_ok());
        assert!(check_cleartext("[::1]:7700".parse().unwrap(), false).is_ok());
        let e = check_cleartext("0.0.0.0:7700".parse().unwrap(), false).unwrap_err();
        assert!(e.to_string().contains("--api-cert"), "{e}");
        assert!(check_cleartext("10.0.0.1:7700".parse().unwrap(), false).is_err());
        assert!(check_cleartext("10.0.0.1:7700".parse().unwrap(), true).is_ok());
    }

    #[test]
    fn bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("vk-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let e = server_config(&empty, &empty).unwrap_err().to_string();
        assert!(e.contains("empty.pem"), "{e}");
        let e = client(Some(&dir.join("missing.pem"))).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
