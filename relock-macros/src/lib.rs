//! The `#[locked]` attribute macro for relock; use it as `relock::locked`.

use proc_macro::TokenStream;

/// Wraps an `async fn` in acquire → body → release. (Placeholder until the macro lands.)
#[proc_macro_attribute]
pub fn locked(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}
