# The Makefile is Sluice's interface: `make run`, `make test`, `make check`,
# `make fuzz`, `make bench`. CI runs `make test` (.ci/run).
GO        ?= go
BIN       := bin/sluice
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse --short HEAD 2>/dev/null)
LDFLAGS   := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
STATICCHECK ?= $(shell command -v staticcheck 2>/dev/null || echo $(shell $(GO) env GOPATH)/bin/staticcheck)
FUZZTIME  ?= 10s
# RSA signatures go through the system's OpenSSL libcrypto (about four times
# faster than Go's crypto/rsa) when cgo works and libcrypto's headers are
# installed (Debian: libssl-dev); otherwise, or with TAGS=nolibcrypto, the build
# is pure Go. `sluice version` says which signer a binary has. (Not the purego
# tag: it also turns off the Go standard library's assembly, which made the
# pure-Go build's RSA signatures twice as slow.)
CC        ?= cc
TAGS      ?= $(shell printf '\043include <openssl/evp.h>\n' | $(CC) -E -x c - >/dev/null 2>&1 && [ "$$($(GO) env CGO_ENABLED)" = 1 ] || echo nolibcrypto)

.PHONY: all build build-purego release run test check vet staticcheck unit fuzz bench bench-queue clean

all: build

build:
	$(GO) build -trimpath -tags '$(TAGS)' -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/sluice

# The pure-Go build (static, no libcrypto): what users without OpenSSL get.
build-purego:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)-purego ./cmd/sluice

# Release binaries for linux/amd64: dist/sluice links the system's
# libcrypto (libssl3 at run time), dist/sluice-static is pure Go and static.
release:
	@[ "$(TAGS)" != nolibcrypto ] || { echo "release: libcrypto headers (libssl-dev) and cgo are needed"; exit 1; }
	mkdir -p dist
	GOOS=linux GOARCH=amd64 CGO_ENABLED=1 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/sluice ./cmd/sluice
	GOOS=linux GOARCH=amd64 CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/sluice-static ./cmd/sluice

# The development mode: self-signed TLS on 127.0.0.1:2525 (STARTTLS) and
# :2465 (implicit), a printed demo user, a DKIM key for example.test, mail
# written to ./sluice-dev/mail.
run: build
	./$(BIN) serve --dev

# Everything CI checks: formatting, vet, staticcheck, and every test
# (unit and integration, which runs the real binary) with the race detector.
test: check unit

check: vet staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet -tags '$(TAGS)' ./...
	CGO_ENABLED=0 $(GO) vet ./signing/

staticcheck:
	@test -x "$(STATICCHECK)" || $(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2
	$(STATICCHECK) ./...

unit:
	$(GO) test -race -shuffle=on -count=1 -timeout 12m -tags '$(TAGS)' ./...
	CGO_ENABLED=0 $(GO) test -shuffle=on -count=1 ./signing/
	cd third_party/go-smtp && $(GO) vet ./... && $(GO) test -race -shuffle=on -count=1 ./...

# Each fuzz target for FUZZTIME (go test runs one -fuzz target at a time).
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

# DESIGN §5's load against the real binary (about 4 minutes): RSA-2048 with
# the default build's signer and with the pure-Go one, Ed25519, a new session
# per message, idle sessions, a 50 MB message; then the upstream forwarding
# rate with connection reuse on and off.
bench: build build-purego
	$(GO) run ./internal/benchtool --sluice $(BIN) --dkim rsa --messages 20000 --timeout 50s
	$(GO) run ./internal/benchtool --sluice $(BIN)-purego --dkim rsa --messages 20000 --timeout 50s --no-header
	$(GO) run ./internal/benchtool --sluice $(BIN) --dkim ed25519 --messages 20000 --timeout 50s --no-header
	$(GO) run ./internal/benchtool --sluice $(BIN) --dkim rsa --reconnect --messages 2000 --timeout 30s --no-header
	$(GO) run ./internal/benchtool --sluice $(BIN) --idle 1000 --timeout 30s --no-header
	$(GO) run ./internal/benchtool --sluice $(BIN) --big 50MB --timeout 30s --no-header
	$(GO) test -run '^$$' -bench 'BenchmarkDeliver' -benchtime 2000x ./upstream

# A queue of QUEUE messages (default a million; 40-50 minutes here, most of it
# accepting at 600-900 msg/s): accept with the upstream down, restart, list,
# drain (docs/performance.md). --timeout bounds the accepting and the drain.
QUEUE ?= 1000000
bench-queue: build
	$(GO) run ./internal/benchtool --sluice $(BIN) --dkim dual --queue $(QUEUE) --timeout 40m

clean:
	rm -rf bin dist sluice-dev
