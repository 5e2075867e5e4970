//! TLS settings: the CA certificates a locker trusts and the client certificate it presents, in
//! one place so that every connection it opens (commands, release notifications, each cluster
//! node) is made the same way.

use std::fmt;

use crate::error::Error;

/// What a locker's `rediss://` connections trust and present; empty: the system's CA
/// certificates, no client certificate.
#[derive(Clone, Default)]
pub(crate) struct TlsSettings {
    /// PEM: one or more CA certificates, trusted instead of the system's.
    pub(crate) root_ca: Option<Vec<u8>>,
    /// PEM: the client certificate (chain) and its private key, for mutual TLS.
    pub(crate) client_auth: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsSettings {
    fn is_empty(&self) -> bool {
        self.root_ca.is_none() && self.client_auth.is_none()
    }

    /// A client for `url`, carrying these settings when it is a `rediss://` URL.
    pub(crate) fn client(&self, url: &str) -> Result<redis::Client, Error> {
        self.check(url)?;
        #[cfg(feature = "tls")]
        if !self.is_empty() {
            return Ok(redis::Client::build_with_tls(url, self.certificates())?);
        }
        Ok(redis::Client::open(url)?)
    }

    /// A client for one node found at run time (a cluster node, a sentinel or the master it
    /// names), `info` carrying its address and credentials.
    #[cfg(any(feature = "cluster", feature = "sentinel"))]
    pub(crate) fn node_client(&self, info: redis::ConnectionInfo) -> Result<redis::Client, Error> {
        #[cfg(feature = "tls")]
        if !self.is_empty() {
            return Ok(redis::Client::build_with_tls(info, self.certificates())?);
        }
        Ok(redis::Client::open(info)?)
    }

    /// `info` (a seed's or a sentinel's settings: credentials, TLS) for the node at `host:port`,
    /// over the same transport (`rediss://` stays TLS, with its parameters).
    #[cfg(any(feature = "cluster", feature = "sentinel"))]
    pub(crate) fn at_address(
        info: &redis::ConnectionInfo,
        host: String,
        port: u16,
    ) -> redis::ConnectionInfo {
        let addr = match info.addr() {
            redis::ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => redis::ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => redis::ConnectionAddr::Tcp(host, port),
        };
        info.clone().set_addr(addr)
    }

    /// A cluster client builder for `seeds` carrying these settings.
    #[cfg(feature = "cluster")]
    pub(crate) fn cluster_builder(
        &self,
        seeds: &[String],
    ) -> Result<redis::cluster::ClusterClientBuilder, Error> {
        for seed in seeds {
            self.check(seed)?;
        }
        let builder = redis::cluster::ClusterClientBuilder::new(seeds.to_vec());
        #[cfg(feature = "tls")]
        if !self.is_empty() {
            return Ok(builder.certs(self.certificates()));
        }
        Ok(builder)
    }

    /// The settings as redis-rs takes them.
    #[cfg(feature = "tls")]
    pub(crate) fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self.client_auth.clone().map(|(client_cert, client_key)| {
                redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                }
            }),
            root_cert: self.root_ca.clone(),
        }
    }

    /// Refuses what cannot work: a `rediss://` URL without the `tls` feature, and TLS settings
    /// for a URL that does not use TLS (they would be ignored silently).
    fn check(&self, url: &str) -> Result<(), Error> {
        let tls = url.starts_with("rediss://") || url.starts_with("valkeys://");
        if tls && !cfg!(feature = "tls") {
            return Err(Error::backend(format!(
                "`{}` asks for TLS, but relock was built without its `tls` feature: enable it \
                 (`relock = {{ version = \"..\", features = [\"tls\"] }}`)",
                redacted(url)
            )));
        }
        if !tls && !self.is_empty() {
            return Err(Error::backend(format!(
                "TLS certificates were given (`tls_root_ca`, `tls_client_auth`) but `{}` does \
                 not use TLS: use a `rediss://` URL",
                redacted(url)
            )));
        }
        Ok(())
    }
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("root_ca", &self.root_ca.is_some())
            .field("client_auth", &self.client_auth.is_some())
            .finish()
    }
}

/// `url` without its password, for error messages.
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

/// Says what is wrong when `err` (or an error it wraps) is rustls refusing the server's
/// certificate.
#[cfg(feature = "tls")]
pub(crate) fn certificate_problem(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::{CertificateError, Error as TlsError};

    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let mut next = Some(err);
    while let Some(err) = next {
        // redis-rs keeps an I/O error behind an `Arc` (whose `source` is the I/O error's), and
        // `io::Error::source` skips the error it wraps: unwrap both by hand.
        let unshared = err
            .downcast_ref::<Shared>()
            .map(|shared| &**shared as &(dyn std::error::Error + 'static))
            .unwrap_or(err);
        let inner = unshared
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(unshared), inner].into_iter().flatten() {
            let Some(tls) = candidate.downcast_ref::<TlsError>() else {
                continue;
            };
            const TRUST: &str = "if a private CA signed it, trust that CA with \
                                 `LockerBuilder::tls_root_ca` (its PEM certificate)";
            let (what, hint) = match tls {
                TlsError::InvalidCertificate(CertificateError::UnknownIssuer) => (
                    "the server's certificate is not signed by a trusted CA".to_owned(),
                    TRUST,
                ),
                TlsError::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                ) => (
                    "the server's certificate is not valid for the host name in the URL".to_owned(),
                    "connect with a host name (or IP address) the certificate names; the CA is \
                     trusted through the system or `LockerBuilder::tls_root_ca`",
                ),
                TlsError::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. },
                ) => (
                    "the server's certificate has expired".to_owned(),
                    "renew the server's certificate; the CA is trusted through the system or \
                     `LockerBuilder::tls_root_ca`",
                ),
                TlsError::InvalidCertificate(other) => (
                    format!("the server's certificate was refused ({other:?})"),
                    TRUST,
                ),
                TlsError::AlertReceived(alert) => (
                    format!("the server ended the TLS handshake ({alert:?})"),
                    "a server that requires client certificates needs one it trusts: give it \
                     with `LockerBuilder::tls_client_auth`",
                ),
                TlsError::NoCertificatesPresented => {
                    ("the server presented no certificate".to_owned(), TRUST)
                }
                _ => return None,
            };
            return Some(format!("TLS certificate problem: {what}; {hint} ({tls})"));
        }
        next = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_in_messages() {
        assert_eq!(
            redacted("redis://relock:secret@10.0.0.1:6379/0"),
            "redis://relock:***@10.0.0.1:6379/0"
        );
        assert_eq!(redacted("rediss://:secret@host"), "rediss://:***@host");
        assert_eq!(redacted("redis://host:6379"), "redis://host:6379");
    }

    #[test]
    fn a_tls_url_needs_the_tls_feature() {
        let built = TlsSettings::default().client("rediss://relock:secret@127.0.0.1:6380");
        if cfg!(feature = "tls") {
            assert!(built.is_ok());
        } else {
            let Err(Error::Backend(err)) = built else {
                panic!("a rediss:// URL was accepted without the tls feature");
            };
            let message = err.to_string();
            assert!(message.contains("`tls` feature"), "{message}");
            assert!(!message.contains("secret"), "{message}");
        }
    }

    #[test]
    fn certificates_for_a_plain_url_are_refused() {
        let settings = TlsSettings {
            root_ca: Some(b"pem".to_vec()),
            client_auth: None,
        };
        let err = settings.client("redis://127.0.0.1:6379").unwrap_err();
        assert!(err.is_backend());
        let Error::Backend(err) = err else {
            unreachable!()
        };
        assert!(err.to_string().contains("rediss://"), "{err}");
    }
}
