# The README's two commands: `make book` and `make test`. Each sets up what it needs itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: book book-student assignments test lint test-lib test-nb test-book test-browser venv clean node-deps chromium mathjax

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

## The book (budget `book`: minutes per chapter on a CPU) into _build/html
## (DDPM_TUTOR_BUDGET=full make book for the paper's settings on a GPU; `ci` outputs belong to test-book only,
## since jupyter-cache keys on code, not on the budget, and would otherwise reuse them.)
book: $(STAMP) mathjax
	@case "$${DDPM_TUTOR_BUDGET:-book}" in ci) echo "make book: budget ci is for make test-book (_build_ci)"; exit 2;; esac
	DDPM_TUTOR_BUDGET=$${DDPM_TUTOR_BUDGET:-book} $(BIN)/jupyter-book build . -W -n --keep-going

## The student edition: the book without solutions (sphinx-exercise hide_solutions) and without the instructor's
## guide, into _build_student/_build/html. Its download buttons serve, and its Colab links open (from the branch
## STUDENT_BRANCH, which the pages workflow fills), the chapters without their solutions, which
## `python -m ddpm_tutor.assignments student` writes to _build_student/notebooks; it then checks every page and
## file of the edition for a line of a solution. It reuses the book's execution cache: run `make book` first.
STUDENT_BRANCH ?= student
# $(1): the execution cache to reuse, $(2): the edition's folder, $(3): the budget
define student_edition
	$(BIN)/python -m ddpm_tutor.assignments student --out $(2) --cache $(1) --branch $(STUDENT_BRANCH)
	DDPM_TUTOR_BUDGET=$(3) OMP_NUM_THREADS=1 $(BIN)/jupyter-book build . --config $(2)/_config_student.yml \
	  --toc $(2)/_toc_student.yml --path-output $(2) -W -n --keep-going
	@! test -e $(2)/_build/html/book/instructors.html \
	  || { echo "the instructor's guide is in the student edition $(2)"; exit 1; }
	$(BIN)/python -m ddpm_tutor.assignments student --out $(2) --html $(2)/_build/html --branch $(STUDENT_BRANCH)
endef
book-student: $(STAMP) mathjax
	@case "$${DDPM_TUTOR_BUDGET:-book}" in ci) echo "make book-student: budget ci is for make test-book"; exit 2;; esac
	$(call student_edition,_build/.jupyter_cache,_build_student,$${DDPM_TUTOR_BUDGET:-book})

## The nbgrader course of the exercises into _build/course (COURSE=...; BY=part for one assignment per part),
## released: student notebooks without solutions in _build/course/release. Grading: see the instructor's guide.
COURSE ?= _build/course
BY ?= chapter
assignments: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m ddpm_tutor.assignments build --out $(COURSE) --by $(BY)
	OMP_NUM_THREADS=1 $(BIN)/python -m ddpm_tutor.assignments release --course $(COURSE)

## Every test: lint, the library, the notebooks (nbval, budget ci), the book build and the browser check
test: lint test-lib test-nb test-book test-browser

## ruff (settings in pyproject.toml): lint and format of the library, tests and benchmarks; actionlint (with
## requirements.txt's shellcheck on the `run:` scripts, pyflakes off) over every file of .github/workflows
lint: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/actionlint -shellcheck=$(BIN)/shellcheck -pyflakes= $(wildcard .github/workflows/*.yml .github/workflows/*.yaml)

## Two workers, one thread each: the tests are many small computations, so two processes use the two cores
## better than one process with two threads (whose spinning threads also slow everything else down).
XDIST := -n 2 --dist loadfile
test-lib: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -q $(XDIST)

test-nb: $(STAMP)
	DDPM_TUTOR_BUDGET=ci OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q $(XDIST) --nbval-lax \
	  --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:randomly $$(ls book/part*/*.ipynb)

## The book under budget ci into _build_ci/_build/html, with its own execution cache (_build_ci/_build/.jupyter_cache),
## then its student edition (from that cache) into _build_ci/student/_build/html.
## One thread per chapter, as nbval runs them: under load, a chapter's spinning second thread made it take 191 s
## instead of 20 s.
test-book: $(STAMP) mathjax
	DDPM_TUTOR_BUDGET=ci OMP_NUM_THREADS=1 $(BIN)/jupyter-book build . --path-output _build_ci -W -n --keep-going
	$(call student_edition,_build_ci/_build/.jupyter_cache,_build_ci/student,ci)

## Headless Chromium over every page of the ci build: offline MathJax, players step, Colab links, no
## request off 127.0.0.1, no console error, and every equation, player and figure fits the text column at
## two window sizes (--layout 1280x800,1200x900; at 1200 the column is narrower). Screenshots in
## _build_ci/screenshots. Then the student edition: no page, download or Colab link of it serves a solution.
test-browser: node-deps chromium
	@test -f _build_ci/_build/html/index.html || { echo "test-browser: no _build_ci/_build/html; run make test-book first"; exit 2; }
	node tests/browser/check_book.mjs _build_ci/_build/html --layout 1280x800,1200x900 --phone 390x844 --dark on --page-sizes benchmarks/page_sizes.json --screenshots _build_ci/screenshots
	node tests/browser/check_book.mjs _build_ci/student/_build/html --config _build_ci/student/_config_student.yml \
	  --student _build_ci/student --layout none --phone none --dark off --page-sizes none

## Node packages for the browser check and the MathJax the site serves (tests/browser/package.json, locked)
NODE_STAMP := tests/browser/node_modules/.installed
node-deps: $(NODE_STAMP)
$(NODE_STAMP): tests/browser/package.json tests/browser/package-lock.json
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
	touch $@

## Debian's Chromium (Playwright's own browser downloads are not used)
chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update && $$SUDO apt-get install -y chromium; }

## MathJax 3 (npm's es5 build, version locked in tests/browser) copied into _assets/mathjax, which Sphinx
## serves as _static/mathjax. Needs npm only when _assets/mathjax is missing (rm -rf _assets to refresh).
MATHJAX_SRC := tests/browser/node_modules/mathjax/es5
MATHJAX_DST := _assets/mathjax
mathjax: $(MATHJAX_DST)/tex-chtml-full.js
$(MATHJAX_DST)/tex-chtml-full.js:
	$(MAKE) --no-print-directory node-deps
	rm -rf $(MATHJAX_DST) && mkdir -p $(MATHJAX_DST)/output
	cp $(MATHJAX_SRC)/tex-chtml-full.js $(MATHJAX_SRC)/startup.js $(MATHJAX_DST)/
	cp -r $(MATHJAX_SRC)/input $(MATHJAX_SRC)/ui $(MATHJAX_SRC)/a11y $(MATHJAX_SRC)/sre $(MATHJAX_SRC)/adaptors $(MATHJAX_DST)/
	cp -r $(MATHJAX_SRC)/output/chtml $(MATHJAX_SRC)/output/chtml.js $(MATHJAX_DST)/output/
	cp tests/browser/node_modules/mathjax/LICENSE $(MATHJAX_DST)/LICENSE
	touch $@

clean:
	rm -rf _build _build_ci _build_student
