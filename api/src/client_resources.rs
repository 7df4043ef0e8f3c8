//! Typed client methods of the resources routes (`ciliumctl apply/delete/get`).

use http::Method;

use crate::client::{Client, ClientError, encode_segment};
use crate::models::ResourceChange;

impl Client {
    async fn post_text(&self, path: &str, text: &str) -> Result<Vec<ResourceChange>, ClientError> {
        let bytes = self
            .call_raw(Method::POST, path, Some(text.as_bytes().to_vec()))
            .await?;
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            path: path.to_string(),
            source,
        })
    }

    /// `POST /v1/apply`: apply every document of a YAML or JSON file, all or nothing.
    pub async fn apply(&self, text: &str) -> Result<Vec<ResourceChange>, ClientError> {
        self.post_text("/v1/apply", text).await
    }

    /// `POST /v1/apply?wait=true&timeout=SECS`: apply, then return only once every applied
    /// object is in the datapath (503 naming the stage that has not caught up otherwise; the
    /// objects are applied either way).
    pub async fn apply_wait(
        &self,
        text: &str,
        timeout_secs: f64,
    ) -> Result<Vec<ResourceChange>, ClientError> {
        self.post_text(&format!("/v1/apply?wait=true&timeout={timeout_secs}"), text)
            .await
    }

    /// `POST /v1/delete`: delete the objects a YAML or JSON file names.
    pub async fn delete_objects(&self, text: &str) -> Result<Vec<ResourceChange>, ClientError> {
        self.post_text("/v1/delete", text).await
    }

    /// `GET /v1/resources/{kind}?namespace=&name=`: stored objects of a kind.
    pub async fn resources(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<serde_json::Value>, ClientError> {
        let mut path = format!("/v1/resources/{}", encode_segment(kind));
        let mut sep = '?';
        for (k, v) in [("namespace", namespace), ("name", name)] {
            if let Some(v) = v {
                path.push(sep);
                path.push_str(&format!("{k}={}", encode_segment(v)));
                sep = '&';
            }
        }
        self.get(&path).await
    }
}
