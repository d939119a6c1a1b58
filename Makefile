# Two commands on a fresh machine with only Python 3.11+ and make:
#   make drill   full DR drill against an embedded two-region AWS (moto on 127.0.0.1)
#   make test    every static gate (make check), then the whole test suite
# make check alone runs the static gates; docs/checks.md says what each one checks.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# One pytest worker per core, whole files per worker: module-scoped worlds share each worker's moto server.
PYTEST_ARGS ?= -n auto --dist loadfile

# checkov pins an old boto3, so it lives in its own venv. The stamp names the version: changing it
# reinstalls.
CHECKOV_VERSION := 3.3.30
CHECK_VENV  := .venv-check
CHECK_BIN   := $(CHECK_VENV)/bin
CHECK_STAMP := $(CHECK_VENV)/.checkov-$(CHECKOV_VERSION)-stamp

# Every stage of .chalice/config.json is packaged and linted (read when the gate runs).
STAGES = $(shell $(PYTHON) -c 'import json; print(" ".join(json.load(open(".chalice/config.json"))["stages"]))')
PACKAGE_DIR := build/package
# chalice package calls no AWS API but reads the region. Dummy credentials and no profile, config or
# credentials file: a developer's real credentials are never read, CI needs none.
OFFLINE_AWS := -u AWS_SESSION_TOKEN -u AWS_PROFILE AWS_DEFAULT_REGION=us-west-2 AWS_ACCESS_KEY_ID=offline \
	AWS_SECRET_ACCESS_KEY=offline AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
CFN_LINT_REGIONS := us-east-1 us-west-2

.PHONY: drill test check lint typecheck cfn-lint package-lint checkov bandit iam-policies unit bench clean deploy
.PHONY: static-stability browser report-png

$(STAMP): pyproject.toml requirements-lock.txt requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements-lock.txt -e '.[dev]'
	touch $(STAMP)

$(CHECK_STAMP):
	$(PYTHON) -m venv $(CHECK_VENV)
	$(CHECK_BIN)/python -m pip install --quiet --disable-pip-version-check 'checkov==$(CHECKOV_VERSION)'
	rm -f $(CHECK_VENV)/.checkov-*-stamp
	touch $(CHECK_STAMP)

drill: $(STAMP)
	$(BIN)/jams-dr drill $(ARGS)

# ------------------------------------------------------------------------------ static gates
check: lint typecheck cfn-lint package-lint checkov bandit iam-policies

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Both regions jams-dr uses; no rule is ignored (informational ones included).
cfn-lint: $(STAMP)
	$(BIN)/cfn-lint --regions $(CFN_LINT_REGIONS) -- templates/*.yaml

# What `chalice deploy` would create, for every stage: chalice package needs the package registry
# (it bundles requirements.txt; wheels are cached in .chalice/deployments, gitignored), no account.
package-lint: $(STAMP)
	@set -e; for stage in $(STAGES); do \
		echo "chalice package --stage $$stage -> $(PACKAGE_DIR)/$$stage"; \
		rm -rf $(PACKAGE_DIR)/$$stage; \
		env $(OFFLINE_AWS) $(BIN)/chalice package --stage $$stage $(PACKAGE_DIR)/$$stage >/dev/null; \
		$(BIN)/cfn-lint --regions $(CFN_LINT_REGIONS) -- $(PACKAGE_DIR)/$$stage/sam.json; \
	done

# Suppressions live in the templates (resource Metadata checkov.skip), each with its reason.
# --skip-download and CKV_SKIP_PACKAGE_UPDATE_CHECK: no call to Prisma Cloud or PyPI. checkov exits 0
# on a template it cannot parse (and then checks nothing in it): that fails the gate too.
checkov: $(CHECK_STAMP)
	@echo "checkov --directory templates --framework cloudformation"
	@out=$$(CKV_SKIP_PACKAGE_UPDATE_CHECK=true $(CHECK_BIN)/checkov --directory templates \
		--framework cloudformation --quiet --compact --skip-download 2>&1); status=$$?; echo "$$out"; \
	if echo "$$out" | grep -q "Parsing errors: [1-9]"; then echo "checkov could not parse a template" >&2; exit 1; fi; \
	exit $$status

bandit: $(STAMP)
	$(BIN)/bandit -c pyproject.toml -r chalicelib jamsdr app.py -q

# The committed per-function policies are what jamsdr/iam.py generates from .chalice/config.json.
iam-policies: $(STAMP)
	$(BIN)/python -m jamsdr.iam --check

# ------------------------------------------------------------------------------ deploy
# make deploy STAGE=prod. Chalice gives every function the runtime of the Python that runs it (no setting
# pins it), so the guard first refuses any interpreter but the layer's Python, a Powertools layer that does
# not ship the release the tests ran (requirements-lock.txt) or is older than the code needs, and one SSM
# does not name as the published layer of that release (docs/lambda-runtime.md). The app lives in the
# recovery region.
DEPLOY_REGION ?= us-west-2
deploy: $(STAMP)
	@test -n "$(STAGE)" || { echo "usage: make deploy STAGE=<a stage of .chalice/config.json>" >&2; exit 2; }
	AWS_DEFAULT_REGION=$(DEPLOY_REGION) $(BIN)/python -m jamsdr.powertools_layer check --stage $(STAGE) --published
	AWS_DEFAULT_REGION=$(DEPLOY_REGION) $(BIN)/chalice deploy --stage $(STAGE)

# ------------------------------------------------------------------------------ tests
test: check
	$(BIN)/pytest -q $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

# docs/static-stability.md: every AWS call of the recovery, the drill and the failback, recorded from two embedded
# drills and classified (jamsdr/static_stability.py); tests/functional/test_static_stability.py keeps it current.
static-stability: $(STAMP)
	$(BIN)/python -m jamsdr.static_stability --write docs/static-stability.md

# Debian's Chromium (/usr/bin/chromium) for tests/browser, which renders the HTML report headless. apt-get
# needs root (CI runs as root; elsewhere sudo asks). Without it the browser tests skip, except in CI.
browser:
	@if [ -x /usr/bin/chromium ]; then echo "chromium: already installed at /usr/bin/chromium"; else \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo apt-get update && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y --no-install-recommends chromium; \
	fi

# docs/report.png: the HTML report of a fresh default drill, as headless Chromium renders it.
REPORT_PNG_DIR := build/report-png
report-png: $(STAMP) browser
	rm -rf $(REPORT_PNG_DIR)
	$(BIN)/jams-dr drill --report-dir $(REPORT_PNG_DIR)
	$(BIN)/python -m tests.browser.chromium $(REPORT_PNG_DIR)/*/report.html docs/report.png

clean:
	rm -rf $(VENV) $(CHECK_VENV) .mypy_cache .ruff_cache .pytest_cache drill-reports $(PACKAGE_DIR)
