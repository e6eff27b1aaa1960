# peapod — build, run, test, bench. Everything lands in ./bin.
GO              ?= go
BIN             := $(CURDIR)/bin
VERSION         ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
CNI_PLUGINS     := v1.10.0
CRI_TOOLS       := v1.37.0
# -p 1: the throughput tests measure real rates and must not share the two
# cores with another package's tests.
GOTEST_FLAGS    ?= -count=1 -timeout 25m -p 1

.PHONY: all build pause shim peapod cni tools run test unit integration bench install clean

all: build

build: peapod cni

# The pause binary is static and tiny; peapod embeds it.
pause:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o pause/embedded/pause.bin ./pause

# The per-pod shim as two lean programs, which peapod embeds:
# - peapod-shim, the resident (one per pod, for the pod's life): no cgo and
#   no libcontainer, static by itself.
# - peapod-lc, its one-shot libcontainer helper and the containers' init:
#   same cgo and tags as peapod, linked statically when the static
#   libraries are there (libc6-dev, libseccomp-dev): each helper and each
#   container's init execs it, and a static one starts ~0.5 ms faster (no
#   dynamic loader) with fewer private pages.
# (The case patterns are written "(pattern)": an unbalanced ")" would end
# the $(shell ...) early.)
SHIM_STATIC     := $(shell for l in libc.a libseccomp.a; do case "$$(gcc -print-file-name=$$l 2>/dev/null)" in (/*) ;; (*) exit;; esac; done; echo yes)
SHIM_LDFLAGS    := $(if $(SHIM_STATIC),-linkmode external -extldflags -static)
SHIM_TAGS        = $(PEAPOD_TAGS)$(if $(SHIM_STATIC), netgo osusergo)
shim:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o shim/embedded/bin/peapod-shim ./shim/peapod-shim
	CGO_ENABLED=1 $(GO) build -trimpath -tags "$(SHIM_TAGS)" -ldflags "-s -w $(SHIM_LDFLAGS) -X main.version=$(VERSION)" -o shim/embedded/bin/peapod-lc ./shim/peapod-lc

# cgo: libcontainer's nsenter (the `peapod init` of containers) is C. Seccomp
# filters need libseccomp (Debian: libseccomp-dev); without it peapod builds
# and refuses containers that ask for a seccomp profile.
PEAPOD_TAGS     := $(shell pkg-config --exists libseccomp 2>/dev/null && echo seccomp)
peapod: pause shim
	CGO_ENABLED=1 $(GO) build -trimpath -tags "$(PEAPOD_TAGS)" -ldflags "-X main.version=$(VERSION)" -o $(BIN)/peapod ./cmd/peapod

# The CNI reference plugins of the embedded default network.
cni:
	@mkdir -p $(BIN)/cni
	GOBIN=$(BIN)/cni CGO_ENABLED=0 $(GO) install \
		github.com/containernetworking/plugins/plugins/main/bridge@$(CNI_PLUGINS) \
		github.com/containernetworking/plugins/plugins/main/loopback@$(CNI_PLUGINS) \
		github.com/containernetworking/plugins/plugins/ipam/host-local@$(CNI_PLUGINS) \
		github.com/containernetworking/plugins/plugins/meta/portmap@$(CNI_PLUGINS)

# crictl, for the README's examples and the integration tests.
tools:
	@mkdir -p $(BIN)/tools
	GOBIN=$(BIN)/tools $(GO) install sigs.k8s.io/cri-tools/cmd/crictl@$(CRI_TOOLS)

# Start the runtime on its embedded defaults (socket /run/peapod/peapod.sock).
run: build
	$(BIN)/peapod serve

# Unit and integration tests, then the CRI conformance suite (critest).
# TEST_VM=1 adds the cgroup v2 / systemd VM (vm-test) after the Go tests: a
# fresh machine needs ~7 min more for it (qemu, image, boot, suite), which
# would take a CI run to about 20 min, so it is not on by default
# (integration/vm/README.md has the numbers).
TEST_VM         ?=
test: build tools
	PEAPOD_BIN=$(BIN)/peapod PEAPOD_CRICTL=$(BIN)/tools/crictl $(GO) test $(GOTEST_FLAGS) ./...
	$(if $(filter-out 0,$(TEST_VM)),$(MAKE) vm-test)
	$(MAKE) critest
	$(MAKE) critest-rootless

unit: pause shim
	$(GO) test $(GOTEST_FLAGS) $$($(GO) list ./... | grep -v /integration)

integration: build tools
	PEAPOD_BIN=$(BIN)/peapod PEAPOD_CRICTL=$(BIN)/tools/crictl $(GO) test $(GOTEST_FLAGS) -v ./integration/

bench: build tools
	$(GO) run ./integration/bench -peapod $(BIN)/peapod -crictl $(BIN)/tools/crictl

install: build
	install -D -m 0755 $(BIN)/peapod /usr/local/bin/peapod
	install -d /opt/cni/bin
	install -m 0755 $(BIN)/cni/* /opt/cni/bin/

clean:
	rm -rf $(BIN) pause/embedded/pause.bin shim/embedded/bin/peapod-shim shim/embedded/bin/peapod-lc

# critest, the CRI conformance suite (validation specs), against a private
# peapod, offline: images built and served in-process, see integration/critest.
# critest is a Go test binary (go test -c), it cannot be go-installed.
CRITEST_SRC      = $(shell $(GO) env GOMODCACHE)/sigs.k8s.io/cri-tools@$(CRI_TOOLS)
CRITEST_FLAGS   ?=
.PHONY: critest critest-bin

critest: build critest-bin $(BIN)/cache/busybox
	$(GO) run ./integration/critest -peapod $(BIN)/peapod -critest $(BIN)/tools/critest \
		-busybox $(BIN)/cache/busybox -cni-bin-dir $(BIN)/cni -logs $(BIN)/critest-logs $(CRITEST_FLAGS)

# The same suite against a rootless instance: peapod run by the ordinary
# user $(ROOTLESS_USER) (.ci/run creates it), critest run as that user inside
# the rootless node's namespaces, as usernetes runs a kubelet.
ROOTLESS_USER   ?= peapod-test
.PHONY: critest-rootless
critest-rootless: build critest-bin $(BIN)/cache/busybox
	$(GO) run ./integration/critest -peapod $(BIN)/peapod -critest $(BIN)/tools/critest \
		-busybox $(BIN)/cache/busybox -cni-bin-dir $(BIN)/cni -logs $(BIN)/critest-logs-rootless \
		-rootless $(ROOTLESS_USER) -bridge ppcritrl0 -pod-subnet 10.96.201.0/24 $(CRITEST_FLAGS)

critest-bin: $(BIN)/tools/critest

# With the ginkgo CLI of the same module graph, for CRITEST_FLAGS=-parallel=N.
$(BIN)/tools/critest:
	@mkdir -p $(BIN)/tools
	cd / && GOFLAGS= GOWORK=off $(GO) mod download sigs.k8s.io/cri-tools@$(CRI_TOOLS)
	cd $(CRITEST_SRC) && GOFLAGS=-mod=readonly GOWORK=off CGO_ENABLED=0 $(GO) build -o $(BIN)/tools/ginkgo github.com/onsi/ginkgo/v2/ginkgo
	cd $(CRITEST_SRC) && GOFLAGS=-mod=readonly GOWORK=off CGO_ENABLED=0 $(GO) test -c -o $@ \
		-ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=$(CRI_TOOLS:v%=%)" ./cmd/critest

# Static busybox with its default config, for critest's images; built once.
$(BIN)/cache/busybox:
	integration/critest/build-busybox.sh $@

# cgroup v2 tests in a qemu VM (TCG): Debian bookworm image with Debian's
# kernel, cached in bin/cache/vm; test binaries shared in with 9p, run in one
# boot. See integration/vm/README.md.
VM_CACHE        := $(BIN)/cache/vm
.PHONY: vm-test vm-deps vm-image vm-bins vm-shell

vm-test: build tools vm-bins vm-image
	VM_INTEGRATION=$(VM_INTEGRATION) integration/vm/run.sh

vm-deps:
	@command -v qemu-system-x86_64 >/dev/null && command -v qemu-img >/dev/null && \
	command -v debootstrap >/dev/null && command -v mkfs.ext4 >/dev/null || \
	{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
		qemu-system-x86 qemu-utils debootstrap e2fsprogs; }

vm-image: vm-deps
	integration/vm/build-image.sh $(VM_CACHE)

# sandbox needs cgo (runc's specconv): built here, bookworm's glibc as in the
# VM. The pause test builds pause itself: warm the VM's Go cache for it.
# The integration binary runs the v2/systemd subset by default (systemd
# driver, pod resources, CPU and memory stats; a few minutes);
# VM_INTEGRATION=1 runs the whole suite instead (about 25 min under TCG).
VM_INTEGRATION  ?=
vm-bins: pause
	@mkdir -p $(BIN)/vm
	for p in cgroups pause netns integration; do CGO_ENABLED=0 $(GO) test -c -o $(BIN)/vm/$$p.test ./$$p || exit 1; done
	CGO_ENABLED=1 $(GO) test -c -tags "$(PEAPOD_TAGS)" -o $(BIN)/vm/sandbox.test ./sandbox
	cd pause && GOCACHE=$(VM_CACHE)/gocache GOFLAGS=-buildvcs=false CGO_ENABLED=0 \
		$(GO) build -trimpath -ldflags "-s -w" -o /dev/null .

vm-shell: vm-image
	integration/vm/run.sh --shell
