# The template repository's two entry points. Nothing needs installing first but Python 3.11+ and
# make: uv is installed on first use.
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := python3 -m uv
endif

.DEFAULT_GOAL := help
# the template's own Python: `make lint` fixes it, tests/test_lint.py checks it (reads this line)
OWN_CODE := tests benchmarks tools hooks local_extensions.py runtime
.PHONY: help demo test fast lint docs

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-6s %s\n", $$1, $$2}'

uv-present:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install -q uv

demo: uv-present ## generate a default project in build/demo, set it up, run its pipeline, build its image
	$(UV) run --group test python tools/demo.py

# One pytest-xdist worker per core; the tests that share a generated project stay on one worker.
test: uv-present ## the template's tests: the fast lane and the slow lane (generated projects run for real)
	$(UV) run --group test pytest -n auto --dist loadgroup

fast: uv-present ## only the fast lane: the template baked, the runtime tested (about two minutes)
	$(UV) run --group test pytest -m "not slow"

lint: uv-present ## fix and format the template's own Python with ruff (the fast lane checks it)
	$(UV) run --group test ruff check --fix $(OWN_CODE)
	$(UV) run --group test ruff format $(OWN_CODE)

docs: uv-present ## build the documentation site into build/site
	$(UV) run --group test mkdocs build --strict -f docs/mkdocs.yml
