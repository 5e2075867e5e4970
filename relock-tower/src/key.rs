//! Ready-made key extractors for [`http::Request`]s: a header, a path segment, a query
//! parameter and (feature `tonic`) gRPC metadata.
//!
//! Each gives `None`, so no lock, when the value is missing or empty.
//! [`prefix`](Header::prefix) puts a namespace in front, so that `42` becomes `order:42`.
//!
//! # A value given twice is refused
//!
//! A query parameter or header that the request gives more than once (`?cart=7&cart=8`,
//! `?cart=&cart=7`, two `x-order-id` headers) is an
//! [`InvalidKey`](relock::Error::InvalidKey) rejection with the reason
//! [`Repeated`](relock::InvalidKeyReason::Repeated), `400 Bad Request` by default (gRPC
//! `INVALID_ARGUMENT` with `GrpcRejection`), even when one of the values is empty and even when
//! they are equal. Handlers do not agree on which one counts — axum's `Query<HashMap<..>>` keeps
//! the last, a lookup of the first keeps the first — so locking either could let the handler
//! work on a value nobody locked.
//!
//! # Every spelling of an id takes one lock
//!
//! Path segments and query parameters are decoded before they become keys, the way the
//! frameworks decode them for the handler (axum's `Path` and `Query`): `/orders/42/pay` and
//! `/orders/%34%32/pay` both lock `order:42`, as both reach the handler as the id `42`. This is
//! a security property, not a convenience: a lock keyed on the raw text of the URI could be
//! bypassed by re-encoding the id, letting two requests on one order run at once.
//!
//! Bytes that are not UTF-8 once decoded become `U+FFFD`, so two different ids may share a
//! lock, which only locks more than needed. A decoded value that is not a valid key (braces,
//! control characters such as `%00`) is an [`InvalidKey`](relock::Error::InvalidKey) rejection,
//! `400 Bad Request` by default: the request never passes unlocked. Headers and gRPC metadata
//! are taken as they are, as frameworks hand them over.
//!
//! ```
//! use relock_tower::{key, LockLayer};
//!
//! // `/orders/42/pay` locks `order:42`.
//! let by_path = LockLayer::new(key::path_segment(2).prefix("order:"));
//! // `x-order-id: 42` locks `order:42`.
//! let by_header = LockLayer::new(key::header("x-order-id").prefix("order:"));
//! // `/checkout?cart=7` locks `cart:7`.
//! let by_query = LockLayer::new(key::query("cart").prefix("cart:"));
//! # drop((by_path, by_header, by_query));
//! ```

use std::fmt;
use std::sync::Arc;

use http::header::HeaderName;
use http::Request;
use percent_encoding::percent_decode_str;

use crate::extract::ExtractKey;

/// Keys requests by the value of the header `name`.
///
/// Bytes that are not UTF-8 are replaced by `U+FFFD` rather than skipped, so an odd value still
/// takes a lock. A request with the header more than once is
/// [refused](self#a-value-given-twice-is-refused).
///
/// # Panics
///
/// When `name` is not a valid header name.
///
/// ```
/// let extractor = relock_tower::key::header("x-order-id").prefix("order:");
/// # drop(extractor);
/// ```
#[track_caller]
pub fn header<N>(name: N) -> Header
where
    N: TryInto<HeaderName>,
    N::Error: fmt::Debug,
{
    let name = name
        .try_into()
        .unwrap_or_else(|err| panic!("invalid header name for a lock key: {err:?}"));
    Header {
        name,
        prefix: Prefix::default(),
    }
}

/// Keys requests by segment `index` of the URI path.
///
/// Segments are counted from 1, as the path splits on `/`: in `/orders/42/pay`, segment 1 is
/// `orders`, 2 is `42` and 3 is `pay` (segment 0 is the empty text before the leading `/`, so it
/// never gives a key).
///
/// The segment is percent-decoded, as axum's `Path` decodes it, so that `%34%32` and `42` take
/// [one lock](self#every-spelling-of-an-id-takes-one-lock): `+` stays `+`, and a malformed
/// escape (`%4`, `%zz`) is kept as written. The path is split on `/` before decoding, so an
/// encoded `%2F` stays inside its segment.
///
/// ```
/// // For the route `/orders/{id}/pay`.
/// let extractor = relock_tower::key::path_segment(2).prefix("order:");
/// # drop(extractor);
/// ```
pub fn path_segment(index: usize) -> PathSegment {
    PathSegment {
        index,
        prefix: Prefix::default(),
    }
}

/// Keys requests by the query parameter `name`.
///
/// The query is decoded as `application/x-www-form-urlencoded`, as axum's `Query` decodes it,
/// so that every spelling of an id takes [one lock](self#every-spelling-of-an-id-takes-one-lock):
/// `+` is a space, then `%` escapes are decoded, in names as in values, and `name` is matched
/// against the decoded names (`?c%61rt=7` is `cart`). A malformed escape (`%4`, `%zz`) is kept
/// as written. A request that gives the parameter more than once, under any spelling of its
/// name, is [refused](self#a-value-given-twice-is-refused).
///
/// ```
/// // `/checkout?cart=7` locks `cart:7`.
/// let extractor = relock_tower::key::query("cart").prefix("cart:");
/// # drop(extractor);
/// ```
pub fn query(name: impl Into<Arc<str>>) -> Query {
    Query {
        name: name.into(),
        prefix: Prefix::default(),
    }
}

/// Keys gRPC requests by the metadata entry `name`.
///
/// gRPC metadata travel as HTTP/2 headers, so this reads the header `name` of the
/// [`http::Request`] a tonic server hands its layers; clients set it with
/// `request.metadata_mut().insert(..)`. Keys of binary entries (`-bin`) are their base64 text.
/// An entry given more than once (`metadata_mut().append(..)`) is
/// [refused](self#a-value-given-twice-is-refused) with `INVALID_ARGUMENT`.
///
/// # Panics
///
/// When `name` is not a valid metadata key (lowercase ASCII letters, digits, `-`, `_`, `.`).
///
/// ```
/// use relock_tower::{key, GrpcRejection, LockLayer};
///
/// let layer = LockLayer::new(key::metadata("x-order-id").prefix("order:"))
///     .on_reject(GrpcRejection::new());
/// # drop(layer);
/// ```
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
#[track_caller]
pub fn metadata(name: &str) -> Metadata {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    assert!(valid, "invalid gRPC metadata key for a lock key: {name:?}");
    Metadata(header(name))
}

/// The extractor made by [`header`].
#[derive(Debug, Clone)]
pub struct Header {
    name: HeaderName,
    prefix: Prefix,
}

/// The extractor made by [`path_segment`].
#[derive(Debug, Clone)]
pub struct PathSegment {
    index: usize,
    prefix: Prefix,
}

/// The extractor made by [`query`].
#[derive(Debug, Clone)]
pub struct Query {
    name: Arc<str>,
    prefix: Prefix,
}

/// The extractor made by [`metadata`].
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
#[derive(Debug, Clone)]
pub struct Metadata(Header);

/// Text put in front of every key, so that `42` becomes `order:42`.
#[derive(Debug, Clone, Default)]
struct Prefix(Option<Arc<str>>);

impl Prefix {
    fn key(&self, value: &str) -> Option<String> {
        if value.is_empty() {
            return None;
        }
        Some(match &self.0 {
            Some(prefix) => format!("{prefix}{value}"),
            None => value.to_owned(),
        })
    }
}

macro_rules! prefix_setter {
    ($($extractor:ty),*) => {$(
        impl $extractor {
            /// Puts `prefix` in front of every key this extractor finds, e.g. `"order:"`.
            /// Defaults to no prefix.
            #[must_use]
            pub fn prefix(mut self, prefix: impl Into<Arc<str>>) -> Self {
                self.prefix = Prefix(Some(prefix.into()));
                self
            }
        }
    )*};
}

prefix_setter!(Header, PathSegment, Query);

#[cfg(feature = "tonic")]
impl Metadata {
    /// Puts `prefix` in front of every key this extractor finds, e.g. `"order:"`.
    /// Defaults to no prefix.
    #[must_use]
    pub fn prefix(self, prefix: impl Into<Arc<str>>) -> Self {
        Metadata(self.0.prefix(prefix))
    }
}

/// The refusal of a request that gives the value `name` more than once.
fn repeated(name: &str) -> relock::Error {
    relock::Error::InvalidKey {
        key: name.to_owned(),
        reason: relock::InvalidKeyReason::Repeated,
    }
}

impl<B> ExtractKey<Request<B>> for Header {
    /// `Err` when the request repeats the header.
    type Key = Result<String, relock::Error>;

    fn extract(&self, request: &Request<B>) -> Option<Self::Key> {
        let mut values = request.headers().get_all(&self.name).iter();
        let value = values.next()?;
        if values.next().is_some() {
            return Some(Err(repeated(self.name.as_str())));
        }
        self.prefix
            .key(&String::from_utf8_lossy(value.as_bytes()))
            .map(Ok)
    }
}

impl<B> ExtractKey<Request<B>> for PathSegment {
    type Key = String;

    fn extract(&self, request: &Request<B>) -> Option<String> {
        let segment = request.uri().path().split('/').nth(self.index)?;
        self.prefix
            .key(&percent_decode_str(segment).decode_utf8_lossy())
    }
}

impl<B> ExtractKey<Request<B>> for Query {
    /// `Err` when the request repeats the parameter.
    type Key = Result<String, relock::Error>;

    fn extract(&self, request: &Request<B>) -> Option<Self::Key> {
        let query = request.uri().query()?;
        let mut values = form_urlencoded::parse(query.as_bytes())
            .filter(|(name, _)| **name == *self.name)
            .map(|(_, value)| value);
        let value = values.next()?;
        if values.next().is_some() {
            return Some(Err(repeated(&self.name)));
        }
        self.prefix.key(&value).map(Ok)
    }
}

#[cfg(feature = "tonic")]
impl<B> ExtractKey<Request<B>> for Metadata {
    /// `Err` when the request repeats the entry.
    type Key = Result<String, relock::Error>;

    fn extract(&self, request: &Request<B>) -> Option<Self::Key> {
        self.0.extract(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> Request<()> {
        Request::builder().uri(uri).body(()).unwrap()
    }

    /// The key a header or query extractor found; fails the test if it refused the request.
    fn found(key: Option<Result<String, relock::Error>>) -> Option<String> {
        key.map(|key| key.unwrap_or_else(|err| panic!("refused: {err}")))
    }

    /// Fails the test unless `key` is the refusal of a repeated `name`.
    #[track_caller]
    fn assert_repeated(key: Option<Result<String, relock::Error>>, name: &str) {
        match key {
            Some(Err(relock::Error::InvalidKey {
                key,
                reason: relock::InvalidKeyReason::Repeated,
            })) => assert_eq!(key, name),
            other => panic!("a repeated `{name}` was not refused: {other:?}"),
        }
    }

    #[test]
    fn header_gives_its_value_after_the_prefix() {
        let mut req = request("/");
        req.headers_mut()
            .insert("x-order-id", http::HeaderValue::from_static("42"));
        assert_eq!(
            found(header("x-order-id").prefix("order:").extract(&req)),
            Some("order:42".to_owned())
        );
        assert_eq!(
            found(header("X-Order-Id").extract(&req)),
            Some("42".to_owned())
        );
    }

    #[test]
    fn missing_or_empty_header_gives_no_key() {
        let mut req = request("/");
        assert_eq!(found(header("x-order-id").extract(&req)), None);
        req.headers_mut()
            .insert("x-order-id", http::HeaderValue::from_static(""));
        assert_eq!(
            found(header("x-order-id").prefix("order:").extract(&req)),
            None
        );
    }

    #[test]
    fn header_bytes_that_are_not_utf8_still_give_a_key() {
        let mut req = request("/");
        req.headers_mut().insert(
            "x-order-id",
            http::HeaderValue::from_bytes(b"4\xff2").unwrap(),
        );
        assert_eq!(
            found(header("x-order-id").extract(&req)),
            Some("4\u{fffd}2".to_owned())
        );
    }

    #[test]
    #[should_panic(expected = "invalid header name")]
    fn invalid_header_name_panics() {
        let _ = header("x order");
    }

    #[test]
    fn path_segments_count_from_one() {
        let req = request("/orders/42/pay?x=1");
        assert_eq!(path_segment(1).extract(&req), Some("orders".to_owned()));
        assert_eq!(
            path_segment(2).prefix("order:").extract(&req),
            Some("order:42".to_owned())
        );
        assert_eq!(path_segment(3).extract(&req), Some("pay".to_owned()));
        assert_eq!(path_segment(0).extract(&req), None);
        assert_eq!(path_segment(4).extract(&req), None);
    }

    #[test]
    fn percent_encoded_path_segment_gives_the_key_of_the_plain_one() {
        let extractor = path_segment(2).prefix("order:");
        let plain = extractor.extract(&request("/orders/42/pay"));
        assert_eq!(plain, Some("order:42".to_owned()));
        assert_eq!(extractor.extract(&request("/orders/%34%32/pay")), plain);
        assert_eq!(extractor.extract(&request("/orders/4%32/pay")), plain);
        assert_eq!(
            path_segment(2).extract(&request("/orders/a%20b/pay")),
            Some("a b".to_owned())
        );
    }

    #[test]
    fn encoded_slash_stays_inside_its_path_segment() {
        let req = request("/orders/4%2F2/pay");
        assert_eq!(path_segment(2).extract(&req), Some("4/2".to_owned()));
        assert_eq!(path_segment(3).extract(&req), Some("pay".to_owned()));
    }

    #[test]
    fn plus_is_a_plus_in_a_path_segment_and_a_space_in_a_query() {
        let req = request("/orders/a+b/pay?cart=a+b&other=a%2Bb");
        assert_eq!(path_segment(2).extract(&req), Some("a+b".to_owned()));
        assert_eq!(found(query("cart").extract(&req)), Some("a b".to_owned()));
        assert_eq!(found(query("other").extract(&req)), Some("a+b".to_owned()));
    }

    #[test]
    fn malformed_escapes_are_kept_as_written() {
        let req = request("/orders/%4/pay?cart=%zz7&other=7%");
        assert_eq!(path_segment(2).extract(&req), Some("%4".to_owned()));
        assert_eq!(
            path_segment(1).extract(&request("/%zz%34%32")),
            Some("%zz42".to_owned())
        );
        assert_eq!(found(query("cart").extract(&req)), Some("%zz7".to_owned()));
        assert_eq!(found(query("other").extract(&req)), Some("7%".to_owned()));
    }

    #[test]
    fn decoded_bytes_that_are_not_utf8_still_give_a_key() {
        let req = request("/orders/4%FF2/pay?cart=4%ff2");
        assert_eq!(path_segment(2).extract(&req), Some("4\u{fffd}2".to_owned()));
        assert_eq!(
            found(query("cart").extract(&req)),
            Some("4\u{fffd}2".to_owned())
        );
    }

    #[test]
    fn empty_path_segment_gives_no_key() {
        assert_eq!(path_segment(2).extract(&request("/orders//pay")), None);
    }

    #[test]
    fn query_gives_its_parameter_after_the_prefix() {
        let req = request("/checkout?other=1&cart=7&carts=8");
        assert_eq!(
            found(query("cart").prefix("cart:").extract(&req)),
            Some("cart:7".to_owned())
        );
        assert_eq!(found(query("cartx").extract(&req)), None);
        assert_eq!(found(query("cart").extract(&request("/checkout"))), None);
        assert_eq!(
            found(query("cart").extract(&request("/checkout?cart"))),
            None
        );
        assert_eq!(
            found(query("cart").extract(&request("/checkout?cart="))),
            None
        );
    }

    #[test]
    fn a_repeated_query_parameter_is_refused() {
        for uri in [
            "/checkout?cart=7&cart=8",
            "/checkout?cart=&cart=7",
            "/checkout?cart=7&cart=",
            "/checkout?cart&cart=7",
            "/checkout?cart=7&cart=7",
            "/checkout?cart=7&other=1&c%61rt=8",
            "/checkout?cart=7&cart=8&cart=9",
        ] {
            assert_repeated(query("cart").prefix("cart:").extract(&request(uri)), "cart");
        }
    }

    #[test]
    fn a_repeated_header_is_refused() {
        for values in [["7", "8"], ["", "7"], ["7", "7"]] {
            let mut req = request("/");
            for value in values {
                req.headers_mut()
                    .append("x-order-id", http::HeaderValue::from_static(value));
            }
            assert_repeated(
                header("x-order-id").prefix("order:").extract(&req),
                "x-order-id",
            );
        }
    }

    #[test]
    fn a_refused_key_fails_the_lock_with_a_400_naming_the_reason() {
        use crate::reject::{DefaultRejection, Reject};

        let refused = query("cart").extract(&request("/checkout?cart=7&cart=8"));
        let err = relock::IntoLockKey::into_lock_key(refused.unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid lock key `cart`: the request repeats the query parameter or header it is \
             read from"
        );
        let response: http::Response<String> = DefaultRejection::new().reject(&err);
        assert_eq!(response.status(), http::StatusCode::BAD_REQUEST);
        assert_eq!(
            response.body(),
            "invalid lock key: the request repeats the query parameter or header it is read \
             from\n"
        );
    }

    #[test]
    fn percent_encoded_query_value_gives_the_key_of_the_plain_one() {
        let extractor = query("cart").prefix("cart:");
        let plain = found(extractor.extract(&request("/checkout?cart=42")));
        assert_eq!(plain, Some("cart:42".to_owned()));
        assert_eq!(
            found(extractor.extract(&request("/checkout?cart=%34%32"))),
            plain
        );
    }

    #[test]
    fn query_parameter_names_are_matched_after_decoding() {
        assert_eq!(
            found(query("cart").extract(&request("/checkout?c%61rt=7"))),
            Some("7".to_owned())
        );
        assert_eq!(
            found(query("my cart").extract(&request("/checkout?my+cart=7"))),
            Some("7".to_owned())
        );
        assert_eq!(
            found(query("c%61rt").extract(&request("/checkout?c%61rt=7"))),
            None
        );
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn metadata_reads_the_grpc_header() {
        let mut req = request("/orders.Orders/Pay");
        req.headers_mut()
            .insert("x-order-id", http::HeaderValue::from_static("42"));
        assert_eq!(
            found(metadata("x-order-id").prefix("order:").extract(&req)),
            Some("order:42".to_owned())
        );
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn repeated_metadata_is_refused_with_invalid_argument() {
        let mut req = request("/orders.Orders/Pay");
        for value in ["7", "8"] {
            req.headers_mut()
                .append("x-order-id", http::HeaderValue::from_static(value));
        }
        let refused = metadata("x-order-id").extract(&req);
        assert_repeated(refused, "x-order-id");
        let err = metadata("x-order-id").extract(&req).unwrap().unwrap_err();
        let status = crate::GrpcRejection::new().status(&err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }

    #[cfg(feature = "tonic")]
    #[test]
    #[should_panic(expected = "invalid gRPC metadata key")]
    fn uppercase_metadata_key_panics() {
        let _ = metadata("X-Order-Id");
    }
}
