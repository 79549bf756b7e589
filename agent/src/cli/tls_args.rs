//! The agent's API TLS flags (docs/api.md "TLS").
use std::path::PathBuf;

#[derive(clap::Args, Clone)]
pub struct AgentTlsArgs {
    /// The API's certificate chain (PEM); with --api-key the API speaks TLS only.
    #[arg(long, env = "VIKING_API_CERT", requires = "api_key")]
    pub api_cert: Option<PathBuf>,
    /// The API certificate's private key (PEM).
    #[arg(long, env = "VIKING_API_KEY", requires = "api_cert")]
    pub api_key: Option<PathBuf>,
    /// The CA that signed the other agents' API certificates: writes forwarded to a leader
    /// that speaks TLS are verified with it.
    #[arg(long, env = "VIKING_API_CA")]
    pub api_ca: Option<PathBuf>,
    /// Serve the API without TLS on a non-loopback --api address (the token crosses the
    /// network in clear). Without TLS the API listens on loopback only otherwise.
    #[arg(long, env = "VIKING_API_INSECURE")]
    pub api_insecure: bool,
}

impl AgentTlsArgs {
    pub fn cert_and_key(&self) -> Option<(PathBuf, PathBuf)> {
        self.api_cert.clone().zip(self.api_key.clone())
    }
}
