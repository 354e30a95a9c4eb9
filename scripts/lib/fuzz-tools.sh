# shellcheck shell=bash
# Sourced by scripts/setup.sh (installs) and scripts/fuzz.sh (uses): where
# the project's cargo-fuzz lives. It is installed from the crate registry
# into $KT_CACHE, keyed by its version, not into the user's ~/.cargo/bin, so
# set-up needs no writable Rust toolchain and a fresh machine gets exactly
# this one. Owns the version and the path; nothing else.

KT_CARGO_FUZZ_VERSION=0.13.2

# kt_cargo_fuzz_root: the `cargo install --root` of the project's cargo-fuzz.
kt_cargo_fuzz_root() {
	echo "${KT_CACHE:-$HOME/.cache/kerntransport}/tools/cargo-fuzz-$KT_CARGO_FUZZ_VERSION"
}
