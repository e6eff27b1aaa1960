// Package sandbox runs pod sandboxes: it owns their lifecycle (run, stop,
// remove), the on-disk state store, rollback of a half-made sandbox, and
// reconciliation when the daemon starts again after being killed.
//
// A sandbox is created as a transaction. Its record is persisted in state
// "creating" before anything is made, every resource is either named
// deterministically from the sandbox id or recorded before it is created,
// and teardown is a sweep over all of them that tolerates any of them being
// absent. So a failure at any step, or a kill -9 of the daemon at any
// moment, is undone by the same idempotent teardown.
//
// The package does not speak gRPC: the cri package validates requests and
// converts them to a Spec.
package sandbox
