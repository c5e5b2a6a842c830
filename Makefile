# kiln — developer entry points. `make demo` and `make test` install what they need by themselves.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kiln-installed

# Debian packages: real components the tests start (registry, runtimes, image tools) and the
# host inputs the examples are built from (python3.11, busybox-static).
DEBS_DEMO := python3.11 python3-venv busybox-static docker.io runc curl ca-certificates \
             qemu-system-x86 linux-image-cloud-amd64 erofs-utils dmsetup
DEBS_TEST := $(DEBS_DEMO) gcc libc6-dev skopeo umoci oci-image-tool buildah docker-registry openssl \
             etcd-server etcd-client chromium \
             cpio erofs-utils cryptsetup-bin util-linux iproute2 gpg gpgv debian-archive-keyring mmdebstrap \
             podman containerd tmux fdisk zstd time haproxy

.PHONY: help debs-demo debs-test venv lint typecheck unit test demo bench clean lock

help:
	@echo "make demo   build the examples, load python-web into a private Docker engine and curl it"
	@echo "make test   lint, type-check and run the whole test suite (unit + integration)"
	@echo "make bench  run the benchmarks (build, verify, push, agent) against the peer tools"

debs-demo:
	@.ci/ensure-debs $(DEBS_DEMO)

debs-test:
	@.ci/ensure-debs $(DEBS_TEST)

$(STAMP): pyproject.toml
	@if [ ! -x $(BIN)/python ]; then $(PYTHON) -m venv $(VENV); fi
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,dev]'
	@touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

unit: venv
	.ci/sandboxed $(BIN)/pytest -q -m "not integration"

test: debs-test venv lint typecheck
	.ci/sandboxed $(BIN)/pytest -q

demo: debs-demo venv
	$(BIN)/python examples/demo.py

# Each bench runs the peer tool in the same run and prints ratios (nothing is asserted).
# bench/scale.py --large adds the 1 GB and 100,000-file cases (several minutes more).
bench: debs-test venv
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/build.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/push.py
	$(BIN)/python bench/agent.py
	$(BIN)/python bench/debian.py
	$(BIN)/python bench/vm.py

# The Containerfile's hashed requirements (runtime and build backend), from PyPI, for the image's
# Python 3.11 on x86_64 Linux.
lock: venv
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip compile pyproject.toml requirements-build.in --generate-hashes --python-version 3.11 \
	    --python-platform x86_64-unknown-linux-gnu --index-url https://pypi.org/simple --no-header \
	    --emit-index-url -o requirements.lock

clean:
	rm -rf out demo-out .pytest_cache .mypy_cache .ruff_cache
