# streamjob: `make` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
# One build directory outside the repo, shared by every target (and by .ci/run's cache).
export CARGO_TARGET_DIR ?= $(HOME)/.cache/streamjob-target
VERSION := 0.1.0
WORKER_IMAGE ?= ghcr.io/streamjob/streamjob:$(VERSION)
OPERATOR_IMAGE ?= ghcr.io/streamjob/streamjob-operator:$(VERSION)

.DEFAULT_GOAL := help

.PHONY: help
help: ## List targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-18s %s\n", $$1, $$2}'

.PHONY: setup
setup: ## Check the toolchain (Rust with clippy and rustfmt); install missing Debian build packages
	@./scripts/system-deps.sh
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs"; exit 1; }
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy rustfmt

.PHONY: build
build: setup ## Build everything (release)
	$(CARGO) build --release --workspace

.PHONY: run
run: setup ## Run the main job: the StreamJob word count over a bundled text, no cluster, no Kafka
	$(CARGO) run --release -q -p streamjob-worker --bin streamjob -- run manifests/examples/wordcount.yaml

.PHONY: test-deps
test-deps: ## Install the Python test tools into a venv outside the repo (STREAMJOB_VENV)
	@./scripts/test-deps.sh >/dev/null

.PHONY: test
test: setup test-deps browser-deps check-examples check-manifests check-chart ## Run every test (installs what they need, starts a Kafka broker), then the local end-to-end
	./scripts/with-kafka.sh ./scripts/with-s3.sh $(CARGO) test --workspace
	./e2e/local/run.sh

.PHONY: browser-deps
browser-deps: ## Install Debian's chromium for the job page test (worker/tests/job_page.rs)
	@./scripts/browser-deps.sh

.PHONY: test-observability
test-observability: setup browser-deps ## Metrics scrape and job page (headless chromium) tests; screenshot in $(CARGO_TARGET_DIR)/tmp
	$(CARGO) test -p streamjob-worker --test metrics --test job_page -- --nocapture

.PHONY: check-manifests
check-manifests: test-deps ## Validate the CRD and the operator's generated objects against the Kubernetes schemas
	./scripts/check-manifests.sh

.PHONY: check-examples
check-examples: test-deps ## Validate the example StreamJobs against the generated CRD schema
	@"$$(./scripts/test-deps.sh)/bin/python" scripts/check-examples.py crds/streamjob.yaml \
		--accept manifests/examples/*.yaml e2e/kind/*.yaml --reject crds/tests/schema-rejects/*.yaml

.PHONY: bench
bench: setup bench-shuffle bench-kafka bench-checkpoint ## All benchmarks (word count, shuffle, Kafka, checkpoints)
	$(CARGO) bench -p streamjob-worker --bench wordcount -- $(BENCH_ARGS)

.PHONY: bench-wordcount
bench-wordcount: setup ## Word count: words/s, words per CPU-second (as % of a hand-written loop's in the same run), peak RSS
	$(CARGO) bench -p streamjob-worker --bench wordcount -- $(BENCH_ARGS)

.PHONY: bench-shuffle
bench-shuffle: setup ## Parallelism 2 in one process vs two worker processes (gRPC shuffle)
	$(CARGO) bench -p streamjob-worker --bench shuffle -- $(SHUFFLE_ARGS)

.PHONY: bench-checkpoint
bench-checkpoint: setup ## Keyed count over 1M keys with and without checkpoints: cost, pause, snapshot time
	$(CARGO) bench -p streamjob-worker --bench checkpoint -- $(CHECKPOINT_ARGS)

.PHONY: bench-nexmark
bench-nexmark: setup ## Nexmark q0/q1/q2/q5/q7 at parallelism 1 and 2: events/s, events per CPU-second, peak RSS
	$(CARGO) bench -p streamjob-worker --bench nexmark -- $(NEXMARK_ARGS)

.PHONY: bench-kafka
bench-kafka: setup test-deps ## Kafka -> map -> Kafka (at-least-once, exactly-once) vs raw rdkafka, on a broker it starts
	./scripts/with-kafka.sh $(CARGO) bench -p streamjob-worker --bench kafka -- $(KAFKA_ARGS)

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all

.PHONY: lint
lint: setup ## rustfmt check + clippy with warnings as errors + shellcheck
	shellcheck scripts/*.sh e2e/*/*.sh
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: crds
crds: ## Regenerate crds/streamjob.yaml from the Rust types
	$(CARGO) run -q -p streamjob-crds --bin crdgen > crds/streamjob.yaml

.PHONY: verify-crds
verify-crds: crds ## Fail if the checked-in CRD differs from the types
	@git diff --exit-code -- crds/streamjob.yaml && test -z "$$(git status --porcelain -- crds/streamjob.yaml)" \
		|| { echo 'crds/streamjob.yaml is stale: run make crds and commit it'; exit 1; }

# Helm chart of the operator (charts/streamjob-operator) and the plain install manifest made from it.
CHART_CRD := charts/streamjob-operator/crds/streamjob.yaml

.PHONY: chart-crds
chart-crds: ## Copy crds/streamjob.yaml into the Helm chart
	cp crds/streamjob.yaml $(CHART_CRD)

.PHONY: install-manifest
install-manifest: test-deps ## Regenerate manifests/install.yaml from the chart's default values
	@"$$(./scripts/test-deps.sh)/bin/python" scripts/render-install.py

.PHONY: check-chart
check-chart: test-deps ## Lint, render and validate the Helm chart; fail if its CRD or install.yaml is stale
	"$$(./scripts/test-deps.sh)/bin/python" scripts/check-chart.py
	@$(MAKE) --no-print-directory chart-crds install-manifest >/dev/null
	@git diff --exit-code -- $(CHART_CRD) manifests/install.yaml \
		&& test -z "$$(git status --porcelain -- $(CHART_CRD) manifests/install.yaml)" \
		|| { echo '$(CHART_CRD) or manifests/install.yaml is stale: run make chart-crds install-manifest and commit'; exit 1; }

.PHONY: e2e-local
e2e-local: setup test-deps ## Local end-to-end: Kafka in/out, the operator's generated pods run as local processes
	./e2e/local/run.sh

.PHONY: images
images: ## Build the worker and operator container images (needs Docker)
	docker build --target worker -t $(WORKER_IMAGE) .
	docker build --target operator -t $(OPERATOR_IMAGE) .

.PHONY: e2e-kind
e2e-kind: ## End-to-end on a kind cluster (needs Docker, kind, kubectl, helm)
	./e2e/kind/run.sh
