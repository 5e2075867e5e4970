//! What `#[locked]` expands to compiles, without a warning, and runs: each file in `expand/` is a
//! module whose `main` this test runs, one after another (they share the global locker). The
//! compile errors are `ui.rs`'s.
//!
//! These were trybuild `pass` cases; as modules of one test they are built with the workspace's
//! dependencies instead of a second copy of them in trybuild's own target directory.

#[path = "expand/attributes.rs"]
mod attributes;
#[path = "expand/control_flow.rs"]
mod control_flow;
#[path = "expand/free_fn.rs"]
mod free_fn;
#[path = "expand/literal_braces.rs"]
mod literal_braces;
#[path = "expand/methods.rs"]
mod methods;
#[path = "expand/multiple_keys.rs"]
mod multiple_keys;
#[path = "expand/options.rs"]
mod options;
#[path = "expand/patterns.rs"]
mod patterns;
#[path = "expand/read.rs"]
mod read;
#[path = "expand/result_aliases.rs"]
mod result_aliases;
#[path = "expand/send.rs"]
mod send;
#[path = "expand/trait_fns.rs"]
mod trait_fns;

#[test]
fn every_expansion_compiles_and_runs() {
    attributes::main();
    control_flow::main();
    free_fn::main();
    literal_braces::main();
    methods::main();
    multiple_keys::main();
    options::main();
    patterns::main();
    read::main();
    result_aliases::main();
    send::main();
    trait_fns::main();
}
