# The two commands README.md opens with, plus the pieces they are made of.
# `make setup` prepares MLX (idempotent); every target that builds runs it first.

CARGO ?= cargo

.PHONY: setup demo test bench-convert bench-export bench-train bench-compress

setup:
	@bash scripts/setup.sh

# Main job on an embedded default: the quickstart (a small ViT pretrained on MNIST,
# examples/quickstart-base/, fine-tuned with LoRA on 300 committed digit images, merged,
# exported to Core ML, verified), offline.
demo: setup
	$(CARGO) build --release --quiet
	./target/release/pipeline run examples/quickstart.toml

# Every test: formatting, lints (also for macOS: the Core ML code), the Rust tests with
# and without MLX. coremltools must accept every package the tests export
# (COREML_CHECK_REQUIRED); PyTorch (transformers 5 and 4, peft, timm) must load our PEFT
# adapters and train the ones we import (PEFT_*_REQUIRED).
test: setup
	@bash scripts/setup-python.sh
	$(CARGO) fmt --check
	python3 scripts/check_swift.py
	python3 scripts/check_bench_schema.py
	$(CARGO) clippy --all-targets --quiet -- -D warnings
	@# Core ML from Rust, type-checked against Apple's API for a Mac (objc2-core-ml) without
	@# MLX (its Apple build needs Metal); its own target dir, so target/debug is untouched.
	rustup target add aarch64-apple-darwin
	CARGO_TARGET_DIR=target/apple $(CARGO) clippy --quiet --target aarch64-apple-darwin --no-default-features --features coreml -- -D warnings
	@# Without MLX every target still builds (the Core ML side never depends on it).
	$(CARGO) clippy --all-targets --quiet --no-default-features -- -D warnings
	COREML_CHECK_REQUIRED=1 PEFT_CHECK_REQUIRED=1 PEFT_TF4_REQUIRED=1 $(CARGO) test --quiet
	$(CARGO) test --quiet --no-default-features --lib --test convert_errors --test coreml_export --test verify_reference_out

bench-convert: setup
	$(CARGO) run --release --quiet --example bench_convert

bench-export: setup
	$(CARGO) run --release --quiet --no-default-features --example bench_export

bench-train: setup
	@bash scripts/setup-bench.sh >/dev/null
	$(CARGO) run --release --quiet --example bench_train

# Compressed export of ViT-B/16 against coremltools' ct.optimize.coreml, side by side.
bench-compress: setup
	$(CARGO) build --release --quiet
	bash scripts/bench-compress.sh
