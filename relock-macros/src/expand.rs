//! Code generation: the user's signature, re-emitted untouched, around a body that takes the
//! locks, runs the original body as an `async move` block and releases them.

use proc_macro2::{Delimiter, Group, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{FnArg, Ident, Pat, ReturnType, Signature, Token, Type};

use crate::attr::{Access, Key, LockedArgs, Part, Placeholder};
use crate::LockedFn;

/// Expands `#[locked(args)] func`; every problem found is reported, each at its own token.
pub(crate) fn gen_function(args: LockedArgs, func: LockedFn) -> syn::Result<TokenStream> {
    let LockedFn {
        attrs,
        vis,
        sig,
        inner_attrs,
        brace,
        body,
    } = func;

    let mut errors = Errors::default();
    let params = param_names(&sig);
    let keys: Vec<TokenStream> = args
        .keys
        .iter()
        .filter_map(|key| errors.check(key_expr(key, &params)))
        .collect();
    let return_type = errors.check(check_signature(&sig));
    errors.finish()?;
    let return_type = return_type.expect("checked above");

    let locker = args.locker.as_ref().map(|expr| {
        let borrow = quote_spanned!(expr.span()=> &(#expr));
        quote!(.locker(#borrow))
    });
    let read = args.read.map(|span| quote_spanned!(span=> .read()));
    let wait = args.wait.as_ref().map(|wait| quote!(.wait(#wait)));
    let lease = args.lease.as_ref().map(|lease| quote!(.lease(#lease)));
    let on_lost = args
        .on_lost
        .as_ref()
        .map(|on_lost| quote!(.on_lost(#on_lost)));

    // The async block's output type is otherwise inferred from the body alone, which leaves `?`
    // and `Err(..)` without a target; an unreachable `return` of the declared type pins it.
    let return_span = return_type.span();
    let return_type = erase_impl_trait(return_type);
    let fake_return_edge = quote_spanned! {return_span=>
        #[allow(
            unreachable_code,
            clippy::diverging_sub_expression,
            clippy::let_unit_value,
            clippy::needless_return,
            clippy::unreachable
        )]
        if false {
            let __relock_fake_return: #return_type = ::core::unreachable!();
            return __relock_fake_return;
        }
    };
    let mut block = Group::new(Delimiter::Brace, body);
    block.set_span(brace.span.join());
    // Spanned at the return type, so that an error type without `From<relock::Error>` is
    // reported there. The conversion is the identity when that type is `relock::Error`.
    let lock_failed = quote_spanned! {return_span=>
        #[allow(clippy::useless_conversion)]
        ::core::result::Result::Err(__relock_error) => {
            ::core::result::Result::Err(::core::convert::From::from(__relock_error))
        }
    };

    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            #(#inner_attrs)*
            let __relock_locked = ::relock::__private::Locked::new([#(#keys),*])
                #read
                #locker
                #wait
                #lease
                #on_lost;
            match __relock_locked
                .run(async move {
                    #fake_return_edge
                    #block
                })
                .await
            {
                ::core::result::Result::Ok(__relock_output) => __relock_output,
                #lock_failed
            }
        }
    })
}

/// Errors gathered across checks, so that one compile reports them all.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, err: syn::Error) {
        match &mut self.0 {
            Some(errors) => errors.combine(err),
            None => self.0 = Some(err),
        }
    }

    fn check<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        result.map_err(|err| self.push(err)).ok()
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Checks that `sig` is a non-`const` `async fn` returning a `Result`, and returns that type.
pub(crate) fn check_signature(sig: &Signature) -> syn::Result<&Type> {
    let mut errors = Errors::default();
    if let Some(constness) = &sig.constness {
        errors.push(syn::Error::new(
            constness.span,
            "`#[locked]` cannot be used on a `const fn`",
        ));
    } else if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span,
            "`#[locked]` can only be used on an `async fn`",
        ));
    }
    let return_type = errors.check(result_type(sig));
    errors.finish()?;
    Ok(return_type.expect("checked above"))
}

fn result_type(sig: &Signature) -> syn::Result<&Type> {
    let ty = match &sig.output {
        ReturnType::Type(_, ty) => &**ty,
        ReturnType::Default => {
            return Err(syn::Error::new(
                sig.ident.span(),
                format!(
                    "`{}` returns `()`; a `#[locked]` function must return a `Result`, whose \
                     error type the lock's `relock::Error` is converted into",
                    sig.ident
                ),
            ))
        }
    };
    let mut inner = ty;
    loop {
        match inner {
            Type::Group(group) => inner = &group.elem,
            Type::Paren(paren) => inner = &paren.elem,
            Type::Path(path)
                if path.qself.is_none()
                    && path
                        .path
                        .segments
                        .last()
                        .is_some_and(|segment| segment.ident == "Result") =>
            {
                return Ok(ty)
            }
            _ => {
                return Err(syn::Error::new(
                    ty.span(),
                    "a `#[locked]` function must return a `Result` (`Result<T, E>`, or an alias \
                     such as `io::Result<T>`), whose error type the lock's `relock::Error` is \
                     converted into",
                ))
            }
        }
    }
}

/// Every name the parameters bind: `self`, plain names, and names inside patterns such as
/// `Path(user_id)` or `Point { x, y: mut y2 }`.
fn param_names(sig: &Signature) -> Vec<Ident> {
    let mut names = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => names.push(Ident::new("self", receiver.self_token.span)),
            FnArg::Typed(typed) => pattern_names(&typed.pat, &mut names),
        }
    }
    names
}

fn pattern_names(pat: &Pat, names: &mut Vec<Ident>) {
    match pat {
        Pat::Ident(pat) => {
            names.push(pat.ident.clone());
            if let Some((_, sub)) = &pat.subpat {
                pattern_names(sub, names);
            }
        }
        Pat::Reference(pat) => pattern_names(&pat.pat, names),
        Pat::Paren(pat) => pattern_names(&pat.pat, names),
        Pat::Type(pat) => pattern_names(&pat.pat, names),
        Pat::Struct(pat) => pat.fields.iter().for_each(|f| pattern_names(&f.pat, names)),
        Pat::Tuple(pat) => pat.elems.iter().for_each(|p| pattern_names(p, names)),
        Pat::TupleStruct(pat) => pat.elems.iter().for_each(|p| pattern_names(p, names)),
        Pat::Slice(pat) => pat.elems.iter().for_each(|p| pattern_names(p, names)),
        Pat::Or(pat) => pat.cases.iter().for_each(|p| pattern_names(p, names)),
        // Wildcards, rest patterns and literals bind nothing; rustc rejects what is refutable.
        _ => {}
    }
}

/// The expression building one key: `format!` over the placeholders, or the text itself.
fn key_expr(key: &Key, params: &[Ident]) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let mut format = String::new();
    let mut values = Vec::new();
    for part in key.parts.as_ref().map_err(Clone::clone)? {
        match part {
            Part::Text(text) => format.push_str(&text.replace('{', "{{").replace('}', "}}")),
            Part::Placeholder(placeholder) => {
                if let Some(value) = errors.check(placeholder_expr(placeholder, params)) {
                    format.push_str("{}");
                    values.push(value);
                }
            }
        }
    }
    errors.finish()?;
    let span = key.lit.span();
    if values.is_empty() {
        let text = syn::LitStr::new(&key.lit.value(), span);
        return Ok(quote_spanned!(span=> ::relock::__private::String::from(#text)));
    }
    let format = syn::LitStr::new(&format, span);
    Ok(quote_spanned!(span=> ::relock::__private::format!(#format, #(#values),*)))
}

fn placeholder_expr(placeholder: &Placeholder, params: &[Ident]) -> syn::Result<TokenStream> {
    let Placeholder {
        source,
        root,
        accesses,
    } = placeholder;
    if !params.iter().any(|param| param == root) {
        let known = if params.is_empty() {
            "the function has no parameters".to_owned()
        } else {
            let names: Vec<String> = params.iter().map(|param| format!("`{param}`")).collect();
            format!("the parameters are {}", names.join(", "))
        };
        return Err(syn::Error::new(
            root.span(),
            format!("unknown placeholder `{source}`: no parameter named `{root}`; {known}"),
        ));
    }
    let mut expr = root.to_token_stream();
    for access in accesses {
        let dot = Token![.](root.span());
        expr.extend(match access {
            Access::Field(field) => quote!(#dot #field),
            Access::Index(index) => quote!(#dot #index),
            Access::Method(method) => quote_spanned!(method.span()=> #dot #method()),
        });
    }
    Ok(expr)
}

/// Replaces every `impl Trait` with `_`, which a `let` type annotation accepts.
fn erase_impl_trait(ty: &Type) -> Type {
    struct Eraser;
    impl VisitMut for Eraser {
        fn visit_type_mut(&mut self, ty: &mut Type) {
            if let Type::ImplTrait(impl_trait) = ty {
                *ty = Type::Infer(syn::TypeInfer {
                    underscore_token: Token![_](impl_trait.span()),
                });
            } else {
                syn::visit_mut::visit_type_mut(self, ty);
            }
        }
    }
    let mut ty = ty.clone();
    Eraser.visit_type_mut(&mut ty);
    ty
}
