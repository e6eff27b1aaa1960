// Package embedded carries the pause binary inside peapod, so that a single
// peapod file is all a node needs. The Makefile builds ./pause statically
// (CGO_ENABLED=0 go build -trimpath -ldflags "-s -w") into pause.bin next
// to this file before peapod itself is built; the sandbox code writes
// Binary out to its state directory and executes it from there.
package embedded

import _ "embed"

// Binary is the static pause executable, ready to be written to disk and run.
//
//go:embed pause.bin
var Binary []byte
