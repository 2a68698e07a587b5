# Filterscope: `make run` (app on the embedded demo) and `make test` (the whole suite).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
HOST    ?= 127.0.0.1
PORT    ?= 8501
STAMP   := $(VENV)/.installed-$(shell sha1sum requirements.txt 2>/dev/null | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: run test demo bench chromium clean-cache

$(STAMP): requirements.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	@rm -f $(VENV)/.installed-*; touch $@

# Debian's Chromium: headless browser tests and PNG/SVG/PDF export (kaleido).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "Installing Debian's chromium (browser tests, figure export)..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "WARNING: could not install chromium; browser tests and PNG export will be skipped/disabled."; }

demo: $(STAMP)
	$(BIN)/python -m core demo

run: $(STAMP) chromium
	$(BIN)/python -m core demo
	$(BIN)/python -m streamlit run app.py --server.address $(HOST) --server.port $(PORT)

test: $(STAMP) chromium
	@$(BIN)/python -m pytest tests $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests"; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(BIN)/python -m core bench --json bench/latest.json

clean-cache:
	rm -rf cache/*
