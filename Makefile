# maild: `make demo` runs the main job end to end; `make test` runs every check.
# Both work on a fresh machine: they create .venv and install what they need.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test demo lint typecheck unit system-deps bench soak clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

# Debian packages the tests and the demo run for real: gpg and its agent,
# sqop (Sequoia) to check interoperability with an independent OpenPGP stack,
# systemd's tools (systemd-analyze, -sysusers, -tmpfiles) plus procps
# (/bin/kill, the unit's ExecReload) to check the files in systemd/, and
# Postfix as a real smarthost (tests/postfix.py runs a private instance;
# "No configuration" keeps the package from setting up a system one on port 25),
# and faketime (libfaketime) to step the running daemon's wall clock.
# Each package is named with a file it provides; any missing means one install.
DEBIAN_DEPS := gnupg:/usr/bin/gpg gpg-agent:/usr/bin/gpg-agent sqop:/usr/bin/sqop \
	systemd:/usr/bin/systemd-analyze procps:/bin/kill postfix:/usr/sbin/postfix \
	faketime:/usr/bin/faketime

system-deps:
	@missing="$(foreach d,$(DEBIAN_DEPS),$(if $(wildcard $(lastword $(subst :, ,$(d)))),,$(firstword $(subst :, ,$(d)))))"; \
	if [ -n "$$(echo $$missing)" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  echo "postfix postfix/main_mailer_type select No configuration" | $(SUDO) debconf-set-selections && \
	  $(SUDO) apt-get update && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y --no-install-recommends $$missing; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check maild tests
	$(BIN)/ruff format --check maild tests

typecheck: $(STAMP)
	$(BIN)/mypy maild

unit: $(STAMP) system-deps
	$(BIN)/pytest -q

test: lint typecheck unit

demo: $(STAMP) system-deps
	$(BIN)/maild demo

bench: $(STAMP) system-deps
	$(BIN)/python -m bench

# A simulated week: 100 advisories, 50 organisations, restarts, crashes, clock steps;
# prints PASS/FAIL per invariant (exit 1 on any FAIL) and the figures. A few minutes.
soak: $(STAMP) system-deps
	$(BIN)/python -m bench soak

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
