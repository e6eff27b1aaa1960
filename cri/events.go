package cri

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"peapod/sandbox"
)

var crEventType = map[sandbox.EventType]runtime.ContainerEventType{
	sandbox.EventCreated: runtime.ContainerEventType_CONTAINER_CREATED_EVENT,
	sandbox.EventStarted: runtime.ContainerEventType_CONTAINER_STARTED_EVENT,
	sandbox.EventStopped: runtime.ContainerEventType_CONTAINER_STOPPED_EVENT,
	sandbox.EventDeleted: runtime.ContainerEventType_CONTAINER_DELETED_EVENT,
}

// GetContainerEvents streams container and sandbox lifecycle events as
// they happen (the kubelet's evented PLEG). Each carries the pod's status
// and its containers' statuses at the time it is sent; a sandbox's own
// events name the sandbox as the container. A client that falls too far
// behind is cut off with ResourceExhausted: it lists again and resubscribes.
func (s *Server) GetContainerEvents(req *runtime.GetEventsRequest, stream runtime.RuntimeService_GetContainerEventsServer) error {
	ctx := stream.Context()
	events := s.sandboxes.Events(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return status.Error(codes.ResourceExhausted, "the event stream fell too far behind: list pods and containers again and subscribe anew")
			}
			resp := &runtime.ContainerEventResponse{
				ContainerId:        ev.ID,
				ContainerEventType: crEventType[ev.Type],
				CreatedAt:          ev.At.UnixNano(),
			}
			if sb, err := s.sandboxes.Get(ev.SandboxID); err == nil {
				resp.PodSandboxStatus = crSandboxStatus(sb)
				for _, c := range s.sandboxes.ListContainers(ctx, sandbox.ContainerFilter{SandboxID: ev.SandboxID}) {
					resp.ContainersStatuses = append(resp.ContainersStatuses, crContainerStatus(c))
				}
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
		}
	}
}
