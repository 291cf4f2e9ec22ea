//! The Kubernetes client, from `--kubeconfig` / `--master` or the in-cluster configuration.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use tracing::info;

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The kubeconfig file could not be read or used.
    #[error("{what} kubeconfig {path}: {source}")]
    Kubeconfig {
        /// Reading or loading.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// `--master` is not a URL.
    #[error("--master {0:?} is not a URL")]
    Master(String),
    /// Neither a kubeconfig, `--master` nor the in-cluster configuration is there.
    #[error("no --kubeconfig, --master or in-cluster configuration: {0}")]
    Infer(#[source] kube::config::InferConfigError),
    /// The API server's URL is neither http nor https.
    #[error("API server URL {0} must be http or https")]
    Scheme(String),
    /// The client could not be created from the configuration.
    #[error("creating the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// A client from `kubeconfig` (with `master` overriding its server), from `master` alone, or
/// from the in-cluster (or default) configuration, as kube-proxy's `--kubeconfig` and
/// `--master` do.
pub async fn connect(
    kubeconfig: Option<&Path>,
    master: Option<&str>,
) -> Result<kube::Client, ClientError> {
    let parse_master = |m: &str| m.parse().map_err(|_| ClientError::Master(m.to_owned()));
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| ClientError::Kubeconfig {
                what: "reading",
                path: path.display().to_string(),
                source,
            })?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| ClientError::Kubeconfig {
                    what: "loading",
                    path: path.display().to_string(),
                    source,
                })?
        }
        None => match master {
            Some(m) => kube::Config::new(parse_master(m)?),
            None => kube::Config::infer().await.map_err(ClientError::Infer)?,
        },
    };
    if let (Some(_), Some(m)) = (kubeconfig, master) {
        config.cluster_url = parse_master(m)?;
    }
    if config.cluster_url.scheme_str() != Some("https")
        && config.cluster_url.scheme_str() != Some("http")
    {
        return Err(ClientError::Scheme(config.cluster_url.to_string()));
    }
    info!(server = %config.cluster_url, "using the Kubernetes API server");
    kube::Client::try_from(config).map_err(ClientError::Client)
}
