package image

import (
	"context"
	"errors"
	"sync"
)

// flightGroup runs one call per key at a time; callers arriving meanwhile
// wait for its result. If the caller doing the work gives up (its context
// ends), a waiter whose own context is still alive takes over.
type flightGroup[T any] struct {
	mu sync.Mutex
	m  map[string]*flight[T]
}

type flight[T any] struct {
	done chan struct{}
	val  T
	err  error
}

func (g *flightGroup[T]) do(ctx context.Context, key string, fn func(context.Context) (T, error)) (T, error) {
	for {
		g.mu.Lock()
		if g.m == nil {
			g.m = map[string]*flight[T]{}
		}
		f, running := g.m[key]
		if !running {
			f = &flight[T]{done: make(chan struct{})}
			g.m[key] = f
		}
		g.mu.Unlock()

		if !running {
			f.val, f.err = fn(ctx)
			g.mu.Lock()
			delete(g.m, key)
			g.mu.Unlock()
			close(f.done)
			return f.val, f.err
		}
		select {
		case <-f.done:
			if f.err != nil && isContextErr(f.err) && ctx.Err() == nil {
				continue
			}
			return f.val, f.err
		case <-ctx.Done():
			var zero T
			return zero, ctx.Err()
		}
	}
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
