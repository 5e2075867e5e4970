//! Why a command stopped early, and the exit code that tells a script.

use std::fmt;
use std::process::ExitCode;

/// A command that could not finish: one line for stderr and its exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// The lock is free (`inspect`), or nothing was released (`release`): exit code 1.
    pub(crate) const FREE: u8 = 1;
    /// A usage error, an invalid key or pattern: exit code 2, as clap uses for usage errors.
    pub(crate) const USAGE: u8 = 2;
    /// The server can't be reached or refused: exit code 3.
    pub(crate) const SERVER: u8 = 3;
    /// `doctor`: every check ran, some warn and none fails: exit code 4.
    pub(crate) const WARNINGS: u8 = 4;
    /// `doctor`: at least one check fails: exit code 5.
    pub(crate) const FAILURES: u8 = 5;

    pub(crate) fn free(message: impl Into<String>) -> Self {
        Self::new(Self::FREE, message)
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(Self::USAGE, message)
    }

    pub(crate) fn server(message: impl Into<String>) -> Self {
        Self::new(Self::SERVER, message)
    }

    fn new(code: u8, message: impl Into<String>) -> Self {
        // One line, whatever the server or the OS put into its message.
        let message = message
            .into()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        Self { code, message }
    }

    /// A library error met while talking to the server at `url` (over TLS when `tls`).
    pub(crate) fn from_error(err: relock::Error, url: &str, tls: bool) -> Self {
        match &err {
            relock::Error::InvalidKey { .. } => Self::usage(err.to_string()),
            relock::Error::Backend(backend) => {
                // The library's advice names its builder methods: name this tool's options.
                let message = backend
                    .to_string()
                    .replace("`LockerBuilder::tls_root_ca`", "`--tls-ca-cert`")
                    .replace(
                        "`LockerBuilder::tls_client_auth`",
                        "`--tls-cert` and `--tls-key`",
                    );
                let hint = tls_hint(tls, &message);
                Self::server(format!("server at {url} failed: {message}{hint}"))
            }
            _ => Self::server(err.to_string()),
        }
    }

    /// Prints the message on stderr and turns into the exit code.
    pub(crate) fn report(self) -> ExitCode {
        eprintln!("relock: {self}");
        ExitCode::from(self.code)
    }
}

/// What to add to a connection failure that a TLS mismatch explains: a TLS client waits in
/// vain for a plain server's handshake, and a TLS server drops a plain client's first bytes.
pub(crate) fn tls_hint(tls: bool, message: &str) -> &'static str {
    let message = message.to_ascii_lowercase();
    let silent = message.contains("timed out");
    let dropped = [
        "reset by peer",
        "broken pipe",
        "connection closed",
        "end of file",
    ]
    .iter()
    .any(|symptom| message.contains(symptom));
    match (tls, silent, dropped) {
        (true, true, _) => {
            "; is the server TLS? A `rediss://` URL needs a TLS port (a plain server never \
             answers the handshake): use `redis://` for a plain one"
        }
        (false, _, true) => {
            "; is the server TLS? A TLS port drops plain connections: use a `rediss://` URL \
             (with `--tls-ca-cert` for a private CA)"
        }
        _ => "",
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
