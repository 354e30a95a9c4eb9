# kerntransport: the single entry point.
#   make demo   build everything, boot the test image, show host <-> guest kernel messages
#   make test   the whole test suite (what .ci/run runs)
#   make packages  Debian packages into target/debian (or $KT_PACKAGES_DIR)
# Built kernels, QEMU and images are cached outside the repo in $(KT_CACHE),
# keyed by their inputs.
SHELL := /bin/bash
export KT_CACHE ?= $(HOME)/.cache/kerntransport
CARGO ?= cargo

.PHONY: all setup build demo test lint test-rust test-driver test-e2e packages clean help

all: build

help:
	@sed -n '2,7p' Makefile

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --workspace --release

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test-rust: setup
	$(CARGO) test --workspace

demo: setup
	@scripts/demo.sh

test: setup
	@scripts/test.sh

packages: setup
	@scripts/packages.sh

clean:
	$(CARGO) clean
