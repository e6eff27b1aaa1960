// Package cri serves the CRI v1 gRPC API (RuntimeService and ImageService)
// on a unix socket. It validates every request, converts CRI messages to the
// sandbox package's types and back, and maps errors to gRPC codes. It holds
// no state of its own and never touches the kernel.
package cri
