package integration

import (
	"context"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// eventStream collects GetContainerEvents responses in the background.
type eventStream struct {
	t      *testing.T
	events chan *runtime.ContainerEventResponse
	cancel context.CancelFunc
}

func (d *daemon) subscribeEvents(t *testing.T) *eventStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := d.RT.GetContainerEvents(ctx, &runtime.GetEventsRequest{})
	if err != nil {
		cancel()
		t.Fatalf("GetContainerEvents: %v", err)
	}
	es := &eventStream{t: t, events: make(chan *runtime.ContainerEventResponse, 256), cancel: cancel}
	go func() {
		defer close(es.events)
		for {
			ev, err := stream.Recv()
			if err != nil {
				return
			}
			es.events <- ev
		}
	}()
	t.Cleanup(cancel)
	return es
}

// expect waits for the next event of id and checks its type; events of
// other ids in between are skipped.
func (es *eventStream) expect(id string, want runtime.ContainerEventType, within time.Duration) *runtime.ContainerEventResponse {
	es.t.Helper()
	deadline := time.After(within)
	for {
		select {
		case ev, ok := <-es.events:
			if !ok {
				es.t.Fatalf("event stream ended while waiting for %v of %.12s", want, id)
			}
			if ev.ContainerId != id {
				continue
			}
			if ev.ContainerEventType != want {
				es.t.Fatalf("event of %.12s: %v, want %v", id, ev.ContainerEventType, want)
			}
			return ev
		case <-deadline:
			es.t.Fatalf("no %v event of %.12s within %v", want, id, within)
			return nil
		}
	}
}

// TestContainerEvents follows a pod and its containers through
// GetContainerEvents: the sandbox's and each container's created, started,
// stopped and deleted, each with the pod's and containers' statuses; a
// container that exits by itself is reported when it exits, with nobody
// asking for its status, also after a restart of the daemon.
func TestContainerEvents(t *testing.T) {
	d, _, _ := containerDaemon(t)
	es := d.subscribeEvents(t)
	cfg := podConfig("ev")
	cfg.LogDirectory = t.TempDir()
	pod := d.runPod(t, cfg)
	es.expect(pod, runtime.ContainerEventType_CONTAINER_CREATED_EVENT, 5*time.Second)
	if ev := es.expect(pod, runtime.ContainerEventType_CONTAINER_STARTED_EVENT, 5*time.Second); ev.PodSandboxStatus.GetState() != runtime.PodSandboxState_SANDBOX_READY {
		t.Errorf("started sandbox event: status %v", ev.PodSandboxStatus)
	}

	quit := d.createContainer(t, pod, cfg, busyboxContainer("quit", "sh", "-c", "sleep 1; exit 3"))
	es.expect(quit, runtime.ContainerEventType_CONTAINER_CREATED_EVENT, 5*time.Second)
	d.startContainer(t, quit)
	es.expect(quit, runtime.ContainerEventType_CONTAINER_STARTED_EVENT, 5*time.Second)
	ev := es.expect(quit, runtime.ContainerEventType_CONTAINER_STOPPED_EVENT, 10*time.Second)
	var seen bool
	for _, cs := range ev.ContainersStatuses {
		if cs.Id == quit {
			seen = true
			if cs.State != runtime.ContainerState_CONTAINER_EXITED || cs.ExitCode != 3 {
				t.Errorf("stopped event: container status %v exit %d, want EXITED 3", cs.State, cs.ExitCode)
			}
		}
	}
	if !seen || ev.PodSandboxStatus.GetId() != pod {
		t.Errorf("stopped event lacks the pod's statuses: %v", ev)
	}
	if _, err := d.RT.RemoveContainer(ctxT(t), &runtime.RemoveContainerRequest{ContainerId: quit}); err != nil {
		t.Fatal(err)
	}
	es.expect(quit, runtime.ContainerEventType_CONTAINER_DELETED_EVENT, 5*time.Second)

	// A container that exits while a restarted daemon runs: the new
	// daemon watches it too.
	later := d.createContainer(t, pod, cfg, busyboxContainer("later", "sh", "-c", "sleep 3; exit 5"))
	d.startContainer(t, later)
	d.restart()
	es = d.subscribeEvents(t)
	ev = es.expect(later, runtime.ContainerEventType_CONTAINER_STOPPED_EVENT, 15*time.Second)
	for _, cs := range ev.ContainersStatuses {
		if cs.Id == later && cs.ExitCode != 5 {
			t.Errorf("after restart: exit %d, want 5", cs.ExitCode)
		}
	}

	if _, err := d.RT.StopPodSandbox(ctxT(t), &runtime.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
	es.expect(pod, runtime.ContainerEventType_CONTAINER_STOPPED_EVENT, 10*time.Second)
	if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtime.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
	es.expect(later, runtime.ContainerEventType_CONTAINER_DELETED_EVENT, 10*time.Second)
	es.expect(pod, runtime.ContainerEventType_CONTAINER_DELETED_EVENT, 10*time.Second)
}
