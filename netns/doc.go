// Package netns owns a pod's namespaces and its network: it pins the
// namespaces of a freshly started pause process to files with bind mounts
// (so nothing is ever looked up through /proc/<pid> again), runs functions
// inside pinned namespaces, attaches pods to CNI networks through libcni with
// the result cached on disk, and shapes pod ingress and egress with tc on the
// host side of the pod's veth.
//
// The sandbox package is its only caller. Nothing here keeps state in memory
// between calls: every function takes the paths and records it needs, so a
// restarted daemon can tear down what an earlier one created.
package netns
