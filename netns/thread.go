package netns

import "runtime"

func lockOSThread() { runtime.LockOSThread() }
