# peapod — build, run, test, bench. Everything lands in ./bin.
GO              ?= go
BIN             := $(CURDIR)/bin
VERSION         ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
CNI_PLUGINS     := v1.10.0
CRI_TOOLS       := v1.37.0
# -p 1: the throughput tests measure real rates and must not share the two
# cores with another package's tests.
GOTEST_FLAGS    ?= -count=1 -timeout 25m -p 1

.PHONY: all build pause peapod cni tools run test unit integration bench install clean

all: build

build: peapod cni

# The pause binary is static and tiny; peapod embeds it.
pause:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o pause/embedded/pause.bin ./pause

# cgo: libcontainer's nsenter (the `peapod init` of containers) is C. Seccomp
# filters need libseccomp (Debian: libseccomp-dev); without it peapod builds
# and refuses containers that ask for a seccomp profile.
PEAPOD_TAGS     := $(shell pkg-config --exists libseccomp 2>/dev/null && echo seccomp)
peapod: pause
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

test: build tools
	PEAPOD_BIN=$(BIN)/peapod PEAPOD_CRICTL=$(BIN)/tools/crictl $(GO) test $(GOTEST_FLAGS) ./...

unit: pause
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
	rm -rf $(BIN) pause/embedded/pause.bin
