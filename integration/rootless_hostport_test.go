package integration

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"peapod/internal/nettest"
)

// podEcho serves TCP on :8080 and UDP on :8081 inside the pod's network
// namespace (its pause holds it), answering "pod:" and what it got.
func podEcho(t *testing.T, pausePID int) {
	t.Helper()
	nettest.Echo(t, fmt.Sprintf("/proc/%d/ns/net", pausePID), ":8080", ":8081", "pod:")
}

// TestRootlessHostPorts: a rootless pod's TCP and UDP hostPorts answer on
// the host's 127.0.0.1 (the parent binds them, the daemon forwards); a
// second pod on a taken port and a privileged port fail with
// FailedPrecondition and say why; the ports go with a killed daemon, come
// back with its restart, and are freed with the pod.
func TestRootlessHostPorts(t *testing.T) {
	d := startDaemon(t, withRootless())
	tcpPort, udpPort := nettest.FreePort(t, "tcp"), nettest.FreePort(t, "udp")
	cfg := podConfig("hp")
	cfg.PortMappings = []*runtime.PortMapping{
		{Protocol: runtime.Protocol_TCP, ContainerPort: 8080, HostPort: tcpPort},
		{Protocol: runtime.Protocol_UDP, ContainerPort: 8081, HostPort: udpPort, HostIp: "127.0.0.1"},
	}
	id := d.runPod(t, cfg)
	_, v := d.status(t, id)
	podEcho(t, v.PID)

	tcpAddr := fmt.Sprintf("127.0.0.1:%d", tcpPort)
	var got string
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if got, err = nettest.AskTCP(tcpAddr); err == nil && got == "pod:hi" {
			break
		}
	}
	if got != "pod:hi" {
		t.Fatalf("hostPort %d/tcp from the host's 127.0.0.1: %q, %v", tcpPort, got, err)
	}
	if got, err := nettest.AskUDP(fmt.Sprintf("127.0.0.1:%d", udpPort)); err != nil || got != "pod:u?" {
		t.Errorf("hostPort %d/udp: %q, %v", udpPort, got, err)
	}

	clash := podConfig("hp-clash")
	clash.PortMappings = []*runtime.PortMapping{{Protocol: runtime.Protocol_TCP, ContainerPort: 80, HostPort: tcpPort}}
	_, err = d.RT.RunPodSandbox(ctxT(t), &runtime.RunPodSandboxRequest{Config: clash})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "already in use") {
		t.Errorf("second pod on the same hostPort: want FailedPrecondition, in use; got %v", err)
	}
	t.Logf("clash: %v", err)
	low := podConfig("hp-low")
	low.PortMappings = []*runtime.PortMapping{{Protocol: runtime.Protocol_TCP, ContainerPort: 80, HostPort: 80}}
	_, err = d.RT.RunPodSandbox(ctxT(t), &runtime.RunPodSandboxRequest{Config: low})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "ip_unprivileged_port_start") {
		t.Errorf("hostPort 80: want FailedPrecondition naming ip_unprivileged_port_start; got %v", err)
	}
	t.Logf("low: %v", err)

	d.kill9()
	if _, err := nettest.AskTCP(tcpAddr); err == nil {
		t.Errorf("hostPort still answers with the daemon killed")
	}
	d.start()
	if got, err := nettest.AskTCP(tcpAddr); err != nil || got != "pod:hi" {
		t.Errorf("hostPort after kill -9 and restart: %q, %v", got, err)
	}

	d.stopRemove(t, id)
	if l, err := net.Listen("tcp", fmt.Sprintf(":%d", tcpPort)); err != nil {
		t.Errorf("host port %d still taken after the pod was removed: %v", tcpPort, err)
	} else {
		l.Close()
	}
}
