# The two commands: `make run` and `make test`. Each does its whole set-up from a
# clean clone (a .venv, the package, the example models) and is quick the second time.
# `make bench` runs the benchmarks, `make fuzz` the long fuzz run (below).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
BENCH_ARGS ?=
MODELS := examples/models
IRIS   := $(MODELS)/iris/1/model.onnx
MLP    := $(MODELS)/mlp/1/model.onnx
# The text models (tokenizer, MiniLM encoder, sentiment head, pipelines): build_text.py
# writes this pipeline's config last, so it stands for the whole set.
TEXT   := $(MODELS)/minilm-int8/config.toml
# Debian's packages are unpacked into the venv with the dependencies apt resolves
# (scripts/apt_unpack.sh: nothing installed system-wide, no service started).
# Debian's Prometheus: tests/integration/test_prometheus.py scrapes ligeiro with it.
PROMETHEUS := $(VENV)/prometheus/usr/bin/prometheus
# Debian's chromium-headless-shell (scripts/fetch_chromium.sh):
# tests/integration/test_bench_html.py screenshots a report with it.
CHROMIUM := $(VENV)/chromium/headless-shell
# Java 17+ for pyspark: the one on PATH, else Debian's openjdk-17-jre-headless unpacked into
# the venv (scripts/fetch_java.sh); this file holds its JAVA_HOME, which
# tests/integration/test_spark.py and benchmarks/bench_score.py read.
JAVA := $(VENV)/java/JAVA_HOME
# ligeiro[federated] (Flower) in a venv of its own: Flower's pins differ from constraints.txt.
FED_VENV := .venv-federated

# `make fuzz`: the hypothesis fuzz tests with FUZZ_EXAMPLES examples each (make test runs
# a few hundred), then atheris on the two decoders for FUZZ_SECONDS each. Not part of
# make test. What fails goes to tests/fuzz-db (hypothesis) and tests/fuzz/found (atheris).
FUZZ_EXAMPLES ?= 20000
FUZZ_SECONDS  ?= 300
FUZZ_CORPUS   ?= /tmp/ligeiro-fuzz-corpus
FUZZ_TESTS := tests/unit/test_grpc_scanner_fuzz.py tests/unit/test_rest_codec_fuzz.py \
	tests/unit/test_settings_fuzz.py tests/unit/test_predict_fuzz.py \
	tests/unit/test_accesslog_fuzz.py tests/integration/test_fuzz_transports.py

.PHONY: run test bench fuzz models clean fresh-check

run: $(VENV)/.installed-examples $(IRIS) $(MLP) $(TEXT)
	$(BIN)/ligeiro serve $(MODELS) --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-test $(IRIS) $(MLP) $(TEXT) $(PROMETHEUS) $(CHROMIUM) $(JAVA) $(FED_VENV)/.installed
	$(BIN)/python -m pytest --ignore=tests/federated
	$(FED_VENV)/bin/python -m pytest tests/federated

bench: $(VENV)/.installed-bench $(IRIS) $(MLP) $(TEXT) $(JAVA)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

fuzz: $(VENV)/.installed-fuzz $(IRIS) $(MLP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -p no:cacheprovider $(FUZZ_TESTS)
	mkdir -p $(FUZZ_CORPUS)/rest $(FUZZ_CORPUS)/grpc tests/fuzz/found
	$(BIN)/python tests/fuzz/rest_decoder.py -max_total_time=$(FUZZ_SECONDS) \
		-artifact_prefix=tests/fuzz/found/rest- $(FUZZ_CORPUS)/rest tests/fuzz/seeds/rest
	$(BIN)/python tests/fuzz/grpc_scanner.py -max_total_time=$(FUZZ_SECONDS) \
		-artifact_prefix=tests/fuzz/found/grpc- $(FUZZ_CORPUS)/grpc tests/fuzz/seeds/grpc

models: $(IRIS) $(MLP) $(TEXT)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# One stamp per extra, rebuilt when pyproject.toml or constraints.txt changes.
$(VENV)/.installed-%: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[$*]'
	$(BIN)/python -m compileall -q src  # an editable install leaves the first start to compile
	touch $@

$(IRIS): examples/build_iris.py | $(VENV)/.installed-examples
	$(BIN)/python examples/build_iris.py --out $(MODELS)

$(MLP): examples/build_mlp.py examples/build_iris.py | $(VENV)/.installed-examples
	$(BIN)/python examples/build_mlp.py --out $(MODELS)

$(TEXT): examples/build_text.py examples/text/sentences.tsv src/ligeiro/convert/_tokenizer_model.py src/ligeiro/convert/text.py | $(VENV)/.installed-examples
	$(BIN)/python examples/build_text.py --out $(MODELS)

$(FED_VENV)/.installed: pyproject.toml constraints-federated.txt
	$(PYTHON) -m venv $(FED_VENV)
	$(FED_VENV)/bin/python -m pip install -q --upgrade pip
	$(FED_VENV)/bin/python -m pip install -q -c constraints-federated.txt -e '.[federated]' pytest==9.2.0
	touch $@

$(PROMETHEUS): scripts/apt_unpack.sh | $(VENV)/bin/python
	rm -rf $(VENV)/prometheus
	sh scripts/apt_unpack.sh $(VENV)/prometheus prometheus
	test -x $@

$(CHROMIUM): scripts/fetch_chromium.sh scripts/apt_unpack.sh | $(VENV)/bin/python
	sh scripts/fetch_chromium.sh $(VENV)/chromium
	test -x $@

$(JAVA): scripts/fetch_java.sh scripts/apt_unpack.sh | $(VENV)/bin/python
	sh scripts/fetch_java.sh $(VENV)/java
	test -x "$$(cat $@)/bin/java"

# What CI does: `make test` in a fresh clone of the current commit (scripts/fresh_check.sh).
fresh-check:
	sh scripts/fresh_check.sh

clean:
	rm -rf $(VENV) $(FED_VENV) $(MODELS)
