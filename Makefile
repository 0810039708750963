# tcpinc-testbed: one command sets up and runs the evaluation, one sets up and tests.
# Every target installs what is missing first and nothing when all is there.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
APT_PACKAGES := mininet iptables iproute2 iputils-ping net-tools tcpdump ethtool iperf3 \
                libnetfilter-queue-dev gcc python3-dev openssl util-linux tshark

.PHONY: setup apt venv demo test test-unit lint clean-net

setup: apt venv

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

demo: setup
	$(VENV)/bin/tcpinc run all --quick

test: setup
	$(PY) -m pytest -q tests

test-unit: setup
	$(PY) -m pytest -q tests -m "not emulation"

lint: setup
	$(VENV)/bin/ruff check testbed topologies middleboxes experiments tests

clean-net: setup
	$(VENV)/bin/tcpinc clean
