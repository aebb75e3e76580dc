# Two commands on a fresh Debian bookworm machine, as root:
#   make demo   installs everything, then runs the demo
#   make test   installs everything, then runs the whole suite
# Both are quick once set up: each step leaves a stamp and reruns only when its inputs change.

SHELL := /bin/bash
# Debian's Python first: the daemon drops to an unprivileged user, who must be able to
# read the interpreter (a Python installed under /root, such as pyenv's, is not).
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMPS := $(VENV)/.stamps
APT_PACKAGES := iptables iproute2 ipset libnetfilter-queue-dev libnfnetlink-dev gcc \
	python3-dev python3-venv tcpdump kmod procps curl iputils-ping dnsutils iperf3 \
	redis-server systemd vagrant

.PHONY: all setup test demo lint typecheck bench pcaps dist clean

all: test

$(STAMPS)/apt: Makefile
	@mkdir -p $(STAMPS)
	@if command -v apt-get >/dev/null 2>&1; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages: $$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	  fi; \
	else echo "apt-get not found: install $(APT_PACKAGES) by your system's means"; fi
	@touch $@

$(BIN)/python:
	@if ! $(PYTHON) -m venv $(VENV) 2>/dev/null; then \
	  echo "python3 -m venv failed; installing python3-venv"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; \
	  rm -rf $(VENV); $(PYTHON) -m venv $(VENV); fi
	@$(BIN)/python -m pip install -q --upgrade pip

$(STAMPS)/pip: pyproject.toml $(BIN)/python | $(STAMPS)/apt
	@mkdir -p $(STAMPS)
	$(BIN)/python -m pip install -q -e '.[dev,live]'
	@touch $@

setup: $(STAMPS)/apt $(STAMPS)/pip

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/python -m appliance.demo

bench: setup
	$(BIN)/python bench/replay.py

pcaps: setup
	$(BIN)/python pcaps/build.py

dist: setup
	$(BIN)/python -m build

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
