# Task Manager — a newcomer needs only `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
FLASK := $(BIN)/flask --app wsgi
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian packages: what the product runs on, plus the real servers the tests start.
RUN_PKGS := redis-server openssh-client sshpass git python3-venv bubblewrap util-linux
TEST_PKGS := openssh-server sudo postgresql chromium inetutils-telnetd inetutils-telnet slapd ldap-utils \
             xrdp x11vnc xvfb xauth x11-apps x11-utils x11-xserver-utils openssl procps iproute2

.PHONY: run test lint demo system-run system-test venv migrate admin

run: system-run venv migrate
	$(FLASK) serve

demo: system-test venv migrate
	$(BIN)/python bench/demo.py

test: system-test venv
	bash tests/run.sh

# ruff and mypy on the packages pyproject.toml names (both also run by `make test`).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

system-run:
	@missing=$$(for p in $(RUN_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing: $$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; fi

system-test: system-run
	@missing=$$(for p in $(TEST_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing: $$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; fi

# The virtualenv is rebuilt only when requirements.txt changes.
venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	touch $@

migrate: venv
	$(FLASK) db upgrade

admin: venv
	$(FLASK) users ensure-admin
