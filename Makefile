# tcpinc-testbed: one command sets up and runs the evaluation, one sets up and tests.
# Every target installs what is missing first and nothing when all is there.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
APT_PACKAGES := mininet iptables iproute2 iputils-ping net-tools tcpdump ethtool iperf3 \
                libnetfilter-queue-dev gcc python3-dev openssl util-linux tshark nftables curl \
                clang llvm libbpf-dev bpftool
# The in-kernel ENO datapath (testbed/eno/bpf): compiled once here, only loaded at run time.
BPF_OBJ := testbed/eno/bpf/eno.bpf.o

# mypy checks exactly these files (a new module joins by being added here, on purpose):
# the protocol cores strictly, the rest with the default checks.
MYPY_STRICT := testbed/eno/__init__.py testbed/eno/bench.py testbed/eno/config.py \
    testbed/eno/bpf/__init__.py testbed/eno/bpf/attach.py testbed/eno/bpf/datapath.py \
    testbed/eno/bpf/maps.py \
    testbed/eno/conn.py testbed/eno/constants.py testbed/eno/control.py \
    testbed/eno/controlserver.py testbed/eno/ctzero.py \
    testbed/eno/engine.py testbed/eno/listeners.py \
    testbed/eno/errors.py testbed/eno/events.py testbed/eno/fastopt.py testbed/eno/hook.py \
    testbed/eno/marks.py testbed/eno/negotiation.py testbed/eno/option.py testbed/eno/rules.py \
    testbed/eno/selection.py testbed/eno/tcp_options.py testbed/eno/transitions.py testbed/teps/__init__.py \
    testbed/teps/base.py testbed/teps/benchflights.py testbed/teps/enotest.py testbed/teps/tcpcrypt/__init__.py \
    testbed/teps/tcpcrypt/bench.py testbed/teps/tcpcrypt/constants.py \
    testbed/teps/tcpcrypt/core.py testbed/teps/tcpcrypt/errors.py testbed/teps/tcpcrypt/keys.py \
    testbed/teps/tcpcrypt/loopback.py testbed/teps/tcpcrypt/options.py \
    testbed/teps/tcpcrypt/resumption.py testbed/teps/tcpcrypt/state.py \
    testbed/teps/tcpcrypt/wire.py testbed/teps/tls/__init__.py testbed/teps/tls/_ossl.py \
    testbed/teps/tls/bench.py testbed/teps/tls/constants.py testbed/teps/tls/core.py \
    testbed/teps/tls/errors.py testbed/teps/tls/identity.py testbed/teps/tls/options.py \
    testbed/teps/tls/pair.py testbed/teps/tls/session_cache.py testbed/teps/tls/state.py testbed/teps/machine.py \
    testbed/packet.py
MYPY_FILES := experiments/__init__.py experiments/common.py experiments/cost.py \
    experiments/fallback.py experiments/latency.py experiments/loss.py experiments/plotting.py \
    experiments/report.py experiments/roundtrips.py experiments/runner.py experiments/style.py \
    experiments/theory.py middleboxes/__init__.py middleboxes/base.py middleboxes/helper.py \
    middleboxes/iptables.py middleboxes/nfq.py middleboxes/nfqboxes.py middleboxes/packet.py \
    middleboxes/pktmodel.py middleboxes/synboxes.py middleboxes/proxy.py middleboxes/proxyboxes.py \
    middleboxes/resegment.py middleboxes/tlsboxes.py middleboxes/tlsparse.py testbed/__init__.py \
    testbed/__main__.py testbed/apps/__init__.py testbed/apps/client.py \
    testbed/apps/proto_tcpcrypt.py testbed/apps/tcpcrypt_cache.py testbed/apps/proto_tls.py testbed/apps/proto_tls_arm.py \
    testbed/apps/proto_tls_plain.py testbed/apps/server.py \
    testbed/apps/registry.py testbed/apps/transport.py testbed/apps/wire.py testbed/bench_replay.py \
    testbed/bench_teps.py testbed/bench_wakeup.py \
    testbed/cli.py testbed/errors.py testbed/log.py testbed/net/__init__.py testbed/net/bench.py \
    testbed/net/bench_scale.py testbed/net/bench_udp.py testbed/net/capture.py testbed/net/delayhelper.py \
    testbed/net/delayline.py testbed/net/delayline_sched.py \
    testbed/net/flows.py testbed/net/network.py testbed/net/pcap.py testbed/net/rttprobe.py \
    testbed/net/shaping.py testbed/net/state.py testbed/probe.py testbed/stream.py \
    testbed/streamconfig.py testbed/tepio.py testbed/workload.py topologies/__init__.py \
    topologies/base.py topologies/catalogue.py
# Capture analysis: key logs, ladder diagrams (tools/wireshark/ holds the Lua dissector).
# Transparent mode.
MYPY_FILES += testbed/transparent/__init__.py testbed/transparent/control.py \
    testbed/transparent/host.py testbed/transparent/proxy.py testbed/transparent/relay.py \
    testbed/transparent/rules.py testbed/transparent/dial.py testbed/transparent/options.py \
    testbed/transparent/queries.py testbed/transparent/bench.py \
    experiments/appnet.py experiments/bulk.py experiments/web.py
MYPY_FILES += testbed/keylog.py testbed/ladder.py testbed/ladder_draw.py experiments/ladders.py
MYPY_FILES += testbed/net/hosts.py testbed/net/plan.py testbed/net/procs.py topologies/shapes.py
MYPY_FILES += testbed/net/timesplit.py experiments/timing.py testbed/bench_endpoints.py
# Checks of user-given output paths and names.
MYPY_FILES += testbed/userinput.py
MYPY_FILES += experiments/datapath.py
MYPY_FILES += testbed/synstream.py testbed/apps/proto_syn.py experiments/syndata.py
# Executors: points here or on a Dask cluster.
MYPY_FILES += experiments/executors.py experiments/dask_executor.py experiments/projection.py \
    experiments/compare.py experiments/runtime.py \
    experiments/bench_scheduling.py experiments/idle.py
MYPY_FILES += testbed/apps/priority.py testbed/earlytep.py testbed/establish.py testbed/streamio.py testbed/helperproc.py

.PHONY: setup setup-dev apt venv venv-dev helper bpf pyc demo test test-unit lint clean-net

# setup: what the evaluation runs on; setup-dev adds the test and lint tools.
setup: apt venv helper bpf pyc
setup-dev: setup venv-dev

# The project's bytecode, written once here: every point of an experiment starts fresh Python
# processes (server, client, hooks, boxes), and where PYTHONDONTWRITEBYTECODE is set (as on the
# development VM) each would otherwise compile every module it imports again (about 0.08 s of
# CPU per process there). Python still reads the files; a changed source is compiled again
# here (compileall skips the rest).
pyc: venv
	@$(PY) -m compileall -q testbed topologies middleboxes experiments

# The compiled delay line (testbed/net/delayline_c); without it links fall back to the Python one.
# The namespace holder (testbed/net/nshold_c); without it each host is one mnexec (slower start).
helper: apt
	@$(MAKE) -s -C testbed/net/delayline_c || \
	  echo "compiled delay line not built (see the gcc error above): links use the Python delay line"
	@$(MAKE) -s -C testbed/net/nshold_c || \
	  echo "namespace holder not built (see the gcc error above): hosts start one mnexec each"

bpf: $(BPF_OBJ)

# -I: Debian keeps asm/types.h under the multiarch include directory. The headers are
# prerequisites too: a change to one rebuilds the object.
$(BPF_OBJ): testbed/eno/bpf/eno.bpf.c testbed/eno/bpf/eno_maps.h testbed/eno/bpf/eno_options.h
	clang -O2 -g -Wall -target bpf -I/usr/include/$$(gcc -dumpmachine) -c $< -o $@

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
venv-dev: $(VENV)/.installed-dev

# Installed with uv (from PyPI, into the venv), which fetches and unpacks in parallel: about
# 20 s on a fresh machine against 36 s for pip. Where uv cannot be had or fails (an index only
# pip is configured for), pip installs the same. Bytecode is compiled at install, as pip does:
# where PYTHONDONTWRITEBYTECODE is set, an import would otherwise compile again every time.
VENV_INSTALL = $(PY) -m pip install -q uv && \
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -e $(1) || \
	{ echo "uv did not install $(1) (see above): installing with pip"; \
	  $(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q -e $(1); }

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(call VENV_INSTALL,.)
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	@$(call VENV_INSTALL,'.[dev]')
	@touch $@

demo: setup
	$(VENV)/bin/tcpinc run all --quick

# The suite runs on PYTEST_WORKERS pytest-xdist workers (0: in this process, serially). Most
# emulation tests wait on emulated RTTs and kernel timers, not on the CPU, so workers beyond
# the core count still shorten the run. Each worker holds at most two tests at a time
# (--maxschedchunk 1), taken in the order tests/conftest.py sets: the longest first.
# Any pytest exit code but 0 fails the target, so a run that collected no test (exit code 5)
# fails too. PYTEST_ARGS adds pytest options (e.g. --durations=40).
PYTEST_WORKERS ?= 4
PYTEST_ARGS ?=

test: lint
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist load --maxschedchunk 1 $(PYTEST_ARGS) tests

test-unit: setup-dev
	$(PY) -m pytest -q tests -m "not emulation"

lint: setup-dev
	$(VENV)/bin/ruff check testbed topologies middleboxes experiments tests
	$(VENV)/bin/mypy --strict $(MYPY_STRICT)
	$(VENV)/bin/mypy $(MYPY_FILES)

clean-net: setup
	$(VENV)/bin/tcpinc clean
