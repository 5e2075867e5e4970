//! Parsing `#[locked(...)]`'s arguments: the key templates and the options.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream, Parser as _};
use syn::{Expr, ExprLit, Ident, Index, Lit, LitStr, Token};

mod kw {
    syn::custom_keyword!(wait);
    syn::custom_keyword!(lease);
    syn::custom_keyword!(locker);
    syn::custom_keyword!(on_lost);
    syn::custom_keyword!(read);
}

const OPTIONS: &str = "`read`, `wait`, `lease`, `locker` or `on_lost`";

/// Everything inside `#[locked(...)]`.
pub(crate) struct LockedArgs {
    pub(crate) keys: Vec<Key>,
    pub(crate) wait: Option<DurationArg>,
    pub(crate) lease: Option<DurationArg>,
    pub(crate) locker: Option<Expr>,
    pub(crate) on_lost: Option<OnLostArg>,
    /// `read`: shared holds (`Locker::read`) instead of the exclusive lock.
    pub(crate) read: Option<Span>,
}

impl Parse for LockedArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = LockedArgs {
            keys: Vec::new(),
            wait: None,
            lease: None,
            locker: None,
            on_lost: None,
            read: None,
        };
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            if lookahead.peek(LitStr) {
                args.keys.push(input.parse()?);
            } else if lookahead.peek(kw::wait) {
                let name = input.parse::<kw::wait>()?;
                let value = option_value(input, name.span, "wait")?;
                set_once(&mut args.wait, DurationArg::new(value)?, name.span, "wait")?;
            } else if lookahead.peek(kw::lease) {
                let name = input.parse::<kw::lease>()?;
                let value = option_value(input, name.span, "lease")?;
                set_once(
                    &mut args.lease,
                    DurationArg::new(value)?,
                    name.span,
                    "lease",
                )?;
            } else if lookahead.peek(kw::locker) {
                let name = input.parse::<kw::locker>()?;
                let value = option_value(input, name.span, "locker")?;
                set_once(&mut args.locker, value, name.span, "locker")?;
            } else if lookahead.peek(kw::on_lost) {
                let name = input.parse::<kw::on_lost>()?;
                let value = option_value(input, name.span, "on_lost")?;
                set_once(
                    &mut args.on_lost,
                    OnLostArg::new(value)?,
                    name.span,
                    "on_lost",
                )?;
            } else if lookahead.peek(kw::read) {
                let name = input.parse::<kw::read>()?;
                if input.peek(Token![=]) {
                    return Err(syn::Error::new(
                        name.span,
                        "`read` takes no value: write `read` alone, as in \
                         `#[locked(read, \"config:{id}\")]`",
                    ));
                }
                set_once(&mut args.read, name.span, name.span, "read")?;
            } else if input.peek(Ident::peek_any) {
                let name = input.call(Ident::parse_any)?;
                return Err(syn::Error::new(
                    name.span(),
                    format!("unknown option `{name}`; expected {OPTIONS}"),
                ));
            } else {
                return Err(lookahead.error());
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        if args.keys.is_empty() {
            return Err(syn::Error::new(
                Span::call_site(),
                "`#[locked]` needs at least one key, e.g. `#[locked(\"order:{id}\")]`",
            ));
        }
        Ok(args)
    }
}

fn option_value(input: ParseStream<'_>, span: Span, name: &str) -> syn::Result<Expr> {
    if !input.peek(Token![=]) {
        return Err(syn::Error::new(
            span,
            format!("expected `=` after `{name}`, as in `{name} = …`"),
        ));
    }
    input.parse::<Token![=]>()?;
    input.parse()
}

fn set_once<T>(slot: &mut Option<T>, value: T, span: Span, name: &str) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new(
            span,
            format!("duplicate option `{name}`; give it once"),
        ));
    }
    *slot = Some(value);
    Ok(())
}

fn string_literal(expr: &Expr) -> Option<&LitStr> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Some(lit),
        _ => None,
    }
}

/// `wait = "2s"` (checked and converted here) or `wait = <expr of type Duration>`.
pub(crate) enum DurationArg {
    Literal { millis: u64, span: Span },
    Expr(Expr),
}

impl DurationArg {
    fn new(value: Expr) -> syn::Result<Self> {
        match string_literal(&value) {
            Some(lit) => Ok(DurationArg::Literal {
                millis: parse_millis(&lit.value()).ok_or_else(|| {
                    syn::Error::new(
                        lit.span(),
                        format!(
                            "invalid duration {:?}: expected a whole number followed by `ms`, \
                             `s`, `m` or `h`, such as \"250ms\", \"2s\", \"1m\" or \"1h\"",
                            lit.value()
                        ),
                    )
                })?,
                span: lit.span(),
            }),
            None => Ok(DurationArg::Expr(value)),
        }
    }
}

impl ToTokens for DurationArg {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        tokens.extend(match self {
            DurationArg::Literal { millis, span } => {
                quote_spanned!(*span=> ::core::time::Duration::from_millis(#millis))
            }
            DurationArg::Expr(expr) => quote!(#expr),
        });
    }
}

/// `"250ms"`, `"2s"`, `"1m"`, `"1h"` in milliseconds; `None` for anything else or an overflow.
fn parse_millis(text: &str) -> Option<u64> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let factor = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(factor)
}

/// `on_lost = "abort" | "continue"` or `on_lost = <expr of type relock::OnLost>`.
pub(crate) enum OnLostArg {
    Abort(Span),
    Continue(Span),
    Expr(Expr),
}

impl OnLostArg {
    fn new(value: Expr) -> syn::Result<Self> {
        let Some(lit) = string_literal(&value) else {
            return Ok(OnLostArg::Expr(value));
        };
        match lit.value().as_str() {
            "abort" => Ok(OnLostArg::Abort(lit.span())),
            "continue" => Ok(OnLostArg::Continue(lit.span())),
            other => Err(syn::Error::new(
                lit.span(),
                format!("unknown `on_lost` value {other:?}; expected \"abort\" or \"continue\""),
            )),
        }
    }
}

impl ToTokens for OnLostArg {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        tokens.extend(match self {
            OnLostArg::Abort(span) => quote_spanned!(*span=> ::relock::OnLost::Abort),
            OnLostArg::Continue(span) => quote_spanned!(*span=> ::relock::OnLost::Continue),
            OnLostArg::Expr(expr) => quote!(#expr),
        });
    }
}

/// One key template such as `"order:{order.id}"`, split into text and placeholders.
pub(crate) struct Key {
    pub(crate) lit: LitStr,
    /// A malformed template is reported along with the problems found later in the signature.
    pub(crate) parts: syn::Result<Vec<Part>>,
}

pub(crate) enum Part {
    Text(String),
    Placeholder(Placeholder),
}

/// `{root.field.method()}`: a parameter name followed by field accesses and argument-less
/// method calls.
pub(crate) struct Placeholder {
    /// The placeholder as written, braces included, for error messages.
    pub(crate) source: String,
    pub(crate) root: Ident,
    pub(crate) accesses: Vec<Access>,
}

pub(crate) enum Access {
    Field(Ident),
    Index(Index),
    Method(Ident),
}

impl Parse for Key {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let lit: LitStr = input.parse()?;
        let parts = parse_template(&lit.value(), lit.span());
        Ok(Key { lit, parts })
    }
}

const PLACEHOLDER_FORMS: &str =
    "expected `{name}`, `{name.field}` or `{name.method()}` over the function's parameters";

fn parse_template(template: &str, span: Span) -> syn::Result<Vec<Part>> {
    let error = |message: String| syn::Error::new(span, message);
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = template;
    while let Some(at) = rest.find(['{', '}']) {
        text.push_str(&rest[..at]);
        let brace = &rest[at..at + 1];
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix(brace) {
            text.push_str(brace);
            rest = after;
            continue;
        }
        if brace == "}" {
            return Err(error(
                "unmatched `}` in key; write `}}` for a literal brace".to_owned(),
            ));
        }
        let Some(end) = rest.find('}') else {
            return Err(error(
                "unclosed `{` in key; close the placeholder with `}`, or write `{{` for a \
                 literal brace"
                    .to_owned(),
            ));
        };
        let inner = &rest[..end];
        rest = &rest[end + 1..];
        if inner.trim().is_empty() {
            return Err(error(format!(
                "empty placeholder `{{{inner}}}` in key; name a parameter, e.g. `{{id}}`"
            )));
        }
        if !text.is_empty() {
            parts.push(Part::Text(std::mem::take(&mut text)));
        }
        parts.push(Part::Placeholder(parse_placeholder(inner, span)?));
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(parts)
}

fn parse_placeholder(inner: &str, span: Span) -> syn::Result<Placeholder> {
    let source = format!("{{{inner}}}");
    let unsupported = || {
        syn::Error::new(
            span,
            format!("unsupported placeholder `{source}`: {PLACEHOLDER_FORMS}"),
        )
    };
    if let Some(open) = inner.find('(') {
        if !inner[open + 1..].starts_with(')') {
            return Err(syn::Error::new(
                span,
                format!(
                    "method calls in placeholders take no arguments: `{source}`; \
                     compute the value in a parameter or a method without arguments"
                ),
            ));
        }
    }
    let mut segments = inner.split('.');
    let root = segments
        .next()
        .and_then(|name| ident(name, span))
        .ok_or_else(unsupported)?;
    let mut accesses = Vec::new();
    for segment in segments {
        let access = if let Some(call) = segment.strip_suffix(')') {
            let name = call.strip_suffix('(').ok_or_else(unsupported)?;
            Access::Method(ident(name, span).ok_or_else(unsupported)?)
        } else if let Some(index) = segment
            .parse::<u32>()
            .ok()
            .filter(|index| index.to_string() == segment)
        {
            Access::Index(Index { index, span })
        } else {
            Access::Field(ident(segment, span).ok_or_else(unsupported)?)
        };
        accesses.push(access);
    }
    Ok(Placeholder {
        source,
        root,
        accesses,
    })
}

/// `name` as an identifier (keywords such as `self` included, raw `r#name` too) with `span`.
fn ident(name: &str, span: Span) -> Option<Ident> {
    let bare = name.strip_prefix("r#").unwrap_or(name);
    // `parse_str` alone would also accept surrounding spaces and comments.
    if bare.is_empty() || !bare.chars().all(|c| c == '_' || c.is_alphanumeric()) {
        return None;
    }
    let mut ident = Ident::parse_any.parse_str(name).ok()?;
    ident.set_span(span);
    Some(ident)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_millis("250ms"), Some(250));
        assert_eq!(parse_millis("2s"), Some(2_000));
        assert_eq!(parse_millis("1m"), Some(60_000));
        assert_eq!(parse_millis("1h"), Some(3_600_000));
        assert_eq!(parse_millis("0s"), Some(0));
    }

    #[test]
    fn malformed_durations_are_rejected() {
        for text in [
            "", "2", "s", "2 s", "1.5s", "-1s", "2sec", "2S", "1d", "500us",
        ] {
            assert_eq!(parse_millis(text), None, "{text:?}");
        }
        assert_eq!(parse_millis("18446744073709551615h"), None);
    }

    fn placeholders(template: &str) -> Vec<String> {
        parse_template(template, Span::call_site())
            .unwrap()
            .into_iter()
            .map(|part| match part {
                Part::Text(text) => format!("text:{text}"),
                Part::Placeholder(p) => format!("{}+{}", p.root, p.accesses.len()),
            })
            .collect()
    }

    #[test]
    fn templates_split_into_text_and_placeholders() {
        assert_eq!(placeholders("order:{id}"), ["text:order:", "id+0"]);
        assert_eq!(placeholders("{a.b.c}-{x.name()}"), ["a+2", "text:-", "x+1"]);
        assert_eq!(placeholders("{pair.0}"), ["pair+1"]);
        assert_eq!(placeholders("{self.id}"), ["self+1"]);
        assert_eq!(placeholders("{{x}}"), ["text:{x}"]);
        assert_eq!(placeholders("static"), ["text:static"]);
    }

    #[test]
    fn malformed_templates_are_rejected() {
        for template in [
            "{",
            "a}",
            "{}",
            "{ }",
            "{id",
            "{a b}",
            "{a+1}",
            "{a.}",
            "{a:?}",
            "{x.f(1)}",
            "{x.f()g}",
            "{1}",
            "{ id }",
            "{a/**/}",
            "{x.f(a.b)}",
            "{x.01}",
            "{f()}",
        ] {
            assert!(
                parse_template(template, Span::call_site()).is_err(),
                "{template:?}"
            );
        }
    }
}
