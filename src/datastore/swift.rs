//! A small OpenStack Swift client: the calls Trove's backup storage makes, with a pre-authenticated
//! storage URL and token (as Trove's `swiftclient.Connection(preauthurl, preauthtoken)`).

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};

use crate::datastore::{Error, Result};

/// One tenant's Swift account: its storage URL (`.../v1/AUTH_<project>`) and a token.
pub struct Swift {
    http: reqwest::Client,
    url: url::Url,
    token: SecretString,
}

/// A response's status and headers (names lower-case).
pub struct Head {
    pub headers: HeaderMap,
}

impl Head {
    /// The ETag without Swift's quotes (a large object's comes quoted).
    pub fn etag(&self) -> String {
        self.headers.get("etag").and_then(|v| v.to_str().ok()).unwrap_or_default().trim_matches('"').to_owned()
    }

    pub fn content_length(&self) -> Option<u64> {
        self.headers.get("content-length")?.to_str().ok()?.parse().ok()
    }
}

fn storage_error(op: &str, e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("swift {op}: {e}"))
}

impl Swift {
    /// `insecure` skips TLS verification (Trove's `swift_api_insecure`).
    pub fn new(storage_url: &str, token: SecretString, insecure: bool) -> Result<Swift> {
        let url = url::Url::parse(storage_url.trim_end_matches('/')).map_err(|e| storage_error("URL", format!("'{storage_url}' is not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(storage_error("URL", format!("'{storage_url}' is not an http(s) storage URL")));
        }
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(insecure)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| storage_error("client", e))?;
        Ok(Swift { http, url, token })
    }

    /// The storage URL (the prefix of a backup's location).
    pub fn url(&self) -> &str {
        self.url.as_str().trim_end_matches('/')
    }

    fn object_url(&self, container: &str, object: Option<&str>) -> url::Url {
        let mut url = self.url.clone();
        {
            let mut segs = url.path_segments_mut().expect("checked in new");
            segs.pop_if_empty().push(container);
            if let Some(o) = object {
                segs.push(o);
            }
        }
        url
    }

    fn request(&self, method: Method, url: url::Url) -> reqwest::RequestBuilder {
        let mut token = HeaderValue::from_str(self.token.expose_secret()).unwrap_or_else(|_| HeaderValue::from_static(""));
        token.set_sensitive(true);
        self.http.request(method, url).header("X-Auth-Token", token)
    }

    /// Sends, and maps a non-success status to an error naming the operation (never the token).
    async fn send(&self, op: &str, req: reqwest::RequestBuilder, ok_missing: bool) -> Result<Option<reqwest::Response>> {
        let resp = req.send().await.map_err(|e| storage_error(op, without_url(e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(Some(resp));
        }
        if ok_missing && status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = resp.text().await.unwrap_or_default();
        let body: String = body.chars().take(200).collect();
        Err(storage_error(op, format!("HTTP {status}{}", if body.trim().is_empty() { String::new() } else { format!(": {}", body.trim()) })))
    }

    /// Creates the container if it does not exist (PUT is idempotent in Swift).
    pub async fn put_container(&self, container: &str) -> Result<()> {
        let req = self.request(Method::PUT, self.object_url(container, None)).header("Content-Length", "0");
        self.send(&format!("PUT container {container}"), req, false).await.map(|_| ())
    }

    /// Uploads an object from a body; returns Swift's ETag (the MD5 of what it stored).
    pub async fn put_object(&self, container: &str, name: &str, body: reqwest::Body, headers: HeaderMap) -> Result<String> {
        let req = self.request(Method::PUT, self.object_url(container, Some(name))).headers(headers).body(body);
        let resp = self.send(&format!("PUT {container}/{name}"), req, false).await?.expect("not ok_missing");
        Ok(Head { headers: resp.headers().clone() }.etag())
    }

    /// Server-side copy of `<container>/<from>` to `<container>/<to>` with `headers` (metadata).
    pub async fn copy_object(&self, container: &str, from: &str, to: &str, mut headers: HeaderMap) -> Result<()> {
        let source = format!("{container}/{from}");
        headers.insert(HeaderName::from_static("x-copy-from"), HeaderValue::from_str(&source).map_err(|e| storage_error("copy", e))?);
        headers.insert(HeaderName::from_static("content-length"), HeaderValue::from_static("0"));
        let req = self.request(Method::PUT, self.object_url(container, Some(to))).headers(headers);
        self.send(&format!("PUT {container}/{to} (copy of {from})"), req, false).await.map(|_| ())
    }

    /// Writes a static large object manifest (`?multipart-manifest=put`).
    pub async fn put_manifest(&self, container: &str, name: &str, manifest: String, headers: HeaderMap) -> Result<()> {
        let mut url = self.object_url(container, Some(name));
        url.set_query(Some("multipart-manifest=put"));
        let req = self.request(Method::PUT, url).headers(headers).body(manifest);
        self.send(&format!("PUT manifest {container}/{name}"), req, false).await.map(|_| ())
    }

    pub async fn head_object(&self, container: &str, name: &str) -> Result<Option<Head>> {
        let req = self.request(Method::HEAD, self.object_url(container, Some(name)));
        Ok(self.send(&format!("HEAD {container}/{name}"), req, true).await?.map(|r| Head { headers: r.headers().clone() }))
    }

    /// Opens an object for streaming (a large object's segments follow one another).
    pub async fn get_object(&self, container: &str, name: &str) -> Result<reqwest::Response> {
        let req = self.request(Method::GET, self.object_url(container, Some(name)));
        match self.send(&format!("GET {container}/{name}"), req, true).await? {
            Some(resp) => Ok(resp),
            None => Err(Error::Storage(format!("swift GET {container}/{name}: the object does not exist"))),
        }
    }

    /// A small object's text; None when it (or its container) does not exist.
    pub async fn get_text(&self, container: &str, name: &str) -> Result<Option<String>> {
        let req = self.request(Method::GET, self.object_url(container, Some(name)));
        match self.send(&format!("GET {container}/{name}"), req, true).await? {
            Some(resp) => resp.text().await.map(Some).map_err(|e| storage_error(&format!("GET {container}/{name}"), without_url(e))),
            None => Ok(None),
        }
    }

    /// The names of the objects in `container` that start with `prefix` (every page); none when
    /// the container does not exist.
    pub async fn list_objects(&self, container: &str, prefix: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> = Vec::new();
        loop {
            let mut url = self.object_url(container, None);
            url.query_pairs_mut().append_pair("prefix", prefix).append_pair("marker", names.last().map(String::as_str).unwrap_or(""));
            let op = format!("GET container {container}");
            let Some(resp) = self.send(&op, self.request(Method::GET, url), true).await? else { return Ok(names) };
            let text = resp.text().await.map_err(|e| storage_error(&op, without_url(e)))?;
            let page: Vec<String> = text.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect();
            if page.is_empty() {
                return Ok(names);
            }
            names.extend(page);
        }
    }

    /// Deletes an object; a missing one is not an error. With `manifest`, a static large
    /// object's manifest and segments go together.
    pub async fn delete_object(&self, container: &str, name: &str, manifest: bool) -> Result<()> {
        let mut url = self.object_url(container, Some(name));
        if manifest {
            url.set_query(Some("multipart-manifest=delete"));
        }
        let req = self.request(Method::DELETE, url);
        self.send(&format!("DELETE {container}/{name}"), req, true).await.map(|_| ())
    }
}

/// reqwest's errors name the URL; ours name the operation instead (and stay short).
fn without_url(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

/// Splits a backup location `<storage url>/<container>/<object>` into container and object, as
/// Trove's `_explodeLocation` does (the storage URL itself comes with the request).
pub fn explode_location(location: &str) -> Option<(String, String)> {
    let mut parts = location.trim_end_matches('/').rsplitn(3, '/');
    let object = parts.next()?.to_owned();
    let container = parts.next()?.to_owned();
    parts.next()?;
    (!object.is_empty() && !container.is_empty()).then_some((container, object))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_split_like_trove() {
        assert_eq!(
            explode_location("http://swift:8080/v1/AUTH_p/database_backups/abc.gz.enc"),
            Some(("database_backups".into(), "abc.gz.enc".into()))
        );
        assert_eq!(explode_location("abc.gz"), None);
        assert_eq!(explode_location("/x/"), None);
    }

    #[test]
    fn object_urls_escape_names() {
        let s = Swift::new("http://127.0.0.1:1/v1/AUTH_t/", SecretString::from("t".to_owned()), false).unwrap();
        assert_eq!(s.url(), "http://127.0.0.1:1/v1/AUTH_t");
        assert_eq!(s.object_url("my backups", Some("a/b")).as_str(), "http://127.0.0.1:1/v1/AUTH_t/my%20backups/a%2Fb");
        assert!(Swift::new("file:///etc", SecretString::from("t".to_owned()), false).is_err());
    }
}
