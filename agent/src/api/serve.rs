//! Serving the router: plain HTTP, or TLS through rustls (axum-server).
use std::sync::Arc;

use axum::Router;

/// Serves `router` on `listener` until the task is aborted.
pub async fn serve(
    listener: std::net::TcpListener,
    router: Router,
    tls: Option<rustls::ServerConfig>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    match tls {
        None => axum::serve(tokio::net::TcpListener::from_std(listener)?, router).await,
        Some(config) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config));
            axum_server::from_tcp_rustls(listener, config)?.serve(router.into_make_service()).await
        }
    }
}
