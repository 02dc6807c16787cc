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

# Debian packages the tests and the demo run for real: gpg and its agent, and
# sqop (Sequoia) to check interoperability with an independent OpenPGP stack.
system-deps:
	@command -v gpg >/dev/null && command -v gpg-agent >/dev/null && command -v sqop >/dev/null || \
	  { $(SUDO) apt-get update && \
	    $(SUDO) apt-get install -y --no-install-recommends gnupg gpg-agent sqop; }

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
