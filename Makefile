# Set-up and entry points. `make demo` and `make test` each set up everything they need on a fresh machine.
PYTHON_BOOTSTRAP ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test setup system-deps lint bench clean

demo: setup
	$(PY) jobs/demo.py

# pytest exits 5 when it collected no tests: that is a failure here, said plainly.
test: setup
	@rc=0; $(PY) -m pytest -q --durations=25 || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; failing"; fi; exit $$rc

setup: $(STAMP) system-deps

# The venv is rebuilt when pyproject.toml changes. pip (not uv) finds torch 2.14.1 / torchvision 0.29.1 on this disk.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# CJK fonts for text rendering and labels: Debian's fonts-noto-cjk, installed with apt when running as root.
# Headless Chromium for the serving web page test: Debian's chromium + chromium-driver, the same way.
system-deps:
	@if command -v fc-list >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi 'Noto Sans CJK'; then \
		echo "system-deps: CJK fonts present"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "system-deps: installing fonts-noto-cjk with apt-get"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-noto-cjk fontconfig >/dev/null) \
		|| echo "system-deps: WARNING: apt-get could not install fonts-noto-cjk; CJK text rendering will be skipped"; \
	else \
		echo "system-deps: WARNING: fonts-noto-cjk is missing and cannot be installed (needs root and apt-get)."; \
		echo "system-deps: install it yourself (sudo apt-get install fonts-noto-cjk) for Chinese text rendering."; \
	fi
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		echo "system-deps: chromium and chromedriver present"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "system-deps: installing chromium and chromium-driver with apt-get"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "system-deps: WARNING: apt-get could not install chromium; the web page test will try again, then skip"; \
	else \
		echo "system-deps: WARNING: chromium/chromedriver are missing and cannot be installed (needs root and apt-get)."; \
		echo "system-deps: install them yourself (sudo apt-get install chromium chromium-driver) for the web page test."; \
	fi

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/sampler.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
