# cilium-rs developer entry points. Every target that needs system packages runs `deps` first,
# so `make run` and `make test` work on a fresh Debian 12 machine as root.

CARGO ?= cargo
PREFIX ?= /usr/local
CNI_BIN_DIR ?= /opt/cni/bin
CNI_CONF_DIR ?= /etc/cni/net.d
RELEASE_DIR := target/release
AGENT_FLAGS ?=

.PHONY: deps build install run test lint fmt bench clean-test-leftovers

deps:
	./hack/deps.sh

build: deps
	$(CARGO) build --release --workspace --bins

install: build
	install -D -m 0755 $(RELEASE_DIR)/cilium-agent $(PREFIX)/bin/cilium-agent
	install -D -m 0755 $(RELEASE_DIR)/ciliumctl $(PREFIX)/bin/ciliumctl
	install -D -m 0755 $(RELEASE_DIR)/cilium-cni $(CNI_BIN_DIR)/cilium-cni
	@if [ -f deploy/cni/05-cilium.conflist ]; then \
		install -D -m 0644 deploy/cni/05-cilium.conflist $(CNI_CONF_DIR)/05-cilium.conflist; fi

# Runs the agent in the foreground on its built-in standalone default. Ctrl-C stops it.
run: install
	$(PREFIX)/bin/cilium-agent $(AGENT_FLAGS)

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# All tests, privileged ones included (they need root; with CI=true a skip is a failure).
test: deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast

bench: deps
	$(CARGO) build --release --workspace --bins
	./target/release/bench-all

# Regenerates docs/cli.md from the --help text of every ciliumctl command
# (ciliumctl/tests/cli_docs.rs checks it in `make test`).
.PHONY: docs
docs:
	UPDATE_CLI_DOCS=1 $(CARGO) test -p ciliumctl --test cli_docs
