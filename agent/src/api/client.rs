//! The CLI's side of the API.
use serde::{de::DeserializeOwned, Serialize};

use super::ApiErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the Viking API at {url}: {source} (is `viking agent` running? --server)"
    )]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{status}: {message}")]
    Refused { status: u16, message: String },
    #[error("unexpected answer from {url}: {source}")]
    Bad { url: String, source: reqwest::Error },
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

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<Option<T>, ClientError> {
        let res = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| ClientError::Unreachable { url: url.to_owned(), source })?;
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
            .map_err(|source| ClientError::Unreachable { url: url.clone(), source })?;
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
