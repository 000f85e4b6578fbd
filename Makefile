# Every target that needs system packages or modules runs hack/deps.sh first:
# it is idempotent and fast when everything is there.
GO        ?= go
GOBIN     := $(shell $(GO) env GOPATH)/bin
FUZZTIME  ?= 5m
CRASH_ROUNDS ?= 1000
SOAK_ROUNDS ?= 1000
BENCHTIME ?= 3x
BENCH     ?= .
PKGS      := ./...

.PHONY: all deps build layers demo test unit lint vet staticcheck fuzz crash soak bench clean

all: build layers

deps:
	@bash hack/deps.sh

build: deps
	$(GO) build $(PKGS)

## layers: the command, bin/layers. Without cgo: nothing needs it (SQLite
## is modernc's pure Go), and a static binary starts ~0.9 ms faster than
## one the dynamic loader must link to libc (each CLI verb is a process).
layers:
	CGO_ENABLED=0 $(GO) build -o bin/layers ./cmd/layers

## demo: the main job on built-in fixtures, printing each step.
demo: deps
	$(GO) run ./hack/demo

## test: the whole suite as CI runs it (lint, then every test; fuzz seeds included).
test: deps lint unit

# Under the race detector: Apply, fscopy and the drivers run goroutines
# side by side, and a race there is a wrong layer. It costs ~2.5x time.
unit:
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

lint: vet staticcheck
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

staticcheck:
	$(GOBIN)/staticcheck $(PKGS)

## fuzz: a longer fuzzing campaign on Apply than the seed corpus CI runs.
## Minimizing each new input is capped: at the default (60 s each) a
## campaign spends most of its time minimizing and runs few new inputs.
fuzz: deps
	$(GO) test ./diff/ -run '^$$' -fuzz '^FuzzApply$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 20x

## crash: a longer crash campaign than CI's on the store: its helper
## process is killed at every named step of applying, creating, removing
## and committing, then at CRASH_ROUNDS random points per driver, and each
## time the root must open clean with everything stored before intact.
crash: deps
	LAYERS_STORE_CRASH_ROUNDS=$(CRASH_ROUNDS) $(GO) test -count=1 -timeout 120m -run '^TestCrashSafety$$' -v ./store/

## soak: the concurrency tests at length: 8 processes creating, mounting,
## unmounting and removing containers on one root, SOAK_ROUNDS rounds each,
## through the store (each driver) and through the binary; nothing may
## fail but documented conflicts, nothing stay mounted, check find nothing.
soak: deps
	LAYERS_SOAK_ROUNDS=$(SOAK_ROUNDS) $(GO) test -count=1 -timeout 120m -run '^(TestConcurrentProcesses|TestConcurrentCLI)$$' -v ./store/ ./cmd/layers/

## bench: Go benchmarks (they make their own loop filesystems), with the
## GNU tar baseline measured in the same run.
bench: deps
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchtime $(BENCHTIME) -benchmem $(PKGS)

clean:
	$(GO) clean -testcache
