//! Images of fig `build:` jobs, built where they run: the docker runtime, about to start an
//! instance whose spec names a build context, builds its image from the context stored with
//! the deploy (`deploy::context`) unless dockerd has it already. The tag carries the context's
//! hash, so a changed context is a new image and an unchanged one is built once per host.
use std::{future::Future, pin::Pin};

use bollard::{query_parameters::BuildImageOptionsBuilder, Docker};
use futures::StreamExt as _;

use super::{Result, RuntimeError};

/// Where a build context is read from (the store, in the agent).
pub trait ContextSource: Send + Sync {
    fn fetch(
        &self,
        hash: &str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + '_>>;
}

impl<S: crate::store::Store> ContextSource for S {
    fn fetch(
        &self,
        hash: &str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + '_>> {
        let hash = hash.to_owned();
        Box::pin(async move {
            crate::deploy::context::fetch(self, &hash).await.map_err(|e| e.to_string())
        })
    }
}

/// Makes sure dockerd has `image`, building it from the context `hash` when it does not.
pub async fn ensure(
    docker: &Docker,
    image: &str,
    hash: &str,
    source: Option<&dyn ContextSource>,
    instance: &str,
) -> Result<()> {
    if docker.inspect_image(image).await.is_ok() {
        return Ok(());
    }
    let Some(source) = source else {
        return Err(RuntimeError::instance(
            instance,
            "a build: job, and this agent has no store to read its context from",
        ));
    };
    let tar = source
        .fetch(hash)
        .await
        .map_err(|e| RuntimeError::instance(instance, format!("reading its build context: {e}")))?;
    tracing::info!(instance, image, context = %hash.get(..12).unwrap_or(hash), bytes = tar.len(), "building");
    let opts = BuildImageOptionsBuilder::default().t(image).rm(true).forcerm(true).build();
    let mut out = docker.build_image(opts, None, Some(bollard::body_full(tar.into())));
    let mut tail = String::new();
    while let Some(item) = out.next().await {
        match item {
            Ok(info) => {
                if let Some(e) = info.error_detail.and_then(|d| d.message) {
                    return Err(RuntimeError::instance(instance, format!("building {image}: {e}")));
                }
                if let Some(line) = info.stream {
                    tail = line.trim().to_owned();
                    tracing::debug!(instance, "{tail}");
                }
            }
            Err(e) => {
                return Err(RuntimeError::instance(
                    instance,
                    format!("building {image}: {e} ({tail})"),
                ))
            }
        }
    }
    docker.inspect_image(image).await.map_err(|e| {
        RuntimeError::instance(instance, format!("built {image}, but it is not there: {e}"))
    })?;
    tracing::info!(instance, image, "built");
    Ok(())
}
