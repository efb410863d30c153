# hcp.core build/test entry points. `make help` lists the targets.
# The repo root is the collection; `make install` stages it into
# collections/ansible_collections/hcp/core, which ansible.cfg puts on the collection path.

SHELL       := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.NOTPARALLEL:
MAKEFLAGS   += --no-print-directory

PY        ?= python3.11
VENV      := $(CURDIR)/.venv
BIN       := $(VENV)/bin
CACHE     := $(CURDIR)/.cache
COLL_ROOT := $(CURDIR)/collections
COLL      := $(COLL_ROOT)/ansible_collections/hcp/core
DIST      := $(CACHE)/dist
TESTPY    ?= 3.11
# ansible-test runs in .venv (--local); --venv would rebuild a delegation venv per stage.
AT_ENV    ?= --local
INVENTORY ?= inventories/lab

# The venv first; /usr/bin stays on PATH (swtpm, shellcheck, docker).
export PATH := $(BIN):$(PATH):/usr/sbin:/usr/bin
export ANSIBLE_COLLECTIONS_PATH := $(COLL_ROOT)
export HCP_WHEELHOUSE ?= $(CACHE)/wheelhouse
export DEBIAN_FRONTEND := noninteractive
export ANSIBLE_LINT_SKIP_SCHEMA_UPDATE := 1
export PIP_NO_INPUT := 1

.PHONY: help setup host-packages venv docker libvirt vagrant-box lab-image wheelhouse install get-pip \
	lint sanity units changelog-lint docs-lint alert-rules build install-check molecule \
	check test demo bench lab-base lab-up lab-down clean distclean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-zA-Z_-]+:.*## / {printf "  %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# ---- set-up (idempotent; stamps and hashes under .cache/) ---------------------------
setup: host-packages venv docker libvirt wheelhouse lab-image vagrant-box ## host packages, .venv, docker engine, libvirtd, wheelhouse, lab images, vagrant box

host-packages: ## apt packages (apt-get update only when something is missing)
	@tools/host-packages.sh

venv: host-packages ## .venv from requirements-dev.txt (re-done when requirements change)
	@PY=$(PY) tools/venv.sh

docker: host-packages ## start dockerd when no engine answers
	@tools/docker-up.sh

libvirt: host-packages ## start virtlogd + libvirtd when none answers (qemu runs as root; molecule/vagrant)
	@tools/libvirt-up.sh

vagrant-box: libvirt venv ## the local vagrant box of molecule/vagrant (debootstrap; when its inputs changed)
	@tools/vagrant-box.sh

wheelhouse: venv ## .cache/wheelhouse from requirements.txt
	@tools/wheelhouse.sh

lab-base: docker ## lab image hcp-lab/debian-base (debootstrap; when its inputs changed)
	@tools/lab-image.sh base

lab-image: lab-base wheelhouse ## lab images hcp-lab/debian-base and hcp-lab/debian (when their inputs changed)
	@tools/lab-image.sh

# ---- collection -----------------------------------------------------------------
install: ## stage the work tree into collections/ansible_collections/hcp/core
	@tools/stage.sh

get-pip:
	@tools/seed-get-pip.sh

# ---- quality gates ----------------------------------------------------------------
lint: install ## ansible-lint, production profile, offline
	ansible-lint $(if $(CI),--nocolor)

sanity: install get-pip ## ansible-test sanity in the stage
	cd $(COLL) && ansible-test sanity $(AT_ENV) --python $(TESTPY) --color no

units: install get-pip ## ansible-test units in the stage; under CI a skipped test fails
	@rm -rf $(COLL)/tests/output/junit
	cd $(COLL) && ansible-test units $(AT_ENV) --python $(TESTPY) --color no
	@$(BIN)/python tools/check-skips.py $(COLL)/tests/output/junit

alert-rules: ## promtool check rules + promtool test rules on monitoring/prometheus (seconds)
	@tools/alert-rules.sh

changelog-lint: ## antsibull-changelog lint
	antsibull-changelog lint

docs-lint: install ## antsibull-docs lint-collection-docs --plugin-docs
	cd $(COLL) && antsibull-docs lint-collection-docs --plugin-docs .

build: install ## ansible-galaxy collection build into .cache/dist
	@rm -rf $(DIST) && mkdir -p $(DIST)
	cd $(COLL) && ansible-galaxy collection build --force --output-path $(DIST) .

install-check: build ## install the tarball offline into a temp dir, render its docs
	@tools/install-check.sh

molecule: install ## molecule test -s NAME for every molecule/NAME/
	@tools/molecule-all.sh

check: ## the inner loop: lint, sanity, units, changelog-lint, alert-rules (no lab, no molecule), with a summary
	@tools/test-all.sh host-packages venv install lint+sanity+changelog-lint,alert-rules+units

test: ## the whole suite (what CI runs): setup, then every gate, with a summary
	@tools/test-all.sh host-packages docker libvirt venv+lab-base wheelhouse install \
		units,sanity,lint,changelog-lint,alert-rules,docs-lint,install-check+lab-image,molecule+vagrant-box

# ---- lab --------------------------------------------------------------------------
lab-up: setup install ## start the lab containers (playbooks/lab.yml)
	ansible-playbook -i $(INVENTORY) playbooks/lab.yml

demo: lab-up ## lab-up, then playbooks/site.yml against the lab
	ansible-playbook -i $(INVENTORY) playbooks/site.yml

bench: install ## benchmarks/ scripts: print figures (not a test)
	$(BIN)/python benchmarks/tpm_core.py
	$(BIN)/python benchmarks/enroll_db.py
	$(BIN)/python benchmarks/enroll.py
	$(BIN)/python benchmarks/enroll_http.py
	$(BIN)/python benchmarks/shamir.py
	$(BIN)/python benchmarks/policy.py
	$(BIN)/python benchmarks/site_unseal.py
	$(BIN)/python benchmarks/attest.py
	$(BIN)/python benchmarks/attest_http.py
	$(BIN)/python benchmarks/attest_load.py
	$(BIN)/python benchmarks/keyserver.py
	$(BIN)/python benchmarks/kdc.py
	$(BIN)/python benchmarks/identity.py
	nice -n 19 $(BIN)/python benchmarks/fleet_1000.py --hosts $(or $(FLEET_HOSTS),1000)  # FLEET_HOSTS=20 for a short run

lab-down: install ## remove the lab containers and network
	ansible-playbook -i $(INVENTORY) playbooks/lab.yml -e lab_state=absent

# ---- housekeeping -----------------------------------------------------------------
clean: ## remove the stage, build output and test output
	rm -rf collections $(DIST) tests/output .ansible changelogs/.plugin-cache.yaml

distclean: clean ## also the venv and .cache (the docker image stays)
	rm -rf $(VENV) $(CACHE)
