//! Nothing here: this package only holds palisade's criterion benches (see `Cargo.toml`).
