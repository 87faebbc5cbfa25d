# Two commands for a fresh machine: `make demo` and `make test` (README.md).
# Both create .venv, install the package with its C extension, and are quick once set up.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
INSTALL_DEPS := pyproject.toml setup.py native/segment_codec.c native/segment_codec.h native/build_codec.py
ASAN_DIR := build/asan
PYTEST_ARGS ?=
# pytest-xdist workers per pass (many tests wait on servers and child processes); -n 0 for pdb/-s
PYTEST_WORKERS ?= 2
FUZZ_SECONDS ?= 240
ASAN_FUZZ_SECONDS ?= 60
FUZZ_ARGS ?=
FUZZ_FAILURES := $(CURDIR)/build/fuzz-failures
ASAN_TESTS := test_codec_native.py test_codec_equal.py test_codec_damage.py test_codec.py

.PHONY: demo test lint test-c test-python asan fuzz bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-demo: $(BIN)/python $(INSTALL_DEPS)
	$(PIP) install -q -e .
	@touch $@

$(VENV)/.installed-test: $(BIN)/python $(INSTALL_DEPS)
	$(PIP) install -q -e '.[test]'
	@touch $@ $(VENV)/.installed-demo

demo: $(VENV)/.installed-demo
	$(BIN)/python examples/quickstart.py

# The whole suite runs once per codec backend; STREAMLIB_PURE=0 fails if the C codec is missing.
test: lint test-c test-python

lint: $(VENV)/.installed-test
	$(BIN)/ruff check streamlib tests benchmarks examples native
	$(BIN)/mypy --strict streamlib
	$(BIN)/mypy --strict tests/typing/user_program.py

test-c: $(VENV)/.installed-test
	STREAMLIB_PURE=0 $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

test-python: $(VENV)/.installed-test
	STREAMLIB_PURE=1 $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# The C codec rebuilt with AddressSanitizer and UBSan, in a copy of the package under
# build/asan (run from there so that it is imported first: the fuzz harness and conftest.py
# check that it is), then the codec tests and the fuzz harness's codec and WAL targets for
# ASAN_FUZZ_SECONDS. Memory is measured by tracemalloc alone there: ASan's quarantine holds
# freed memory, so the resident set says nothing.
asan: $(VENV)/.installed-test
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR)
	cp -r streamlib $(ASAN_DIR)/ && rm -f $(ASAN_DIR)/streamlib/codec/_segment_codec*.so
	$(BIN)/python native/build_codec.py --sanitize $(ASAN_DIR) > $(ASAN_DIR)/build.log
	cd $(ASAN_DIR) && \
	  export LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
	    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	    STREAMLIB_PURE=0 SANITIZED_CODEC=1 && \
	  $(abspath $(BIN))/python -m pytest -q -p no:cacheprovider -c $(CURDIR)/pyproject.toml \
	    --rootdir $(CURDIR) $(addprefix $(CURDIR)/tests/unit/,$(ASAN_TESTS)) && \
	  PYTHONPATH=$(CURDIR)/tests $(abspath $(BIN))/python -m fuzz --backend c --memory traced \
	    --seconds $(ASAN_FUZZ_SECONDS) --targets codec wal --failures $(FUZZ_FAILURES) $(FUZZ_ARGS)

# Every decoder of stored bytes fed mutated inputs (tests/fuzz): FUZZ_SECONDS in all, half per
# codec backend, each in a process of its own. Prints the inputs tried per target and fails on
# any violation (an undocumented exception, a second of CPU, 64 MiB), whose input is saved
# under build/fuzz-failures. FUZZ_ARGS: e.g. --seed 7, --targets codec.
fuzz: $(VENV)/.installed-test
	PYTHONPATH=tests $(BIN)/python -m fuzz --backend both --seconds $(FUZZ_SECONDS) \
	  --failures $(FUZZ_FAILURES) $(FUZZ_ARGS)

$(VENV)/.installed-bench: $(BIN)/python $(INSTALL_DEPS)
	$(PIP) install -q -e '.[test,bench]'
	@touch $@ $(VENV)/.installed-test $(VENV)/.installed-demo

# The benchmarks of docs/performance.md, one after the other (each takes up to a few minutes).
bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/codec.py
	$(BIN)/python benchmarks/wal.py
	$(BIN)/python benchmarks/stream.py
	$(BIN)/python benchmarks/read.py
	$(BIN)/python benchmarks/shared.py
	$(BIN)/python benchmarks/lifecycle.py
	$(BIN)/python benchmarks/diskless.py
	$(BIN)/python benchmarks/verify.py
	$(BIN)/python benchmarks/fixtures.py
	$(BIN)/python benchmarks/kafka.py

clean:
	rm -rf $(VENV) build *.egg-info streamlib/codec/_segment_codec*.so .pytest_cache .hypothesis
