//! Where data lives: local paths and object-store URLs (`s3://bucket/prefix`).
//!
//! Every Sluice process resolves a URL to a store through [`ObjectStores`],
//! the object-store registry of its sessions. Credentials and the endpoint
//! come from the session's `s3.*` options (which travel with each job to the
//! executors that run it) or the standard `AWS_*` environment variables of
//! the process. The client turns its own `AWS_*` variables into `s3.*`
//! settings ([`s3_settings_from_env`]) so that executors started without them
//! reach the same store.
//!
//! Stores are cached per bucket and configuration: Ballista's registry builds
//! a new S3 client (and connection pool) for every lookup, which DataFusion
//! does per scan and per written file.
//!
//! Retries are bounded ([`S3_RETRY_TIMEOUT`]): with object_store's default a
//! request to a stopped server is retried for three minutes, and the task
//! holding it stalls its job for as long; a backfill retries the whole chunk
//! instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ballista_core::object_store::S3Options;
use datafusion::config::ExtensionOptions;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::object_store::aws::AmazonS3Builder;
use datafusion::object_store::local::LocalFileSystem;
use datafusion::object_store::path::Path as StorePath;
use datafusion::object_store::{ObjectMeta, ObjectStore, ObjectStoreExt as _, RetryConfig};
use futures::TryStreamExt as _;
use url::Url;

/// How long one object-store request is retried before it fails.
pub const S3_RETRY_TIMEOUT: Duration = Duration::from_secs(20);

/// The `AWS_*` environment variables Sluice forwards, and the `s3.*` option
/// each one sets.
const AWS_ENV: [(&str, &str); 7] = [
    ("AWS_ACCESS_KEY_ID", "s3.access_key_id"),
    ("AWS_SECRET_ACCESS_KEY", "s3.secret_access_key"),
    ("AWS_SESSION_TOKEN", "s3.session_token"),
    ("AWS_REGION", "s3.region"),
    ("AWS_DEFAULT_REGION", "s3.region"),
    ("AWS_ENDPOINT_URL", "s3.endpoint"),
    ("AWS_ALLOW_HTTP", "s3.allow_http"),
];

/// `s3.*` settings from this process's `AWS_*` variables (the first of
/// `AWS_REGION` / `AWS_DEFAULT_REGION` wins).
pub fn s3_settings_from_env() -> Vec<(String, String)> {
    s3_settings_from(&std::env::vars().collect::<Vec<_>>())
}

/// `s3.*` settings from `AWS_*` variables given as (name, value).
pub fn s3_settings_from(vars: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (var, key) in AWS_ENV {
        if out.iter().any(|(k, _)| k == key) {
            continue;
        }
        if let Some((_, value)) = vars.iter().find(|(n, v)| n == var && !v.is_empty()) {
            out.push((key.to_string(), value.clone()));
        }
    }
    out
}

/// Whether a setting's value is a secret: never logged, never shown to a
/// client that did not set it.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.ends_with("secret_access_key") || key.ends_with("session_token")
}

/// `location` is a URL (`scheme://…`), not a local path.
pub fn is_url(location: &str) -> bool {
    location.contains("://")
}

/// `rel` resolved against `base` (a folder path or URL): URLs and absolute
/// paths stand alone.
pub fn resolve(base: &str, rel: &str) -> String {
    if rel.is_empty() {
        return base.to_string();
    }
    if is_url(rel) || std::path::Path::new(rel).is_absolute() {
        return rel.to_string();
    }
    if is_url(base) {
        format!("{}/{}", base.trim_end_matches('/'), rel.trim_start_matches("./"))
    } else {
        std::path::Path::new(base).join(rel).to_string_lossy().into_owned()
    }
}

/// The URL of a folder (a local path becomes `file:///…`), with a trailing `/`.
///
/// # Errors
/// A plan error naming `location` when it is neither a URL nor an absolute path.
pub fn folder_url(location: &str) -> DfResult<Url> {
    let url = if is_url(location) {
        Url::parse(location)
            .map_err(|e| DataFusionError::Plan(format!("'{location}' is not a valid URL: {e}")))?
    } else {
        let abs = std::path::absolute(location)
            .map_err(|e| DataFusionError::Plan(format!("'{location}' is not a valid path: {e}")))?;
        Url::from_directory_path(&abs).map_err(|()| {
            DataFusionError::Plan(format!("'{location}': expected an absolute path"))
        })?
    };
    let mut url = url;
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    Ok(url)
}

/// The store-relative path of `url` (no leading `/`).
pub fn store_path(url: &Url) -> StorePath {
    StorePath::from_url_path(url.path()).unwrap_or_else(|_| StorePath::from(url.path()))
}

/// The store's root URL (`s3://bucket/`, `file:///`), as DataFusion's
/// `ObjectStoreUrl` wants it.
pub fn store_root(url: &Url) -> String {
    match url.scheme() {
        "file" => "file:///".to_string(),
        scheme => format!("{scheme}://{}/", url.host_str().unwrap_or_default()),
    }
}

/// Every object under `prefix` (recursively).
///
/// # Errors
/// The store's error.
pub async fn list(store: &dyn ObjectStore, prefix: &StorePath) -> DfResult<Vec<ObjectMeta>> {
    match store.list(Some(prefix)).try_collect::<Vec<_>>().await {
        Ok(v) => Ok(v),
        Err(datafusion::object_store::Error::NotFound { .. }) => Ok(vec![]),
        Err(e) => Err(e.into()),
    }
}

/// Deletes every object under `prefix`.
///
/// # Errors
/// The store's error (objects already gone are not errors).
pub async fn delete_prefix(store: &dyn ObjectStore, prefix: &StorePath) -> DfResult<usize> {
    let objects = list(store, prefix).await?;
    let n = objects.len();
    for o in objects {
        match store.delete(&o.location).await {
            Ok(()) | Err(datafusion::object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Local folders stay behind as empty directories: remove them too.
    if let Some(dir) = local_dir(store, prefix) {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(n)
}

fn local_dir(store: &dyn ObjectStore, prefix: &StorePath) -> Option<std::path::PathBuf> {
    store
        .to_string()
        .starts_with("LocalFileSystem")
        .then(|| std::path::PathBuf::from(format!("/{}", prefix.as_ref())))
}

/// The object-store registry of every Sluice session: local files, `s3://`
/// (configured by `s3.*` or `AWS_*`) and `http(s)://`, with S3 stores cached
/// by bucket and configuration.
#[derive(Debug)]
pub struct ObjectStores {
    s3: S3Options,
    local: Arc<LocalFileSystem>,
    cache: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl ObjectStores {
    pub fn new(s3: S3Options) -> Self {
        Self { s3, local: Arc::new(LocalFileSystem::new()), cache: Mutex::default() }
    }

    /// The `s3.*` options as (key, value), secrets included.
    fn s3_entries(&self) -> Vec<(String, String)> {
        self.s3
            .entries()
            .into_iter()
            .filter_map(|e| e.value.map(|v| (e.key.trim_start_matches("s3.").to_string(), v)))
            .collect()
    }

    fn build_s3(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        let bucket = url
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| DataFusionError::Plan(format!("{url}: expected s3://BUCKET/PREFIX")))?;
        let options: HashMap<String, String> = self.s3_entries().into_iter().collect();
        let mut builder =
            AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(RetryConfig {
                retry_timeout: S3_RETRY_TIMEOUT,
                max_retries: 4,
                ..Default::default()
            });
        if let (Some(id), Some(secret)) =
            (options.get("access_key_id"), options.get("secret_access_key"))
        {
            builder = builder.with_access_key_id(id).with_secret_access_key(secret);
            if let Some(token) = options.get("session_token") {
                builder = builder.with_token(token);
            }
        }
        if let Some(region) = options.get("region") {
            builder = builder.with_region(region);
        }
        let allow_http = options.get("allow_http").map(|v| v == "true");
        if let Some(endpoint) = options.get("endpoint") {
            if endpoint.starts_with("http://") && allow_http == Some(false) {
                return Err(DataFusionError::Configuration(format!(
                    "s3.endpoint {endpoint} is plain http while s3.allow_http is false; set \
                     s3.allow_http=true (or AWS_ALLOW_HTTP=true) or use https"
                )));
            }
            builder = builder.with_endpoint(endpoint);
            if endpoint.starts_with("http://") && allow_http.is_none() {
                builder = builder.with_allow_http(true);
            }
        }
        if let Some(allow) = allow_http {
            builder = builder.with_allow_http(allow);
        }
        let store = builder.build().map_err(|e| {
            DataFusionError::Configuration(format!(
                "object store for s3://{bucket}/: {e}; set AWS_ACCESS_KEY_ID, \
                 AWS_SECRET_ACCESS_KEY, AWS_REGION and AWS_ENDPOINT_URL (or --set s3.*)"
            ))
        })?;
        Ok(Arc::new(store))
    }
}

impl ObjectStoreRegistry for ObjectStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        let key = format!("registered:{}", store_root(url));
        self.cache.lock().ok()?.insert(key, store)
    }

    fn deregister_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        let key = format!("registered:{}", store_root(url));
        self.cache
            .lock()
            .map_err(|_| DataFusionError::Internal("object store cache poisoned".into()))?
            .remove(&key)
            .ok_or_else(|| DataFusionError::Plan(format!("no object store registered for {url}")))
    }

    fn get_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        let registered = format!("registered:{}", store_root(url));
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| DataFusionError::Internal("object store cache poisoned".into()))?;
        if let Some(s) = cache.get(&registered) {
            return Ok(Arc::clone(s));
        }
        match url.scheme() {
            "" | "file" => Ok(self.local.clone()),
            "s3" | "s3a" => {
                let fingerprint: Vec<String> =
                    self.s3_entries().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
                let key = format!("{}\u{1}{}", store_root(url), fingerprint.join("\u{1}"));
                if let Some(s) = cache.get(&key) {
                    return Ok(Arc::clone(s));
                }
                let store = self.build_s3(url)?;
                cache.insert(key, Arc::clone(&store));
                Ok(store)
            }
            "http" | "https" => {
                let store = datafusion::object_store::http::HttpBuilder::new()
                    .with_url(url.origin().ascii_serialization())
                    .build()?;
                Ok(Arc::new(store))
            }
            other => Err(DataFusionError::Plan(format!(
                "{url}: unsupported storage scheme '{other}'; expected a local path, file://, \
                 s3:// or http(s)://"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_paths_and_urls() {
        assert_eq!(resolve("/spec", "data"), "/spec/data");
        assert_eq!(resolve("/spec", "/abs"), "/abs");
        assert_eq!(resolve("/spec", "s3://b/p"), "s3://b/p");
        assert_eq!(resolve("s3://b/p/", "users"), "s3://b/p/users");
        assert_eq!(resolve("s3://b/p", "./users"), "s3://b/p/users");
        let u = folder_url("s3://b/p").expect("url");
        assert_eq!(u.as_str(), "s3://b/p/");
        assert_eq!(store_path(&u).as_ref(), "p");
        assert_eq!(store_root(&u), "s3://b/");
        let l = folder_url("/tmp/x y").expect("path");
        assert_eq!(l.as_str(), "file:///tmp/x%20y/");
        assert_eq!(store_path(&l).as_ref(), "tmp/x y");
        assert!(is_secret("s3.secret_access_key") && !is_secret("s3.access_key_id"));
    }
}
