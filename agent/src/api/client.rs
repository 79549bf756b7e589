//! The CLI's side of the API.
use serde::{de::DeserializeOwned, Serialize};

use std::path::Path;

use super::{tls::TlsError, ApiErrorBody};

/// An error and its causes, for a person: a TLS failure is two or three causes down.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the Viking API at {url}: {detail} (is `viking agent` running? --server, \
         --api-ca)"
    )]
    Unreachable { url: String, detail: String },
    #[error("{status}: {message}")]
    Refused { status: u16, message: String },
    #[error("unexpected answer from {url}: {source}")]
    Bad { url: String, source: reqwest::Error },
    /// The request could not be made at all (a header it cannot carry, a bad URL): nothing
    /// was sent.
    #[error("cannot make a request to {url}: {source} (a bad --server, or a token a header cannot carry?)")]
    Request { url: String, source: reqwest::Error },
}

pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// `server` is `HOST:PORT` or a full `http://` URL.
    pub fn new(server: &str, token: String) -> Self {
        let base = if server.starts_with("http://") || server.starts_with("https://") {
            server.trim_end_matches('/').to_owned()
        } else {
            format!("http://{server}")
        };
        Self { base, token, http: reqwest::Client::new() }
    }

    /// Like `new`, verifying the server with the CA certificates in `ca` (`--api-ca`): then
    /// `HOST:PORT` means `https://HOST:PORT`. An `https://` server needs a CA.
    pub fn with_ca(server: &str, token: String, ca: Option<&Path>) -> Result<Self, TlsError> {
        let mut c = Self::new(server, token);
        if ca.is_some() && !server.starts_with("http://") {
            c.base = c.base.replacen("http://", "https://", 1);
        }
        if c.base.starts_with("https://") && ca.is_none() {
            return Err(TlsError::Client(format!(
                "{} needs --api-ca: the CA certificate that signed the agent's (VIKING_API_CA)",
                c.base
            )));
        }
        c.http = super::tls::client(ca)?;
        Ok(c)
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<Option<T>, ClientError> {
        let res = req.bearer_auth(&self.token).send().await.map_err(|e| {
            if e.is_builder() {
                ClientError::Request { url: url.to_owned(), source: e }
            } else {
                ClientError::Unreachable { url: url.to_owned(), detail: chain(&e) }
            }
        })?;
        let status = res.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if !status.is_success() {
            let message = match res.json::<ApiErrorBody>().await {
                Ok(b) => b.error,
                Err(_) => status.canonical_reason().unwrap_or("error").to_owned(),
            };
            return Err(ClientError::Refused { status: status.as_u16(), message });
        }
        res.json::<T>()
            .await
            .map(Some)
            .map_err(|source| ClientError::Bad { url: url.to_owned(), source })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.get(&url), &url).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Option<T>, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.post(&url).json(body), &url).await
    }

    /// `POST path?query` asking to switch the connection to `protocol`; the switched
    /// connection.
    pub async fn upgrade<Q: Serialize>(
        &self,
        path: &str,
        query: &Q,
        protocol: &str,
    ) -> Result<reqwest::Upgraded, ClientError> {
        let url = format!("{}{path}", self.base);
        let res = self
            .http
            .post(&url)
            .query(query)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, protocol)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable { url: url.clone(), detail: chain(&e) })?;
        let status = res.status();
        if status != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            let message = match res.json::<ApiErrorBody>().await {
                Ok(b) => b.error,
                Err(_) => status.canonical_reason().unwrap_or("error").to_owned(),
            };
            return Err(ClientError::Refused { status: status.as_u16(), message });
        }
        res.upgrade().await.map_err(|source| ClientError::Bad { url, source })
    }

    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        let url = format!("{}{path}", self.base);
        self.send::<serde_json::Value>(self.http.delete(&url), &url).await.map(|_| ())
    }
}
