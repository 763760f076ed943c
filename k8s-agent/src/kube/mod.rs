//! A small Kubernetes API client: GET pods with a bearer token, over HTTPS (rustls, the
//! cluster's CA) or plain HTTP (tests, a local proxy). One connection per request: the
//! plugin makes one or two requests per pod sandbox and the node agent a list now and then.

pub mod model;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub use model::{Pod, PodList};

use crate::netconf::KubeConf;

/// Where the service account's credentials are mounted in a pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The largest response read (a node's pod list).
const MAX_BODY: usize = 64 << 20;

/// Why a request to the API failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The client could not be configured.
    #[error("Kubernetes API configuration: {0}")]
    Config(String),
    /// The server could not be reached or the exchange broke.
    #[error("Kubernetes API {url}: {reason}")]
    Transport {
        /// The request's URL.
        url: String,
        /// What broke.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("Kubernetes API {url}: {code} {reason}: {message}{hint}")]
    Status {
        /// The request's URL.
        url: String,
        /// The HTTP status.
        code: u16,
        /// The API's reason (NotFound, Forbidden, …).
        reason: String,
        /// The API's message.
        message: String,
        /// What the operator can do about it.
        hint: &'static str,
    },
    /// The answer was not the JSON expected.
    #[error("Kubernetes API {url}: cannot decode the response: {reason}")]
    Decode {
        /// The request's URL.
        url: String,
        /// What did not decode.
        reason: String,
    },
}

impl KubeError {
    /// Whether the object does not exist (404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, KubeError::Status { code: 404, .. })
    }
}

/// An API server endpoint with its credentials.
#[derive(Clone)]
pub struct Client {
    https: bool,
    host: String,
    port: u16,
    token: Token,
    tls: Option<tokio_rustls::TlsConnector>,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("https", &self.https)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Where the bearer token comes from.
#[derive(Clone)]
enum Token {
    None,
    Inline(String),
    /// Re-read on every request: projected service account tokens rotate.
    File(PathBuf),
}

impl Client {
    /// A client from the plugin's or agent's configuration; with nothing configured, the
    /// in-cluster service account.
    pub fn from_conf(conf: &KubeConf) -> Result<Client, KubeError> {
        let timeout = Duration::from_millis(conf.timeout_ms.unwrap_or(5000));
        if let Some(path) = &conf.kubeconfig {
            return Client::from_kubeconfig(path, timeout);
        }
        let sa = Path::new(SERVICE_ACCOUNT_DIR);
        let server = match &conf.api_server {
            Some(s) => s.clone(),
            None => {
                let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
                    KubeError::Config(
                        "no apiServer or kubeconfig configured and KUBERNETES_SERVICE_HOST \
                         is not set (not running in a pod)"
                            .into(),
                    )
                })?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                if host.contains(':') {
                    format!("https://[{host}]:{port}")
                } else {
                    format!("https://{host}:{port}")
                }
            }
        };
        let token = match &conf.token_file {
            Some(f) => Token::File(f.clone()),
            None if conf.api_server.is_none() => Token::File(sa.join("token")),
            None => Token::None,
        };
        let ca = match &conf.ca_file {
            Some(f) => Some(f.clone()),
            None if conf.api_server.is_none() => Some(sa.join("ca.crt")),
            None => None,
        };
        Client::new(&server, token, ca.as_deref(), timeout)
    }

    fn new(
        server: &str,
        token: Token,
        ca: Option<&Path>,
        timeout: Duration,
    ) -> Result<Client, KubeError> {
        let uri: http::Uri = server
            .parse()
            .map_err(|e| KubeError::Config(format!("server '{server}': {e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(KubeError::Config(format!(
                    "server '{server}': give http:// or https://"
                )))
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| KubeError::Config(format!("server '{server}' has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            Some(tls_connector(ca)?)
        } else {
            None
        };
        Ok(Client {
            https,
            host,
            port,
            token,
            tls,
            timeout,
        })
    }

    /// The current context of a kubeconfig: its cluster's server and CA file, its user's
    /// token or token file.
    fn from_kubeconfig(path: &Path, timeout: Duration) -> Result<Client, KubeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| KubeError::Config(format!("kubeconfig {}: {e}", path.display())))?;
        let kc = parse_kubeconfig(&text)
            .map_err(|e| KubeError::Config(format!("kubeconfig {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let token = match (kc.token, kc.token_file) {
            (Some(t), _) => Token::Inline(t),
            (None, Some(f)) => Token::File(base.join(f)),
            (None, None) => Token::None,
        };
        let ca = kc.ca_file.map(|f| base.join(f));
        Client::new(&kc.server, token, ca.as_deref(), timeout)
    }

    /// The base URL, for messages.
    pub fn base_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }

    /// GET `path_and_query`; the body of a 2xx answer.
    pub async fn get(&self, path_and_query: &str) -> Result<Bytes, KubeError> {
        let url = format!("{}{path_and_query}", self.base_url());
        match tokio::time::timeout(self.timeout, self.exchange(path_and_query, &url)).await {
            Ok(r) => r,
            Err(_) => Err(KubeError::Transport {
                url,
                reason: format!("no answer within {:?}", self.timeout),
            }),
        }
    }

    async fn exchange(&self, path_and_query: &str, url: &str) -> Result<Bytes, KubeError> {
        let transport = |reason: String| KubeError::Transport {
            url: url.to_string(),
            reason,
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| transport(format!("connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let authority = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let mut req = http::Request::get(path_and_query)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "skiff-k8s");
        if let Some(t) = self.token()? {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| transport(format!("request: {e}")))?;
        let resp = match &self.tls {
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| transport(format!("server name '{}': {e}", self.host)))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| transport(format!("TLS: {e}")))?;
                send(TokioIo::new(stream), req).await
            }
            None => send(TokioIo::new(tcp), req).await,
        }
        .map_err(transport)?;
        let code = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| transport(format!("reading the body: {e}")))?
            .to_bytes();
        if (200..300).contains(&code) {
            return Ok(body);
        }
        let status = model::parse_status(&body).unwrap_or_default();
        let message = if status.message.is_empty() {
            String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
        } else {
            status.message
        };
        Err(KubeError::Status {
            url: url.to_string(),
            code,
            reason: status.reason,
            message,
            hint: match code {
                401 => " (the token is missing, expired or not accepted: check tokenFile)",
                403 => " (grant the service account get/list/watch on pods: k8s/base/rbac.yaml)",
                _ => "",
            },
        })
    }

    fn token(&self) -> Result<Option<String>, KubeError> {
        match &self.token {
            Token::None => Ok(None),
            Token::Inline(t) => Ok(Some(t.clone())),
            Token::File(f) => std::fs::read_to_string(f)
                .map(|t| Some(t.trim().to_string()))
                .map_err(|e| KubeError::Config(format!("token file {}: {e}", f.display()))),
        }
    }

    /// One pod.
    pub async fn pod(&self, namespace: &str, name: &str) -> Result<Pod, KubeError> {
        let path = format!(
            "/api/v1/namespaces/{}/pods/{}",
            escape(namespace),
            escape(name)
        );
        let body = self.get(&path).await?;
        model::parse_pod(&body).map_err(|e| KubeError::Decode {
            url: format!("{}{path}", self.base_url()),
            reason: e.to_string(),
        })
    }

    /// Every pod scheduled to `node`, all pages.
    pub async fn pods_on_node(&self, node: &str) -> Result<Vec<Pod>, KubeError> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let mut path = format!(
                "/api/v1/pods?fieldSelector={}&limit=500",
                escape(&format!("spec.nodeName={node}"))
            );
            if !token.is_empty() {
                path.push_str("&continue=");
                path.push_str(&escape(&token));
            }
            let body = self.get(&path).await?;
            let list = model::parse_pod_list(&body).map_err(|e| KubeError::Decode {
                url: format!("{}{path}", self.base_url()),
                reason: e.to_string(),
            })?;
            out.extend(list.items);
            if list.metadata.continue_token.is_empty() {
                return Ok(out);
            }
            token = list.metadata.continue_token;
        }
    }
}

async fn send<S>(
    io: TokioIo<S>,
    req: http::Request<Empty<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))
}

/// Percent-encodes a path segment or query value.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn tls_connector(ca: Option<&Path>) -> Result<tokio_rustls::TlsConnector, KubeError> {
    use rustls_pki_types::pem::PemObject;
    let Some(ca) = ca else {
        return Err(KubeError::Config(
            "an https:// API server needs caFile (the cluster's CA bundle)".into(),
        ));
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(ca)
        .map_err(|e| KubeError::Config(format!("CA file {}: {e}", ca.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| KubeError::Config(format!("CA file {}: {e}", ca.display())))?;
        roots
            .add(cert)
            .map_err(|e| KubeError::Config(format!("CA file {}: {e}", ca.display())))?;
    }
    if roots.is_empty() {
        return Err(KubeError::Config(format!(
            "CA file {} holds no certificate",
            ca.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| KubeError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// What skiff takes from a kubeconfig's current context.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kubeconfig {
    /// The cluster's server URL.
    pub server: String,
    /// `certificate-authority` (a path; relative to the kubeconfig's directory).
    pub ca_file: Option<String>,
    /// The user's `token`.
    pub token: Option<String>,
    /// The user's `tokenFile`.
    pub token_file: Option<String>,
}

/// Reads the current context of a kubeconfig (YAML or JSON).
pub fn parse_kubeconfig(text: &str) -> Result<Kubeconfig, String> {
    use serde_yaml::Value;
    let doc: Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let named = |list: &str, name: &str| -> Option<Value> {
        doc.get(list)?
            .as_sequence()?
            .iter()
            .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
            .cloned()
    };
    let first_name = |list: &str| -> Option<String> {
        doc.get(list)?
            .as_sequence()?
            .first()?
            .get("name")?
            .as_str()
            .map(str::to_string)
    };
    let context_name = s(&doc, "current-context")
        .filter(|c| !c.is_empty())
        .or_else(|| first_name("contexts"))
        .ok_or("no current-context and no contexts")?;
    let context = named("contexts", &context_name)
        .and_then(|c| c.get("context").cloned())
        .ok_or_else(|| format!("context '{context_name}' is not defined"))?;
    let cluster_name = s(&context, "cluster").ok_or("the current context names no cluster")?;
    let cluster = named("clusters", &cluster_name)
        .and_then(|c| c.get("cluster").cloned())
        .ok_or_else(|| format!("cluster '{cluster_name}' is not defined"))?;
    if cluster.get("certificate-authority-data").is_some() {
        return Err(
            "certificate-authority-data is not supported: write the CA to a file and \
                    name it in certificate-authority"
                .into(),
        );
    }
    let user = match s(&context, "user") {
        Some(u) => named("users", &u).and_then(|c| c.get("user").cloned()),
        None => None,
    }
    .unwrap_or(Value::Null);
    Ok(Kubeconfig {
        server: s(&cluster, "server").ok_or("the cluster has no server")?,
        ca_file: s(&cluster, "certificate-authority"),
        token: s(&user, "token"),
        token_file: s(&user, "tokenFile"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_current_context() {
        let kc = parse_kubeconfig(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters:\n- name: k\n  cluster:\n    server: https://10.96.0.1:443\n    certificate-authority: ca.crt\n\
             contexts:\n- name: c\n  context:\n    cluster: k\n    user: u\n\
             users:\n- name: u\n  user:\n    tokenFile: token\n",
        )
        .expect("parses");
        assert_eq!(kc.server, "https://10.96.0.1:443");
        assert_eq!(kc.ca_file.as_deref(), Some("ca.crt"));
        assert_eq!(kc.token_file.as_deref(), Some("token"));
        assert!(parse_kubeconfig("clusters: []").is_err());
    }

    #[test]
    fn queries_are_escaped() {
        assert_eq!(escape("spec.nodeName=n-1"), "spec.nodeName%3Dn-1");
    }

    #[test]
    fn https_without_a_ca_is_refused() {
        let e = Client::from_conf(&KubeConf {
            api_server: Some("https://127.0.0.1:6443".into()),
            ..KubeConf::default()
        })
        .expect_err("no CA");
        assert!(e.to_string().contains("caFile"), "{e}");
    }
}
