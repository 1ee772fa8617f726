# The two commands README.md opens with, plus the pieces they are made of.
# `make setup` prepares MLX (idempotent); every target that builds runs it first.

CARGO ?= cargo
DEMO_DIR ?= runs/demo

.PHONY: setup demo test lint coreml-check bench-convert

setup:
	@bash scripts/setup.sh

# Main job on an embedded default: convert a committed transformers checkpoint, inspect
# it, and run it with MLX on its reference inputs.
demo: setup
	$(CARGO) build --release --quiet
	./target/release/pipeline convert tests/fixtures/hf-vit-classifier --out $(DEMO_DIR)/model --force
	./target/release/pipeline inspect $(DEMO_DIR)/model
	./target/release/pipeline embed --model $(DEMO_DIR)/model \
		--pixels tests/fixtures/hf-vit-classifier/reference.safetensors --out $(DEMO_DIR)/embeddings.safetensors
	@echo "demo outputs in $(DEMO_DIR)/"

# Every test: formatting, lints, the Rust tests with and without MLX. coremltools must
# accept every package the tests export (COREML_CHECK_REQUIRED).
test: setup
	@bash scripts/setup-python.sh
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --quiet -- -D warnings
	COREML_CHECK_REQUIRED=1 $(CARGO) test --quiet
	$(CARGO) test --quiet --no-default-features --lib --test convert_errors --test coreml_export

bench-convert: setup
	$(CARGO) run --release --quiet --example bench_convert
