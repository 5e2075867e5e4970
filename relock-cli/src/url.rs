//! Server URLs as the options give them: checked before use, so that a mistyped one is named
//! with the forms that work, and shown without its password.

use relock::redis::IntoConnectionInfo;

use crate::failure::Failure;

/// The schemes a server URL may use, as redis-rs reads them.
const SCHEMES: &str = "redis://, rediss:// (TLS), valkey://, valkeys:// (TLS), redis+unix:// or \
                       unix://";

/// Refuses a URL that the library cannot connect to, naming the option it came from and, for
/// an unknown scheme, the accepted ones.
pub(crate) fn check(option: &str, url: &str) -> Result<(), Failure> {
    let shown = redacted(url);
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    let known = matches!(
        scheme,
        Some("redis" | "rediss" | "valkey" | "valkeys" | "redis+unix" | "valkey+unix" | "unix")
    );
    if !known {
        let found = match scheme {
            Some(scheme) => format!("the scheme `{scheme}://` is not one of them"),
            None => "it has no scheme".to_owned(),
        };
        return Err(Failure::usage(format!(
            "invalid {option} `{shown}`: a server URL starts with {SCHEMES}; {found} \
             (e.g. redis://127.0.0.1:6379)"
        )));
    }
    url.into_connection_info().map(drop).map_err(|err| {
        let detail = err
            .detail()
            .map(|detail| format!(" ({detail})"))
            .unwrap_or_default();
        Failure::usage(format!(
            "invalid {option} `{shown}`: expected {}://[user:password@]host[:port][/db]{detail}",
            scheme.unwrap_or("redis")
        ))
    })
}

/// Whether `url` asks for TLS.
pub(crate) fn is_tls(url: &str) -> bool {
    url.starts_with("rediss://") || url.starts_with("valkeys://")
}

/// `url` with its password masked, for messages.
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) if authority[..at].contains(':') => {
            let user = &authority[..authority[..at].find(':').unwrap_or(at)];
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_scheme_lists_the_accepted_ones() {
        let message = check("--url", "foo://x").unwrap_err().to_string();
        assert!(message.contains("`foo://`"), "{message}");
        assert!(message.contains("redis://, rediss://"), "{message}");
        let message = check("--url", "localhost:6379").unwrap_err().to_string();
        assert!(message.contains("no scheme"), "{message}");
    }

    #[test]
    fn a_bad_url_keeps_its_password_out_of_the_message() {
        let message = check("--url", "ftp://u:secret@h").unwrap_err().to_string();
        assert!(!message.contains("secret"), "{message}");
        let message = check("--url", "redis://u:secret@h:99999")
            .unwrap_err()
            .to_string();
        assert!(!message.contains("secret"), "{message}");
    }

    #[test]
    fn good_urls_pass() {
        for url in [
            "redis://127.0.0.1:6379",
            "rediss://u:p@h:6380/2",
            "unix:///tmp/r.sock",
        ] {
            assert!(check("--url", url).is_ok(), "{url}");
        }
    }
}
