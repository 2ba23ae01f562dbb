# ramboot: run `make` (or `make help`) for the targets.
SHELL := /bin/bash
GO ?= go
# Binaries go outside the tree: the repository's top level is fixed.
BUILD_DIR ?= /tmp/ramboot-build
GOFLAGS_BUILD := -trimpath
export CGO_ENABLED := 0

.DEFAULT_GOAL := help
.PHONY: help deps build test check e2e bench storm demo fuzz clean install

help: ## list the targets
	@grep -E '^[a-z0-9]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

# Debian packages the demo, the tests and the end-to-end boots need.
DEB_PACKAGES := qemu-system-x86 ipxe-qemu ipxe ovmf busybox-static cpio zstd iproute2 \
	atftp tftp-hpa curl ca-certificates file dnsmasq-base slurm-client openssh-client gzip \
	kmod systemd debootstrap runc crun slurm-wlm munge squashfs-tools-ng squashfs-tools nginx-light

# etcd members for the scale-out tests (provisioner/store/etcdtest).
DEB_PACKAGES += etcd-server

deps: ## install the Debian packages the demo and tests need (root)
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@$(GO) mod download

build: ## build ramboot and ramboot-agent (static) into BUILD_DIR (/tmp/ramboot-build)
	$(GO) build $(GOFLAGS_BUILD) -o $(BUILD_DIR)/ramboot ./provisioner/cmd/ramboot
	$(GO) build $(GOFLAGS_BUILD) -o $(BUILD_DIR)/ramboot-agent ./nodeagent/cmd/ramboot-agent
	@echo "built $(BUILD_DIR)/ramboot $(BUILD_DIR)/ramboot-agent"

test: deps ## run the unit, interop and namespace tests (-race; namespace tests need root)
	CGO_ENABLED=1 $(GO) test -race -count=1 ./...

check: ## gofmt, go vet, staticcheck, go mod tidy must be clean
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./...
	$(GO) tool staticcheck ./...
	$(GO) tool staticcheck -tags e2e ./...
	@cp go.mod /tmp/ramboot-go.mod.bak; cp go.sum /tmp/ramboot-go.sum.bak; $(GO) mod tidy; \
	if ! git diff --quiet -- go.mod go.sum; then git diff -- go.mod go.sum; cp /tmp/ramboot-go.mod.bak go.mod; cp /tmp/ramboot-go.sum.bak go.sum; echo "go mod tidy is not clean"; exit 1; fi

e2e: deps ## boot QEMU nodes (busybox: BIOS, UEFI, head killed mid-download; through 3 heads on etcd, one killed; proxy mode next to dnsmasq; UEFI HTTP boot; Debian 12 with systemd) from ramboot serve in a network namespace (root)
	$(GO) test -tags e2e -count=1 -timeout 40m -v -run 'TestBoot$$|TestHeadKilledMidDownload|TestThreeHeadsBoot|TestProxyMode|TestHTTPBoot|TestDebian' ./provisioner/internal/lab/
	@# The image builder's own boot check, on the kernel the lab fetched.
	RAMBOOT_TEST_KERNEL=$$(ls /var/cache/ramboot-lab/kernel/*/boot/vmlinuz-* | head -n 1) \
		$(GO) test -count=1 -v -run TestBootQEMU ./images/build/

bench: ## run the Go benchmarks
	$(GO) test -run '^$$' -bench . -benchmem ./...

# STORM_FLAGS are passed to the storm benchmarks' driver, e.g.
# STORM_FLAGS='-what storm -nodes 200 -image-mib 16' (see docs/storm.md).
STORM_FLAGS ?=
storm: deps ## the boot-storm benchmarks against nginx in network namespaces: reports, plots and summary in /tmp/ramboot-storm-results (root)
	$(GO) run ./provisioner/internal/lab/stormbench $(STORM_FLAGS)

demo: deps ## boot one BIOS node end to end and print its boot timeline (root)
	$(GO) run ./provisioner/internal/lab/demo

# Where `make install` puts things; DESTDIR stages them elsewhere.
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR := $(PREFIX)/bin
UNITDIR ?= /etc/systemd/system

install: build ## install ramboot, ramboot-agent and the systemd unit (root; PREFIX=/usr/local, DESTDIR)
	install -D -m 0755 $(BUILD_DIR)/ramboot $(DESTDIR)$(BINDIR)/ramboot
	install -D -m 0755 $(BUILD_DIR)/ramboot-agent $(DESTDIR)$(BINDIR)/ramboot-agent
	install -d -m 0755 $(DESTDIR)$(UNITDIR) $(DESTDIR)/etc/ramboot/overlays
	sed 's|@BINDIR@|$(BINDIR)|g' provisioner/cmd/ramboot/ramboot.service > $(DESTDIR)$(UNITDIR)/ramboot.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/ramboot.service
	@if [ ! -e $(DESTDIR)/etc/ramboot/ramboot.yaml ]; then install -m 0644 provisioner/cmd/ramboot/ramboot.yaml $(DESTDIR)/etc/ramboot/ramboot.yaml; \
		echo "wrote /etc/ramboot/ramboot.yaml: set its interface"; else echo "kept the existing /etc/ramboot/ramboot.yaml"; fi
	install -d -m 0700 $(DESTDIR)/var/lib/ramboot
	install -d -m 0755 $(DESTDIR)$(PREFIX)/share/bash-completion/completions
	$(DESTDIR)$(BINDIR)/ramboot completion bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/ramboot
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; echo "then: systemctl enable --now ramboot"; fi

clean: ## remove the build directory
	rm -rf $(BUILD_DIR)
