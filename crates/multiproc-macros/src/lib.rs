//! Attribute macros for multiproc. Use them through the `multiproc` crate:
//! `#[multiproc::main]` and `#[multiproc::test]`.

use proc_macro::TokenStream;
use quote::quote;
use syn::{ItemFn, parse_macro_input};

/// Makes `main` call multiproc's start-up hook first.
///
/// With the `spawn` and `forkserver` start methods a child runs the program again; the hook
/// turns that run into the child before anything else in `main` happens.
///
/// ```ignore
/// #[multiproc::main]
/// fn main() {
///     // ...
/// }
/// ```
#[proc_macro_attribute]
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[multiproc::main] takes no arguments",
        )
        .to_compile_error()
        .into();
    }
    let mut f = parse_macro_input!(item as ItemFn);
    if f.sig.ident != "main" {
        return syn::Error::new_spanned(&f.sig.ident, "#[multiproc::main] goes on fn main")
            .to_compile_error()
            .into();
    }
    let body = &f.block;
    f.block = syn::parse_quote!({
        ::multiproc::init();
        #body
    });
    quote!(#f).into()
}

/// A `#[test]` that may start processes with every start method.
///
/// The test function becomes the start-up hook: a child started from the test re-runs the
/// test binary filtered to a test carrying this attribute, and the hook turns it into the
/// child. Works under `cargo test` and `cargo nextest`.
///
/// ```ignore
/// #[multiproc::test]
/// fn starts_a_child() {
///     // ...
/// }
/// ```
#[proc_macro_attribute]
pub fn test(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[multiproc::test] takes no arguments",
        )
        .to_compile_error()
        .into();
    }
    let mut f = parse_macro_input!(item as ItemFn);
    let name = f.sig.ident.to_string();
    let body = &f.block;
    f.block = syn::parse_quote!({
        ::multiproc::__private::test_hook(concat!(module_path!(), "::", #name));
        #body
    });
    quote!(#[test] #f).into()
}
